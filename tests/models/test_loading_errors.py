"""Bad checkpoints meet a one-line error naming the file and field, exit code 2."""
from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.helpers import assert_one_line_error


def _rewrite_weights(d, fn):
    state = load_file(str(d / "model.safetensors"))
    save_file(fn(state), str(d / "model.safetensors"))


def test_missing_dir(capsys, tmp_path):
    assert_one_line_error(capsys, "ppl", tmp_path / "nope", "--data", __file__, match="no such model directory")


@pytest.mark.parametrize(
    "breakage, match",
    [
        (lambda d: (d / "config.json").unlink(), "missing config.json"),
        (lambda d: (d / "config.json").write_text("{not json"), "not valid JSON"),
        (lambda d: (d / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 10})), "unknown model_type 'llama'"),
        (lambda d: (d / "config.json").write_text(json.dumps(json.loads((d / "config.json").read_text()) | {"vocab_size": -3})), "'vocab_size' must be a positive integer"),
        (lambda d: (d / "model.safetensors").unlink(), "missing weights"),
        (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:1000]), "corrupt safetensors"),
        (lambda d: (d / "model.safetensors").write_bytes(struct.pack("<Q", 10**9) + b"{}"), "corrupt safetensors"),
        (lambda d: (d / "tokenizer.json").unlink(), "missing tokenizer.json"),
        (lambda d: (d / "tokenizer.json").write_text("[]"), "corrupt tokenizer"),
        (lambda d: (d / "prune_report.json").write_text("{cut"), "cannot parse prune report"),
        (lambda d: (d / "config.json").write_text(json.dumps({"d_model": 768, "n_layer": 24, "vocab_size": 50277, "ssm_cfg": {"layer": "Mamba2"}})),
         "missing field 'model_type': this is the original state-spaces/mamba layout"),
        (lambda d: (d / "config.json").write_text(json.dumps({"vocab_size": 10})), "missing field 'model_type' (one of falcon_mamba, gru, lstm, mamba, mamba2, mingru, minlstm, recurrent_gemma, rwkv, rwkv7, xlstm)"),
    ],
    ids=["no-config", "bad-json", "unknown-type", "bad-field", "no-weights", "truncated", "lying-header", "no-tokenizer", "bad-tokenizer",
         "bad-prune-report", "state-spaces-mamba2", "no-model-type"],
)
def test_broken_checkpoint(capsys, tiny_dir, breakage, match):
    breakage(tiny_dir)
    assert_one_line_error(capsys, "ppl", tiny_dir, "--data", __file__, match=match)


def test_nan_weights(capsys, tiny_dir):
    def poison(state):
        k = sorted(state)[-1]
        state[k][0] = float("nan")
        return state

    _rewrite_weights(tiny_dir, poison)
    assert_one_line_error(capsys, "ppl", tiny_dir, "--data", __file__, match="contains NaN or Inf")


def test_shape_mismatch(capsys, tiny_dir):
    def grow(state):
        k = sorted(state)[-1]
        state[k] = torch.cat([state[k], state[k]])
        return state

    _rewrite_weights(tiny_dir, grow)
    assert_one_line_error(capsys, "ppl", tiny_dir, "--data", __file__, match="has shape")


def test_integer_weights(capsys, tiny_dir):
    _rewrite_weights(tiny_dir, lambda s: {k: (v * 100).to(torch.int32) for k, v in s.items()})
    assert_one_line_error(capsys, "ppl", tiny_dir, "--data", __file__, match="expected a float type")


def test_pickle_refused(capsys, tiny_dir):
    state = load_file(str(tiny_dir / "model.safetensors"))
    (tiny_dir / "model.safetensors").unlink()
    torch.save(state, tiny_dir / "pytorch_model.bin")
    assert_one_line_error(capsys, "ppl", tiny_dir, "--data", __file__, match="pickle checkpoints are refused")


def test_pickle_with_explicit_flag(capsys, tiny_dir, tmp_path):
    from tests.eval.test_perplexity import TEXT
    from tests.helpers import run_cli

    state = load_file(str(tiny_dir / "model.safetensors"))
    (tiny_dir / "model.safetensors").unlink()
    torch.save(state, tiny_dir / "pytorch_model.bin")
    data = tmp_path / "d.txt"
    data.write_text(TEXT)
    code, out, err = run_cli(capsys, "--allow-pickle", "ppl", tiny_dir, "--data", data, "--window", 32)
    assert code == 0 and out.startswith("perplexity"), err


@pytest.mark.parametrize("arch, field, value, match", [
    ("rwkv7", "attn", {"layers": [1]}, "hybrid layers"), ("rwkv7", "value_dim", [32, 64], "must equal hidden_size"),
    ("rwkv7", "hidden_act", "swish", "only 'sqrelu'"), ("xlstm", "weight_mode", "fused", "only 'single'"),
    ("recurrent_gemma", "hidden_activation", "relu", "only 'gelu_pytorch_tanh'"),
    ("recurrent_gemma", "block_types", ["recurrent", "mlstm"], "block_types must be")])
def test_layouts_an_adapter_does_not_implement_are_refused(capsys, tmp_path, arch, field, value, match):
    from rnnquant.io import save_checkpoint
    from tests.conftest import TOKENIZER, tiny_model

    d = tmp_path / arch
    save_checkpoint(tiny_model(arch), d, tokenizer_path=TOKENIZER)
    (d / "config.json").write_text(json.dumps(json.loads((d / "config.json").read_text()) | {field: value}))
    assert_one_line_error(capsys, "ppl", d, "--data", __file__, match=match)
