"""Convert a step graph and its prefill graph to the .ort format (mobile and minimal ONNX Runtime
builds) and verify them.

Uses onnxruntime's own ``convert_onnx_models_to_ort`` (Fixed optimization style: the graph is
optimized for the generic CPU EP at conversion time). The .ort file keeps no metadata_props
that our runner reads, so the runner looks at the .onnx beside it for them.
"""
from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np

from rnnquant.errors import RnnquantError
from rnnquant.io import atomic_path


@contextlib.contextmanager
def _quiet_logging():
    logging.disable(logging.INFO)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def _convert(onnx_path: Path, target: Path, weights: Path) -> None:
    """``weights``: the export's shared weights file, which the .ort file embeds."""
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / onnx_path.name
        shutil.copyfile(onnx_path, src)
        if weights.is_file():
            shutil.copyfile(weights, Path(d) / weights.name)
        try:
            with contextlib.redirect_stdout(io.StringIO()), _quiet_logging():  # the converter narrates each step
                convert_onnx_models_to_ort(src, output_dir=Path(d) / "out", optimization_styles=[OptimizationStyle.Fixed])
        except Exception as e:  # noqa: BLE001 - the converter raises bare exceptions
            raise RnnquantError(f"{onnx_path}: .ort conversion failed ({str(e).splitlines()[0][:160]})") from None
        produced = next((Path(d) / "out").glob("*.ort"), None)
        if produced is None:
            raise RnnquantError(f"{onnx_path}: .ort conversion produced no file")
        with atomic_path(target) as tmp:
            shutil.copyfile(produced, tmp)


def convert_to_ort(onnx_path: Path, tokens: int = 16) -> tuple[Path, float]:
    """Write ``<stem>.ort`` (and ``<stem>.prefill.ort`` when a prefill graph is beside it) next to
    ``onnx_path``; return the step .ort and the max |logit| difference over ``tokens`` greedy steps
    run through both files, and over a prefill of those tokens."""
    from .prefill import prefill_path, weights_path
    from .runner import OrtLM

    onnx_path = Path(onnx_path)
    target = onnx_path.with_suffix(".ort")
    _convert(onnx_path, target, weights_path(onnx_path))
    pre = prefill_path(onnx_path)
    if pre.is_file():
        _convert(pre, pre.with_suffix(".ort"), weights_path(onnx_path))  # the prefill graph reads the step graph's weights
    a, b = OrtLM(onnx_path), OrtLM(target)
    sa, sb, tok, diff, seen = a.init_state(1), b.init_state(1), np.array([0]), 0.0, []
    for _ in range(tokens):
        la, sa = a.step(tok, sa)
        lb, sb = b.step(tok, sb)
        diff = max(diff, float(np.abs(la - lb).max()))
        tok = la.argmax(-1)
        seen.append(int(tok[0]))
    (pa, _), (pb, _) = a.prefill(np.array([seen]), a.init_state(1)), b.prefill(np.array([seen]), b.init_state(1))
    return target, max(diff, float(np.abs(pa - pb).max()))
