"""ONNX Runtime's two int8 GEMV kernels alone, at 1 and 2 threads, at mamba-130m's Linear shapes.

    python benchmarks/int8_kernels.py [--reps 200]

One node per graph, batch 1, int8 weight [K, N]: `MatMulInteger` (u8 activations with zero point
128, what rnnquant's step graphs use) and `com.microsoft.DynamicQuantizeMatMul` (float in, the
activation quantized inside: what ORT fuses `quantize_dynamic`'s graphs into). Median us per
call over --reps, each after 20 warm-up calls. Writes benchmarks/results/int8_kernels.json.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

SHAPES = {"in_proj": (768, 3072), "out_proj": (1536, 768), "lm_head": (768, 50280)}


def session(kind: str, k: int, n: int, threads: int):
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.integers(-127, 128, (k, n), dtype=np.int8), "w")
    if kind == "MatMulInteger":
        node = helper.make_node("MatMulInteger", ["x", "w", "zx"], ["y"])
        io = (TensorProto.UINT8, TensorProto.INT32)
        inits, feeds = [w, helper.make_tensor("zx", TensorProto.UINT8, [], [128])], {"x": np.full((1, k), 130, np.uint8)}
    else:
        node = helper.make_node("DynamicQuantizeMatMul", ["x", "w", "b_scale"], ["y"], domain="com.microsoft")
        io = (TensorProto.FLOAT, TensorProto.FLOAT)
        inits, feeds = [w, helper.make_tensor("b_scale", TensorProto.FLOAT, [], [0.01])], {"x": rng.standard_normal((1, k)).astype(np.float32)}
    graph = helper.make_graph([node], "gemv", [helper.make_tensor_value_info("x", io[0], [1, k])],
                              [helper.make_tensor_value_info("y", io[1], [1, n])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]), feeds


def median_us(kind: str, k: int, n: int, threads: int, reps: int) -> float:
    s, feeds = session(kind, k, n, threads)
    for _ in range(20):
        s.run(None, feeds)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        s.run(None, feeds)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e6)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=200)
    args = ap.parse_args()
    rows = []
    for name, (k, n) in SHAPES.items():
        for kind in ("MatMulInteger", "DynamicQuantizeMatMul"):
            one, two = median_us(kind, k, n, 1, args.reps), median_us(kind, k, n, 2, args.reps)
            rows.append({"linear": name, "k": k, "n": n, "kernel": kind, "us_1t": one, "us_2t": two, "speedup_2t": one / two})
            print(f"{name:9} [{k}x{n}] {kind:22} 1t {one:8.1f} us  2t {two:8.1f} us  ({one / two:.2f}x)", flush=True)
    out = Path(__file__).parent / "results" / "int8_kernels.json"
    out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
