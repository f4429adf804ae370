"""Mamba-1's fused SSM step (``ai.rnnquant::GatedSelectiveStep``) alone, its state cached or from DRAM.

    python benchmarks/selective_step.py [--layers 24 200] [--threads 1 2] [--runs 300]

A chain of L GatedSelectiveStep nodes at mamba-130m shape (d_inner 1536, d_state 16, batch 1),
each with its own state h [1, 16, 1536] and A^T [16, 1536] (0.3 MiB a layer read or written):
24 layers' fit in the last-level cache, 200 layers' (59 MiB) do not, as in a real step, where the
weight stream evicts every state between tokens. Prints the median microseconds per layer
(IOBinding, the states bound once). Writes benchmarks/results/selective_step.json.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from rnnquant.kernels import ortops

sys.path.insert(0, str(Path(__file__).parent))
from op_timing import median_us, op_session, save  # noqa: E402

E, N = 1536, 16


def chain(layers: int):
    rng = np.random.default_rng(0)
    inits = [t for i in range(layers) for t in (numpy_helper.from_array((-rng.random((N, E)) * 4).astype(np.float32), f"At{i}"),
                                                 numpy_helper.from_array(rng.standard_normal(E).astype(np.float32), f"D{i}"))]
    nodes = [helper.make_node("GatedSelectiveStep", ["u" if i == 0 else f"y{i - 1}", "dt", f"At{i}", "Bm", "Cm", f"D{i}", "z", f"h{i}"],
                              [f"y{i}", f"h_out{i}"], domain=ortops.DOMAIN) for i in range(layers)]
    rows = [("u", [1, E]), ("dt", [1, E]), ("Bm", [1, N]), ("Cm", [1, N]), ("z", [1, E])] + [(f"h{i}", [1, N, E]) for i in range(layers)]
    outs = [(f"y{layers - 1}", [1, E])] + [(f"h_out{i}", [1, N, E]) for i in range(layers)]
    graph = helper.make_graph(nodes, "selective_step", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in rows],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outs], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(ortops.DOMAIN, 1)])
    feeds = {n: rng.standard_normal(s).astype(np.float32) for n, s in rows}
    return model, feeds


def us_per_layer(layers: int, threads: int, runs: int) -> float:
    model, feeds = chain(layers)
    session = op_session(model, threads)
    binding = session.io_binding()
    for name, value in feeds.items():
        binding.bind_cpu_input(name, value)
    for out in session.get_outputs():
        binding.bind_output(out.name)
    return median_us(lambda: session.run_with_iobinding(binding), runs, warmup=20) / layers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, nargs="+", default=[24, 200])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--runs", type=int, default=300)
    args = ap.parse_args()
    rows = []
    for threads in args.threads:
        for layers in args.layers:
            us = us_per_layer(layers, threads, args.runs)
            rows.append({"layers": layers, "threads": threads, "us_per_layer": us})
            print(f"{layers:4d} layers' states ({layers * 3 * N * E * 4 / 2**20:6.1f} MiB), {threads} thread(s): {us:6.2f} us a layer")
    save("selective_step", args, rows)


if __name__ == "__main__":
    main()
