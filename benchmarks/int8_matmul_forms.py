"""ONNX Runtime's MatMulInteger by operand signedness (U8S8, U8U8, S8S8), at the mamba-130m step's
shapes (batch 1, one thread): microseconds per call and the largest error against the exact integer
product, with full-range weights. The measurement behind the exporter's U8U8 lowering (docs/RESULTS.md §16).

    python benchmarks/int8_matmul_forms.py

On x86 without VNNI, U8S8 adds pairs of u8 x s8 products in int16 (vpmaddubsw), which saturates.
"""
from __future__ import annotations

import platform
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

SHAPES = [(768, 3072), (1536, 768), (768, 50280)]  # in_proj, out_proj, the head
FORMS = {"U8S8": (np.uint8, np.int8), "U8U8": (np.uint8, np.uint8), "S8S8": (np.int8, np.int8)}


def _cpu() -> str:
    """The CPU's model name and the flags that decide which int8 kernel ONNX Runtime picks."""
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
        name = next(line for line in info if line.startswith("model name")).split(":", 1)[1].strip()
        flags = next(line for line in info if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()
    return f"{name}; flags: " + (" ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags) or "none of avx2/avx512/vnni/amx")


def _session(w: np.ndarray, a_dtype, a_zp: int, w_zp: int, K: int, N: int):
    kind = TensorProto.UINT8 if a_dtype == np.uint8 else TensorProto.INT8
    g = helper.make_graph(
        [helper.make_node("MatMulInteger", ["x", "w", "azp", "wzp"], ["y"])], "g",
        [helper.make_tensor_value_info("x", kind, [1, K])], [helper.make_tensor_value_info("y", TensorProto.INT32, [1, N])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(a_zp, a_dtype), "azp"), numpy_helper.from_array(np.array(w_zp, w.dtype), "wzp")],
    )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def measure(K: int, N: int, form: str, rng) -> tuple[float, int, int]:
    """(us per call, max |error|, max |exact|) for one form: the same integer grid in every form."""
    a_dtype, w_dtype = FORMS[form]
    codes = rng.integers(-127, 128, (K, N))  # full-range symmetric 8-bit weights
    acts = rng.integers(-128, 128, (1, K))
    a_zp, w_zp = (128 if a_dtype == np.uint8 else 0), (128 if w_dtype == np.uint8 else 0)
    w, x = (codes + w_zp).astype(w_dtype), (acts + a_zp).astype(a_dtype)
    sess = _session(w, a_dtype, a_zp, w_zp, K, N)
    exact = acts @ codes
    err = int(np.abs(sess.run(None, {"x": x})[0].astype(np.int64) - exact).max())
    reps = max(20, int(2e8 // (K * N)))
    for _ in range(reps // 10):
        sess.run(None, {"x": x})
    t0 = time.perf_counter()
    for _ in range(reps):
        sess.run(None, {"x": x})
    return (time.perf_counter() - t0) / reps * 1e6, err, int(np.abs(exact).max())


def main() -> None:
    print(f"{_cpu()}; onnxruntime {ort.__version__}")
    rng = np.random.default_rng(0)
    for K, N in SHAPES:
        for form in FORMS:
            us, err, top = measure(K, N, form, rng)
            print(f"[1, {K}] x [{K}, {N}] {form}: {us:9.1f} us   max |error| {err} (of {top})")


if __name__ == "__main__":
    main()
