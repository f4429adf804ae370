"""No half-written artifact, ever: SIGKILL mid-write, a full disk, Ctrl-C."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time

import onnx
import pytest

from rnnquant.errors import RnnquantError
from rnnquant.io import atomic_path, save_checkpoint
from tests.conftest import TOKENIZER, tiny_model
from tests.eval.test_perplexity import TEXT

CLI = [sys.executable, "-c", "import sys; from rnnquant.cli import main; main(sys.argv[1:])"]
ENV = os.environ | {"PYTHONPATH": os.getcwd()}


@pytest.fixture
def model_dir(tmp_path):
    d = tmp_path / "m"
    save_checkpoint(tiny_model("mamba"), d, tokenizer_path=TOKENIZER)
    return d


@pytest.mark.parametrize("after", [0.0, 0.15, 0.4])
def test_sigkill_during_export_leaves_no_partial_file(tmp_path, model_dir, after):
    """Killed while writing (once its first temporary exists, so never during imports): no step graph
    under the final name unless the whole export is there, and nothing half-written beside it."""
    out_dir = tmp_path / "o"
    out = out_dir / "m.onnx"
    p = subprocess.Popen([*CLI, "export", str(model_dir), "--out", str(out)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out_dir.is_dir() and any(f.name.startswith(".") for f in out_dir.iterdir())) and p.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    assert p.poll() is None, "the export finished before it started writing: the kill would test nothing"
    time.sleep(after)
    p.send_signal(signal.SIGKILL)
    p.wait()
    finals = {f.name for f in out_dir.iterdir() if not f.name.startswith(".")}
    whole = {"m.onnx", "m.onnx.data", "m.prefill.onnx", "tokenizer.json"}  # the graphs, their shared weights, the tokenizer
    assert finals <= whole, finals
    if "m.onnx" in finals:  # the step graph is written last: it means everything is there
        assert finals == whole
    for graph in finals & {"m.onnx", "m.prefill.onnx"}:  # the weights are renamed before either graph
        onnx.checker.check_model(str(out_dir / graph), full_check=True)


def test_disk_full_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    import safetensors.torch

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    monkeypatch.setattr("rnnquant.io.save_file", full)
    with pytest.raises(RnnquantError, match="cannot write .*No space left on device"):
        save_checkpoint(tiny_model("lstm"), tmp_path / "ck", tokenizer_path=TOKENIZER)
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_replaces_only_on_success(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("old")
    with pytest.raises(ValueError):
        with atomic_path(f) as tmp:
            tmp.write_text("half")
            raise ValueError
    assert f.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_ctrl_c_during_calibration(tmp_path, model_dir):
    data = tmp_path / "d.txt"
    data.write_text(TEXT * 40)
    out = tmp_path / "calib"
    p = subprocess.Popen([*CLI, "calibrate", str(model_dir), "--data", str(data), "--samples", "400", "--seq-len", "256", "--out", str(out)],
                         env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # a background job inherits SIGINT ignored
    seen, deadline = "", time.time() + 120
    while "calibrate:" not in seen and time.time() < deadline:  # interrupt mid-calibration, not during imports
        seen += p.stderr.read(1)
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    _, rest = p.communicate(timeout=60)
    err = seen + rest
    assert p.returncode == 130, err
    assert err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".calib*"))
