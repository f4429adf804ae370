"""Run the CLI in-process and capture its exit code and output."""
from __future__ import annotations

import pytest
import torch

from rnnquant.cli import main


def run_cli(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
        raise SystemExit(0)
    out = capsys.readouterr()
    return exc.value.code or 0, out.out, out.err


def assert_one_line_error(capsys, *args, match: str) -> str:
    code, _, err = run_cli(capsys, *args)
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert match in err, err
    return err


@torch.no_grad()
def assert_export_form_matches_forward(monkeypatch, model, ids, state) -> None:
    """The form an adapter traces under ONNX export (``torch.onnx.is_in_onnx_export()``) gives its
    eager forward's logits and state for ``ids`` from ``state``."""
    ref, ref_state = model.forward_with_state(ids, state)
    with monkeypatch.context() as m:
        m.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
        out, out_state = model.forward_with_state(ids, state)
    assert (out - ref).abs().max() <= 1e-4 * ref.abs().max()
    for a, b in zip(out_state, ref_state, strict=True):
        assert (a.double() - b.double()).abs().max() <= 1e-4 * max(b.abs().max(), 1)
