"""Convert a step graph to the .ort format (mobile and minimal ONNX Runtime builds) and verify it.

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


def convert_to_ort(onnx_path: Path, tokens: int = 16) -> tuple[Path, float]:
    """Write ``<stem>.ort`` beside ``onnx_path``; return it and the max |logit| difference over
    ``tokens`` greedy steps run through both files."""
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    from .runner import OrtLM

    onnx_path = Path(onnx_path)
    target = onnx_path.with_suffix(".ort")
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / onnx_path.name
        shutil.copyfile(onnx_path, src)
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
    a, b = OrtLM(onnx_path), OrtLM(target)
    sa, sb, tok, diff = a.init_state(1), b.init_state(1), np.array([0]), 0.0
    for _ in range(tokens):
        la, sa = a.step(tok, sa)
        lb, sb = b.step(tok, sb)
        diff = max(diff, float(np.abs(la - lb).max()))
        tok = la.argmax(-1)
    return target, diff
