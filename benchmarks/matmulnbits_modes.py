"""ONNX Runtime's MatMulNBits on one 4096 x 256 weight (the zoo Mamba's head), by bits, block size
and accuracy_level, against U8S8 MatMulInteger: the measurement behind the presets' int8 head.

    python benchmarks/matmulnbits_modes.py
"""
from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

K, N = 256, 4096


def _time(model, x, reps: int = 200) -> float:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    for _ in range(20):
        sess.run(None, {"x": x})
    t0 = time.perf_counter()
    for _ in range(reps):
        sess.run(None, {"x": x})
    return (time.perf_counter() - t0) / reps * 1e6


def main() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, K)).astype(np.float32)
    for bits, block, acc in [(8, 256, 0), (8, 128, 0), (8, 32, 0), (8, 256, 4), (8, 32, 4), (4, 256, 0), (4, 32, 0), (4, 32, 4)]:
        b = rng.integers(0, 256, (N, K // block, block * bits // 8)).astype(np.uint8)
        s = (rng.random(N * (K // block)) * 0.01).astype(np.float32)
        node = helper.make_node("MatMulNBits", ["x", "B", "s"], ["y"], domain="com.microsoft", K=K, N=N, bits=bits, block_size=block, accuracy_level=acc)
        g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, N])], initializer=[numpy_helper.from_array(b, "B"), numpy_helper.from_array(s, "s")])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
        print(f"MatMulNBits bits {bits} block {block:3d} accuracy_level {acc}: {_time(m, x):8.1f} us")
    w = rng.integers(-127, 127, (K, N)).astype(np.int8)
    g = helper.make_graph([helper.make_node("MatMulInteger", ["x", "W", "zp"], ["y"])], "g", [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, K])],
                          [helper.make_tensor_value_info("y", TensorProto.INT32, [1, N])],
                          initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.array(128, np.uint8), "zp")])
    print(f"MatMulInteger U8S8:                          {_time(helper.make_model(g, opset_imports=[helper.make_opsetid('', 17)]), rng.integers(0, 255, (1, K)).astype(np.uint8)):8.1f} us")


if __name__ == "__main__":
    main()
