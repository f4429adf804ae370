"""ONNX Runtime's two int8 GEMV kernels alone, at 1 and 2 threads, at mamba-130m's Linear shapes.

    python benchmarks/int8_kernels.py [--reps 200]

Batch 1, int8 weight [K, N]: `MatMulInteger` alone (u8 activations with zero point 128, the
kernel of rnnquant's step graphs) and `com.microsoft.DynamicQuantizeMatMul` (float in, the
activation quantized inside: what ORT fuses `quantize_dynamic`'s graphs into); and a static int8
Linear float in, float out, as rnnquant lowered it before (`QuantizeLinear -> MatMulInteger ->
Cast -> Mul`: "static chain") and now (`QuantizeLinear -> com.microsoft.MatMulIntegerToFloat`:
"static fused"). Median us per call over --reps, the kinds of a shape taking turns in blocks of
20 calls (after 3 warm-up calls each) so that load on a shared machine hits them alike. Writes
benchmarks/results/int8_kernels.json.
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
    zx = helper.make_tensor("zx", TensorProto.UINT8, [], [128])
    x_float = {"x": rng.standard_normal((1, k)).astype(np.float32)}
    scales = [helper.make_tensor("a_scale", TensorProto.FLOAT, [], [0.02]), numpy_helper.from_array(np.full(n, 0.01, np.float32), "b_scale")]
    io = (TensorProto.FLOAT, TensorProto.FLOAT)
    if kind == "MatMulInteger":
        nodes = [helper.make_node("MatMulInteger", ["x", "w", "zx"], ["y"])]
        io = (TensorProto.UINT8, TensorProto.INT32)
        inits, feeds = [w, zx], {"x": np.full((1, k), 130, np.uint8)}
    elif kind == "DynamicQuantizeMatMul":
        nodes = [helper.make_node("DynamicQuantizeMatMul", ["x", "w", "b_scale"], ["y"], domain="com.microsoft")]
        inits, feeds = [w, scales[1]], x_float
    elif kind == "static chain":
        nodes = [helper.make_node("QuantizeLinear", ["x", "a_scale", "zx"], ["q"]), helper.make_node("MatMulInteger", ["q", "w", "zx"], ["acc"]),
                 helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT), helper.make_node("Mul", ["a_scale", "b_scale"], ["s"]),
                 helper.make_node("Mul", ["accf", "s"], ["y"])]
        inits, feeds = [w, zx, *scales], x_float
    else:  # static fused
        nodes = [helper.make_node("QuantizeLinear", ["x", "a_scale", "zx"], ["q"]),
                 helper.make_node("MatMulIntegerToFloat", ["q", "w", "a_scale", "b_scale", "zx"], ["y"], domain="com.microsoft")]
        inits, feeds = [w, zx, *scales], x_float
    graph = helper.make_graph(nodes, "gemv", [helper.make_tensor_value_info("x", io[0], [1, k])],
                              [helper.make_tensor_value_info("y", io[1], [1, n])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]), feeds


KINDS = ("MatMulInteger", "DynamicQuantizeMatMul", "static chain", "static fused")


BLOCK = 20  # calls of one kind in a row: a session's thread pool spins on after a call and would
# steal the core from the next kind's session if the kinds alternated call by call


def median_us(k: int, n: int, threads: int, reps: int) -> dict[str, float]:
    """Every kind's median us per call, the kinds taking turns in blocks of BLOCK calls."""
    sessions = {kind: session(kind, k, n, threads) for kind in KINDS}
    times = {kind: [] for kind in KINDS}
    for _ in range(max(1, reps // BLOCK)):
        for kind, (s, feeds) in sessions.items():
            time.sleep(0.01)  # the previous kind's spinning workers park
            for i in range(BLOCK + 3):
                t0 = time.perf_counter()
                s.run(None, feeds)
                if i >= 3:  # the first calls of a block warm its caches and threads
                    times[kind].append(time.perf_counter() - t0)
    return {kind: float(np.median(t) * 1e6) for kind, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=200)
    args = ap.parse_args()
    rows = []
    for name, (k, n) in SHAPES.items():
        one_t, two_t = median_us(k, n, 1, args.reps), median_us(k, n, 2, args.reps)
        for kind in KINDS:
            one, two = one_t[kind], two_t[kind]
            rows.append({"linear": name, "k": k, "n": n, "kernel": kind, "us_1t": one, "us_2t": two, "speedup_2t": one / two})
            print(f"{name:9} [{k}x{n}] {kind:22} 1t {one:8.1f} us  2t {two:8.1f} us  ({one / two:.2f}x)", flush=True)
    out = Path(__file__).parent / "results" / "int8_kernels.json"
    out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
