"""Shared by the benchmarks that time ONNX Runtime sessions of rnnquant's custom ops directly."""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import onnxruntime as ort

from rnnquant.kernels import ortops


def op_session(model, threads: int):
    """A CPU session of an in-memory ModelProto with rnnquant's op library, ``threads`` intra-op threads."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    ortops.register(opts)
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def median_us(run, runs: int, warmup: int = 10) -> float:
    """Median microseconds of ``run()`` over ``runs`` calls, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def save(name: str, args, rows: list[dict]) -> None:
    """benchmarks/results/<name>.json: the arguments and the rows of one run."""
    out = Path(__file__).parent / "results" / f"{name}.json"
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2) + "\n")
