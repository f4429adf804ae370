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


@pytest.mark.parametrize("delay", [1.5, 2.5, 3.5])
def test_sigkill_during_export_leaves_no_partial_file(tmp_path, model_dir, delay):
    out = tmp_path / "o" / "m.onnx"
    p = subprocess.Popen([*CLI, "export", str(model_dir), "--out", str(out)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    p.send_signal(signal.SIGKILL)
    p.wait()
    if out.exists():  # it finished before the kill: then it must be whole
        onnx.checker.check_model(onnx.load(out), full_check=True)
    for f in (tmp_path / "o").glob("*") if (tmp_path / "o").exists() else []:
        assert f.name.startswith(".") or f.suffix in (".onnx", ".json"), f  # only dot-named temporaries besides whole artifacts


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
