"""Per-op-type time of one exported step graph, from ONNX Runtime's own profiler.

    python benchmarks/ort_profile.py MODEL.onnx [--steps 200] [--threads 1] [--by-node]

Runs the step graph (batch 1, the initial state) with profiling on and prints microseconds per token by
op type, or with ``--by-node`` by op type and node name with the layer suffix stripped (every
layer's in_proj MatMulInteger summed as one row). The profiler's own overhead inflates the totals;
compare rows, not absolutes.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import tempfile

import numpy as np
import onnxruntime as ort

from rnnquant.exporters.runner import read_metadata
from rnnquant.kernels import ortops
from rnnquant.exporters.states import initial_state

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
    opts = ort.SessionOptions()
    opts.enable_profiling = True
    opts.profile_file_prefix = os.path.join(tempfile.gettempdir(), "rnnquant_ort_profile")  # a run killed before end_profiling leaves nothing here
    opts.intra_op_num_threads = args.threads
    if meta.get("custom_ops"):  # `export --fused`
        ortops.register(opts)
    sess = ort.InferenceSession(args.model, opts, providers=["CPUExecutionProvider"])
    feeds = {"input_ids": np.array([5])} | dict(zip((s["name"] for s in states), initial_state(states, 1)))  # each state's dtype and initial value
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
    for op, us in total.most_common(40 if args.by_node else 15):
        print(f"{op:44} {us / args.steps:9.1f} us/token  ({count[op] // args.steps} nodes)")
    print(f"total kernel time {sum(total.values()) / args.steps:.1f} us/token")


if __name__ == "__main__":
    main()
