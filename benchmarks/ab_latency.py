"""Interleaved latency of several step graphs: robust ratios on a shared, noisy machine.

    python benchmarks/ab_latency.py A.onnx B.onnx ... [--rounds 5] [--tokens 300] [--threads 1]

Runs ``rnnquant.exporters.measure`` on every graph in turn, ``--rounds`` times (round robin, so a
burst of load hits all variants alike), and reports each graph's median p50 and its ratio to the
first graph. Writes benchmarks/results/ab_latency.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from rnnquant.exporters.measure import measure_in_process
from rnnquant.exporters.prefill import step_bytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("graphs", nargs="+")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "ab_latency.json"))
    args = ap.parse_args()
    p50 = {g: [] for g in args.graphs}
    for _ in range(args.rounds):
        for g in args.graphs:
            p50[g].append(measure_in_process(g, args.tokens, args.threads)["latency_ms"]["p50"])
    base = statistics.median(p50[args.graphs[0]])
    rows = [{"graph": g, "size_bytes": step_bytes(g), "p50_ms_median": statistics.median(v), "p50_ms_runs": v,
             "ratio_to_first": statistics.median(v) / base} for g, v in p50.items()]
    for r in rows:
        print(f"{Path(r['graph']).name:40} {r['size_bytes'] / 2**20:7.2f} MiB  p50 {r['p50_ms_median']:.3f} ms  x{r['ratio_to_first']:.2f}  runs {['%.3f' % x for x in r['p50_ms_runs']]}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": rows, "args": vars(args)}, indent=2) + "\n")


if __name__ == "__main__":
    main()
