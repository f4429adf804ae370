"""Where a batch-1 step's small Linears wait: cache or DRAM. Chains of LoRA-shaped ``Int8Linear``
pairs (K -> R -> K, static activations), one thread, run by ONNX Runtime with rnnquant's op library.

    python benchmarks/small_linears.py [--k 768] [--rank 64] [--distinct 1 50 1000] [--runs 30]

For each ``--distinct`` count D the chain has D pairs with their own weights (D = 1: every call
reads the same, cached, weights; D x 2 K R bytes beyond the last-level cache: every call reads
DRAM) and prints the median microseconds per pair over ``--runs`` runs of the whole chain.

Then RWKV-7's four LoRA-in Linears of a layer (K -> 64, 64, 32, 128), from DRAM (``GROUP_LAYERS``
layers' weights): as four Int8Linear nodes, and as one node over the four matrices stacked (the
same bytes in one contiguous weight): what one op over a layer's sibling Linears would save.
Writes benchmarks/results/small_linears.json.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from onnx import TensorProto, helper, numpy_helper

from rnnquant.kernels import ortops
from rnnquant.kernels.fused import pack_int8

sys.path.insert(0, str(Path(__file__).parent))
from op_timing import median_us, op_session, save  # noqa: E402

PAIRS = 1000  # calls per chain, whatever the number of distinct weights (the same work per run)


def chain(k: int, rank: int, distinct: int):
    """A graph of PAIRS Int8Linear pairs K -> rank -> K, pair i reading weight set i % distinct."""
    g = torch.Generator().manual_seed(0)
    inits, nodes, x = [numpy_helper.from_array(np.array(0.05, np.float32), "a_scale")], [], "x"
    for i in range(distinct):
        for j, (n_in, n_out) in enumerate(((k, rank), (rank, k))):
            codes, colsum = pack_int8(torch.randint(-127, 128, (n_out, n_in), dtype=torch.int8, generator=g))
            inits += [numpy_helper.from_array(codes.numpy(), f"w{i}_{j}"), numpy_helper.from_array(colsum.numpy(), f"c{i}_{j}"),
                      numpy_helper.from_array(np.full(n_out, 1e-3, np.float32), f"s{i}_{j}")]
    for p in range(PAIRS):
        for j in range(2):
            w = p % distinct
            nodes.append(helper.make_node("Int8Linear", [x, f"w{w}_{j}", f"c{w}_{j}", f"s{w}_{j}", "a_scale"], [f"y{p}_{j}"], domain=ortops.DOMAIN))
            x = f"y{p}_{j}"
    graph = helper.make_graph(nodes, "small_linears", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, k])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(ortops.DOMAIN, 1)])


LORA_RANKS = (64, 64, 32, 128)  # RWKV-7 0.1B's w, a, v, g LoRAs
GROUP_LAYERS = 400  # 88 MiB of LoRA-in weights: beyond the last-level cache


def siblings(k: int, stacked: bool):
    """GROUP_LAYERS layers of the four LoRA-in Linears, each its own node or one node over them stacked."""
    g = torch.Generator().manual_seed(0)
    inits, nodes, outs = [numpy_helper.from_array(np.array(0.05, np.float32), "a_scale")], [], []
    for i in range(GROUP_LAYERS):
        for j, n in enumerate([sum(LORA_RANKS)] if stacked else LORA_RANKS):
            codes, colsum = pack_int8(torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g))
            inits += [numpy_helper.from_array(codes.numpy(), f"w{i}_{j}"), numpy_helper.from_array(colsum.numpy(), f"c{i}_{j}"),
                      numpy_helper.from_array(np.full(n, 1e-3, np.float32), f"s{i}_{j}")]
            nodes.append(helper.make_node("Int8Linear", ["x", f"w{i}_{j}", f"c{i}_{j}", f"s{i}_{j}", "a_scale"], [f"y{i}_{j}"], domain=ortops.DOMAIN))
            outs.append(helper.make_tensor_value_info(f"y{i}_{j}", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "lora_in", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])], outs, initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(ortops.DOMAIN, 1)])


def us_per_run(model, k: int, runs: int) -> float:
    session = op_session(model, threads=1)
    feeds = {"x": np.random.default_rng(0).standard_normal((1, k)).astype(np.float32)}
    return median_us(lambda: session.run(None, feeds), runs)


def us_per_pair(model, k: int, runs: int) -> float:
    return us_per_run(model, k, runs) / PAIRS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, default=768)
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--distinct", type=int, nargs="+", default=[1, 50, 1000])
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    rows = []
    for d in args.distinct:
        us = us_per_pair(chain(args.k, args.rank, d), args.k, args.runs)
        mib = d * 2 * args.k * args.rank / 2**20
        rows.append({"distinct": d, "weight_mib": mib, "us_per_pair": us})
        print(f"{d:5d} distinct pairs ({mib:7.1f} MiB of weights): {us:6.2f} us a pair")
    for stacked in (False, True):
        us = us_per_run(siblings(args.k, stacked), args.k, args.runs) / GROUP_LAYERS
        rows.append({"lora_in": "one stacked node" if stacked else "four nodes", "us_per_layer": us})
        print(f"a layer's four LoRA-in Linears from DRAM, {'one stacked node' if stacked else 'four nodes':16}: {us:6.2f} us")
    save("small_linears", args, rows)


if __name__ == "__main__":
    main()
