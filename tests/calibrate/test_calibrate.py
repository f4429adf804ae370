"""Calibration finds exactly the injected outliers; its directory is checked on the way back in."""
from __future__ import annotations

import json

import pytest
import torch

from rnnquant.calibrate import CalibConfig, calibrate, inject_outliers, load_calibration, save_calibration
from rnnquant.errors import RnnquantError
from rnnquant.io import save_checkpoint
from rnnquant.artifacts import load
from tests.conftest import TOKENIZER, tiny_model
from tests.helpers import assert_one_line_error, run_cli

TEXT = "\n".join(f"def f{i}(x):\n    return x * {i} + len('{'ab' * (i % 7)}')" for i in range(400))
INJECT = {"backbone.layers.0.norm": [3, 17, 30], "backbone.layers.1.norm": [5]}


def _ids(n=6000):
    return torch.randint(0, 4096, (n,), generator=torch.Generator().manual_seed(0))


def test_injection_preserves_function_and_is_found():
    model = tiny_model("mamba")
    ids = _ids()[:64].view(2, 32)
    ref = model(ids)
    model.provenance = model.provenance.derive(fingerprint="test")
    model, injected = inject_outliers(model, INJECT, scale=50)
    assert (model(ids) - ref).abs().max() <= 1e-4
    calib = calibrate(model, _ids(), CalibConfig(samples=8, seq_len=128))
    for point in injected:
        found = set(calib.outlier_channels(point))
        assert found == set(injected[point]), (point, found)  # precision and recall 1
    in_proj_points = [p for p in calib.points if p.endswith("in_proj.input")]
    assert len(in_proj_points) == 2 and set(in_proj_points) == set(injected)


def test_records_every_declared_point(any_arch):
    model = tiny_model(any_arch)
    model.provenance = model.provenance.derive(fingerprint="test")
    calib = calibrate(model, _ids(), CalibConfig(samples=4, seq_len=64, state_every=16))
    spec = model.arch_spec()
    floats = [s for s in spec.states if s.dtype.is_floating_point]  # an integer counter is no quantization point
    expected = {f"{lin}.input" for lin in spec.linears} | set(spec.taps) | {f"state.{s.name}" for s in floats}
    assert set(calib.points) == expected
    for name, p in calib.points.items():
        a = calib.stat(name, "absmax")
        assert a.shape == (p["channels"],) and torch.isfinite(a).all()
        assert (calib.stat(name, "p99") <= a + 1e-6).all()
    assert calib.meta["tokens"] == 4 * 64


@pytest.fixture
def mamba_dir(tmp_path):
    d = tmp_path / "mamba"
    save_checkpoint(tiny_model("mamba"), d, tokenizer_path=TOKENIZER)
    return d


@pytest.fixture
def text_file(tmp_path):
    f = tmp_path / "calib.txt"
    f.write_text(TEXT)
    return f


def test_cli_round_trip_and_refusals(capsys, tmp_path, mamba_dir, text_file):
    out = tmp_path / "calib"
    code, stdout, err = run_cli(capsys, "calibrate", mamba_dir, "--data", text_file, "--samples", 4, "--seq-len", 64, "--out", out)
    assert code == 0, err
    assert {"calib.safetensors", "calib.json", "report.md", "heatmap.png"} <= {p.name for p in out.iterdir()}
    model = load(mamba_dir)
    calib = load_calibration(out, model)
    assert calib.meta["model_fingerprint"] == model.provenance.fingerprint
    assert not list(tmp_path.glob(".calib*")), "temporary directory left behind"

    assert_one_line_error(capsys, "calibrate", mamba_dir, "--data", text_file, "--out", out, match="already exists")

    other = tmp_path / "other"
    save_checkpoint(tiny_model("mamba", seed=1), other, tokenizer_path=TOKENIZER)
    with pytest.raises(RnnquantError, match="calibration was made for another model"):
        load_calibration(out, load(other))


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda d: (d / "calib.json").write_text("{oops"), "corrupt calibration metadata"),
        (lambda d: (d / "calib.json").write_text(json.dumps({"points": {}})), "corrupt calibration metadata"),
        (lambda d: (d / "calib.safetensors").write_bytes((d / "calib.safetensors").read_bytes()[:300]), "corrupt safetensors"),
        (lambda d: (d / "calib.safetensors").unlink(), "missing"),
    ],
    ids=["bad-json", "no-fingerprint", "truncated", "no-tensors"],
)
def test_damaged_calibration(tmp_path, damage, match):
    model = tiny_model("lstm")
    model.provenance = model.provenance.derive(fingerprint="fp")
    calib = calibrate(model, _ids(), CalibConfig(samples=2, seq_len=32))
    save_calibration(calib, tmp_path / "c", report=False)
    damage(tmp_path / "c")
    with pytest.raises(RnnquantError, match=match):
        load_calibration(tmp_path / "c", model)


def test_short_text_is_an_error(capsys, tmp_path, mamba_dir):
    f = tmp_path / "short.txt"
    f.write_text("just a few words")
    assert_one_line_error(capsys, "calibrate", mamba_dir, "--data", f, "--out", tmp_path / "c", match="fewer than one sequence")
    assert not (tmp_path / "c").exists()


def test_export_reuses_the_calibration_text(capsys, tmp_path):
    """calibrate --data FILE records the file; export --calib DIR needs no --data; a changed or
    missing file is a one-line error."""
    from tests.eval.test_perplexity import TEXT
    from tests.helpers import assert_one_line_error, run_cli

    d = tmp_path / "m"
    save_checkpoint(tiny_model("lstm"), d, tokenizer_path=TOKENIZER)
    text = tmp_path / "calib.txt"
    text.write_text(TEXT * 20)
    code, _, err = run_cli(capsys, "calibrate", d, "--data", text, "--samples", 4, "--seq-len", 64, "--out", tmp_path / "c")
    assert code == 0, err
    code, _, err = run_cli(capsys, "export", d, "--calib", tmp_path / "c", "--recipe", "w8a8-outlier", "--samples", 4, "--seq-len", 64,
                           "--out", tmp_path / "a.onnx")
    assert code == 0, err
    text.write_text(TEXT * 21)
    assert_one_line_error(capsys, "export", d, "--calib", tmp_path / "c", "--recipe", "w8a8-outlier", "--out", tmp_path / "b.onnx",
                          match="changed since `rnnquant calibrate`")
    text.unlink()
    assert_one_line_error(capsys, "quantize", d, "--calib", tmp_path / "c", "--recipe", "w8a8-outlier", "--out", tmp_path / "q",
                          match="is gone; pass --data FILE")
    assert not (tmp_path / "b.onnx").exists() and not (tmp_path / "q").exists()
