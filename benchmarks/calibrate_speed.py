"""Calibration and GPTQ time against one plain float forward over the same tokens, in one process.

    python benchmarks/calibrate_speed.py MODEL_DIR [--samples 8] [--seq-len 512] [--gptq] [--profile N]

The in-process view of benchmarks/scale.py's ratios (no process start, loading or writing in the
figures): one float forward of the calibration batches (head included), then ``collect`` (the
statistics of ``rnnquant calibrate``), then with ``--gptq`` a w4a16-gptq quantization of the same
batches. ``--profile N`` prints the N functions with the most own time for each stage (cProfile).
Build a model at mamba-130m shape with ``benchmarks/scale.py --stages`` (its BUILD step) or bring
your own. Absolute times on a shared 2-core machine are noise; the ratios are the figure.
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from pathlib import Path

import torch

from rnnquant.artifacts import load
from rnnquant.calibrate import calibration_batches
from rnnquant.calibrate.collect import CalibConfig, collect
from rnnquant.quant import PRESETS, quantize
from rnnquant.zoo.corpus import split_text


def timed(fn, profile: int) -> float:
    prof = cProfile.Profile() if profile else None
    t0 = time.perf_counter()
    if prof:
        prof.enable()
    fn()
    if prof:
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(profile)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--gptq", action="store_true")
    ap.add_argument("--profile", type=int, default=0)
    args = ap.parse_args()
    m = load(str(args.model))
    ids = torch.tensor(m.tokenizer.encode(split_text("train")).ids)
    batches = calibration_batches(ids, args.samples, args.seq_len, 8)

    def forward():
        with torch.no_grad():
            for b in batches:
                m(b)

    fwd = timed(forward, 0)
    print(f"float forward  {fwd:8.1f} s", flush=True)
    cal = timed(lambda: collect(m, batches, CalibConfig(samples=args.samples, seq_len=args.seq_len)), args.profile)
    print(f"calibrate      {cal:8.1f} s  {cal / fwd:.2f}x the forward", flush=True)
    if args.gptq:
        q = timed(lambda: quantize(m, PRESETS["w4a16-gptq"], None, batches, inplace=True), args.profile)
        print(f"w4a16-gptq     {q:8.1f} s  {q / fwd:.2f}x the forward", flush=True)


if __name__ == "__main__":
    main()
