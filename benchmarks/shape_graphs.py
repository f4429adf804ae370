"""Step graphs of a random-init Mamba at mamba-130m shape, for A/B timing with ab_latency.py.

    python benchmarks/shape_graphs.py DIR

Writes DIR/{fp32, ort_dyn, w8, w8s, w4}.onnx: rnnquant's float export, ORT ``quantize_dynamic`` of
it (int8 weights), and rnnquant's w8a8-dynamic, w8a8-smooth (static activation scales, calibrated
on 8 x 128 random tokens: right for timing, meaningless for accuracy) and w4a16-rtn exports.
"""
from __future__ import annotations

import sys
from pathlib import Path

from onnxruntime.quantization import QuantType, quantize_dynamic

from rnnquant.exporters.onnx_export import export_step
from rnnquant.quant import PRESETS, quantize
from rnnquant.zoo import MODELS_DIR

sys.path.insert(0, str(Path(__file__).parent))
from step_latency import shape_model, static_int8  # noqa: E402


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model = shape_model("mamba")
    tok = MODELS_DIR / "tokenizer.json"
    export_step(model, out / "fp32.onnx", tok, prefill=False)
    quantize_dynamic(str(out / "fp32.onnx"), str(out / "ort_dyn.onnx"), weight_type=QuantType.QInt8)
    export_step(quantize(model, PRESETS["w8a8-dynamic"]), out / "w8.onnx", tok, prefill=False)
    export_step(quantize(model, PRESETS["w4a16-rtn"]), out / "w4.onnx", tok, prefill=False)
    export_step(static_int8(model), out / "w8s.onnx", tok, prefill=False)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
