from __future__ import annotations

import math

import pytest
import torch

from rnnquant.errors import RnnquantError
from rnnquant.eval import perplexity, perplexity_by_position, perplexity_ids, windows
from rnnquant.artifacts import load
from tests.conftest import tiny_model
from tests.helpers import assert_one_line_error, run_cli

TEXT = "The list data type has some more methods. Here are all of the methods of list objects. " * 30


@pytest.mark.parametrize("n, w", [(10, 3), (11, 5), (2, 512), (1000, 512), (513, 512)])
def test_windows_predict_every_token_once(n, w):
    spans = windows(n, w)
    predicted = [t for s, e in spans for t in range(s + 1, e)]
    assert predicted == list(range(1, n))
    assert all(e - s <= w + 1 for s, e in spans)


def test_step_mode_equals_forward(arch):
    model = tiny_model(arch)
    ids = torch.randint(0, model.vocab_size, (300,), generator=torch.Generator().manual_seed(0))
    f = perplexity_ids(model, ids, window=64, batch_size=3)
    s = perplexity_ids(model, ids, window=64, batch_size=3, mode="step")
    assert f.tokens == s.tokens == 299
    assert abs(f.ppl - s.ppl) / f.ppl <= 1e-3


def test_matches_direct_nll():
    """One window: PPL is exp of the mean next-token cross-entropy."""
    model = tiny_model("mamba")
    ids = torch.randint(0, model.vocab_size, (40,), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        nll = torch.nn.functional.cross_entropy(model(ids[None, :-1])[0], ids[1:])
    assert math.isclose(perplexity_ids(model, ids, window=100).ppl, math.exp(nll.item()), rel_tol=1e-5)


def test_perplexity_of_text(tiny_dir):
    model = load(tiny_dir)
    r = perplexity(model, TEXT, window=32)
    assert math.isfinite(r.ppl) and r.ppl > 1 and r.tokens > 100


def test_too_short_text(tiny_dir):
    with pytest.raises(RnnquantError, match="too short"):
        perplexity(load(tiny_dir), "a", window=32)


@pytest.mark.parametrize(
    "content, match",
    [(b"", "empty text"), (b"  \n\t ", "empty text"), (b"\xff\xfeabc", "not valid UTF-8"), (b"abc\x00def", "binary file")],
    ids=["empty", "whitespace", "non-utf8", "binary"],
)
def test_bad_text_file(capsys, tmp_path, tiny_dir, content, match):
    f = tmp_path / "data.txt"
    f.write_bytes(content)
    assert_one_line_error(capsys, "ppl", tiny_dir, "--data", f, match=match)


def test_missing_text_file(capsys, tmp_path, tiny_dir):
    assert_one_line_error(capsys, "ppl", tiny_dir, "--data", tmp_path / "none.txt", match="no such file")


def test_data_required_outside_zoo(capsys, tiny_dir):
    assert_one_line_error(capsys, "ppl", tiny_dir, match="--data FILE is required")


def test_cli_ppl(capsys, tmp_path, tiny_dir):
    f = tmp_path / "data.txt"
    f.write_text(TEXT)
    code, out, _ = run_cli(capsys, "ppl", tiny_dir, "--data", f, "--window", 32)
    assert code == 0 and out.startswith("perplexity ")
    assert math.isclose(float(out.split()[1]), perplexity(load(tiny_dir), TEXT, window=32).ppl, rel_tol=1e-4)


def test_a_model_far_from_the_text_has_infinite_perplexity_not_an_overflow():
    model = tiny_model("lstm")
    with torch.no_grad():
        model.lm_head.weight.mul_(1e4)  # logits ~1e4 apart: mean NLL far past exp's range
    ids = torch.randint(0, model.vocab_size, (300,), generator=torch.Generator().manual_seed(0))
    assert perplexity_ids(model, ids, window=100).ppl == math.inf


def test_by_position_carries_the_state_across_the_whole_text(arch):
    """Chunked with the state carried, the buckets together are the perplexity of one forward over
    the whole stream (one window, nothing reset)."""
    model = tiny_model(arch)
    ids = torch.randint(0, model.vocab_size, (301,), generator=torch.Generator().manual_seed(0))
    buckets = perplexity_by_position(model, ids, edges=(0, 50, 120), chunk=32)
    whole = perplexity_ids(model, ids, window=300)
    nll = sum(b["tokens"] * math.log(b["ppl"]) for b in buckets)
    assert math.isclose(nll, whole.nll, rel_tol=1e-4)


def test_by_position_buckets_hold_the_tokens_at_their_positions():
    model = tiny_model("gru")
    ids = torch.randint(0, model.vocab_size, (21,), generator=torch.Generator().manual_seed(0))
    buckets = perplexity_by_position(model, ids, edges=(0, 4, 10, 100), chunk=7)
    assert [(b["from"], b["to"], b["tokens"]) for b in buckets] == [(0, 4, 3), (4, 10, 6), (10, 100, 11)]  # 100+ is empty: left out
