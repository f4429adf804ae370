"""Per-op-type time of one exported step graph, from ONNX Runtime's own profiler.

    python benchmarks/ort_profile.py MODEL.onnx [--steps 200] [--threads 1] [--by-node]

Runs the step graph (batch 1, the initial state) with profiling on and prints microseconds per token by
op type, or with ``--by-node`` by op type and node name with the layer suffix stripped (every
layer's in_proj MatMulInteger summed as one row), with each row's time per node. The profiler's
own cost inflates every node's time: the same steps are also timed in a session without
profiling, and the profiled kernel time less that step time, over the nodes a step runs, is the
profiler's average cost per node (an average: it is not the same for every op, so no row is
corrected by it; rows of cheap nodes are mostly that cost).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from rnnquant.exporters.runner import read_metadata
from rnnquant.kernels import ortops
from rnnquant.exporters.states import initial_state

sys.path.insert(0, str(Path(__file__).parent))
from op_timing import median_us  # noqa: E402

LAYER_SUFFIX = re.compile(r"_[0-9]+(/|$)")  # the exporter numbers repeated module names: /in_proj_17/...


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--by-node", action="store_true")
    args = ap.parse_args()
    meta = read_metadata(args.model)
    states = json.loads(meta["states"])
    feeds = {"input_ids": np.array([5])} | dict(zip((s["name"] for s in states), initial_state(states, 1)))  # each state's dtype and initial value
    plain = _session(args.model, meta, args.threads, profile=False)
    plain_us = median_us(lambda: plain.run(None, feeds), args.steps)  # the same feeds every step, as the profiled loop
    sess = _session(args.model, meta, args.threads, profile=True)
    for _ in range(args.steps):
        sess.run(None, feeds)
    trace = sess.end_profiling()
    total, count = collections.Counter(), collections.Counter()
    for e in json.load(open(trace)):
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            key = e["args"]["op_name"]
            if args.by_node:  # "/in_proj_17/MatMulInteger_kernel_time" -> "MatMulInteger /in_proj/MatMulInteger"
                key += " " + LAYER_SUFFIX.sub(r"\1", e["name"].removesuffix("_kernel_time"))
            total[key] += e["dur"]
            count[key] += 1
    os.remove(trace)
    kernel_us, nodes = sum(total.values()) / args.steps, sum(count.values()) / args.steps
    per_node = (kernel_us - plain_us) / nodes
    for op, us in total.most_common(40 if args.by_node else 15):
        n = count[op] / args.steps
        print(f"{op:44} {us / args.steps:9.1f} us/token  ({n:.0f} nodes, {us / args.steps / n:7.2f} us a node)")
    print(f"total kernel time {kernel_us:.1f} us/token over {nodes:.0f} nodes; the step without profiling {plain_us:.1f} us "
          f"(median): the profiler costs {per_node:.2f} us a node on average")


def _session(path: str, meta: dict, threads: int, profile: bool):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    if profile:
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(tempfile.gettempdir(), "rnnquant_ort_profile")  # a run killed before end_profiling leaves nothing here
    if meta.get("custom_ops"):  # `export --fused`
        ortops.register(opts)
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


if __name__ == "__main__":
    main()
