"""Interleaved latency of fused step graphs, each run with the op library built from a given source.

    python benchmarks/ab_library.py GRAPH_A SOURCE_A GRAPH_B SOURCE_B [...] [--rounds 6] [--tokens 300] [--threads 1]

An A/B of two versions of ``kernels/ort/rnnquant_ops.cc`` (``git show REV:kernels/ort/rnnquant_ops.cc
> old.cc``) on the same graph, or of two graphs each with the library it was exported for. Each
(graph, source) pair is measured by ``rnnquant.exporters.measure`` in a fresh process with that
source's library (built into the cache on first use), in turn, ``--rounds`` times; ``--reverse``
runs the pairs in the opposite order each round (the first of a round can read faster or slower:
run both orders). Prints every round's p50 and each pair's median. Writes
benchmarks/results/ab_library.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

# run in the child: measure GRAPH with the library of SOURCE
CHILD = """
import json, sys
from pathlib import Path
from rnnquant.kernels import ortops
ortops.SOURCE = Path(sys.argv[2])
from rnnquant.exporters.measure import measure
print(json.dumps(measure(sys.argv[1], int(sys.argv[3]), int(sys.argv[4]))["latency_ms"]))
"""


def p50(graph: str, source: str, tokens: int, threads: int) -> float:
    res = subprocess.run([sys.executable, "-c", CHILD, graph, str(Path(source).resolve()), str(tokens), str(threads)],
                         capture_output=True, text=True, timeout=1800, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])["p50"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pairs", nargs="+", help="GRAPH SOURCE, repeated")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--tokens", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reverse", action="store_true")
    args = ap.parse_args()
    if len(args.pairs) % 2:
        ap.error("give GRAPH SOURCE pairs")
    pairs = list(zip(args.pairs[::2], args.pairs[1::2]))
    order = pairs[::-1] if args.reverse else pairs
    runs = {p: [] for p in pairs}
    for r in range(args.rounds):
        for p in order:
            runs[p].append(p50(*p, args.tokens, args.threads))
        print(f"round {r}: " + "  ".join(f"{Path(g).name}+{Path(s).name} {runs[(g, s)][-1]:.3f}" for g, s in order))
    rows = [{"graph": g, "source": s, "p50_ms_runs": v, "p50_ms_median": statistics.median(v)} for (g, s), v in runs.items()]
    for row in rows:
        print(f"{Path(row['graph']).name}+{Path(row['source']).name}: median p50 {row['p50_ms_median']:.3f} ms")
    out = Path(__file__).parent / "results" / "ab_library.json"
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
