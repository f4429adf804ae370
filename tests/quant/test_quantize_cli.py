"""`rnnquant quantize` writes the integer model; `rnnquant ppl` reads it back unchanged."""
from __future__ import annotations

import math

import pytest
import torch

from rnnquant.eval import perplexity
from rnnquant.io import save_checkpoint
from rnnquant.artifacts import load
from rnnquant.quant import PRESETS, quantize
from rnnquant.quant.qlinear import QLinear
from tests.calibrate.test_calibrate import TEXT
from tests.conftest import TOKENIZER, tiny_model
from tests.helpers import assert_one_line_error, run_cli


@pytest.fixture
def setup(tmp_path):
    d = tmp_path / "m"
    save_checkpoint(tiny_model("mamba"), d, tokenizer_path=TOKENIZER)
    data = tmp_path / "data.txt"
    data.write_text(TEXT)
    return d, data


@pytest.mark.parametrize("recipe", ["w8a8-outlier", "w4a16-gptq"])
def test_quantize_then_ppl(capsys, tmp_path, setup, recipe):
    d, data = setup
    calib = tmp_path / "calib"
    assert run_cli(capsys, "calibrate", d, "--data", data, "--samples", 4, "--seq-len", 64, "--out", calib)[0] == 0
    out = tmp_path / "q"
    code, stdout, err = run_cli(capsys, "quantize", d, "--calib", calib, "--recipe", recipe, "--data", data, "--samples", 4, "--seq-len", 64, "--out", out)
    assert code == 0, err
    q = load(out)
    assert sum(isinstance(m, QLinear) for m in q.modules()) == len(q.arch_spec().linears)
    code, stdout, _ = run_cli(capsys, "ppl", out, "--data", data, "--window", 32)
    assert code == 0
    assert math.isclose(float(stdout.split()[1]), perplexity(q, TEXT, window=32).ppl, rel_tol=1e-5)


def test_quantize_reports_the_float_size_it_started_from(capsys, tmp_path, setup):
    """Quantization works in place: the float size is taken before it, not from the quantized model."""
    from rnnquant.quant import size_bytes

    d, data = setup
    code, stdout, err = run_cli(capsys, "quantize", d, "--recipe", "w8a8-dynamic", "--out", tmp_path / "q")
    assert code == 0, err
    float_mib, quant_mib = (float(w) for w in stdout.split() if w.replace(".", "").isdigit())
    assert float_mib == round(size_bytes(load(d)) / 2**20, 2) and quant_mib < float_mib / 2


def test_quantized_step_equals_forward():
    """The step contract holds for quantized models too (the exporter traces step)."""
    m = tiny_model("lstm")
    q = quantize(m, PRESETS["w8a8-dynamic"])
    ids = torch.randint(0, 4096, (2, 20))
    state, outs = q.init_state(2), []
    for t in range(20):
        logits, state = q.step(ids[:, t], state)
        outs.append(logits)
    assert (torch.stack(outs, 1) - q(ids)).abs().max() <= 1e-4


def test_quantize_refusals(capsys, tmp_path, setup):
    d, data = setup
    assert_one_line_error(capsys, "quantize", d, "--recipe", "w8a8-naive", "--out", tmp_path / "q", match="needs calibration statistics")
    assert_one_line_error(capsys, "quantize", d, "--recipe", "w2a2", "--out", tmp_path / "q", match="unknown recipe 'w2a2'")
    assert not (tmp_path / "q").exists()
