"""A/B of the decode step with and without IOBinding, at a real shape, interleaved in one run.

    python benchmarks/iobinding_ab.py [--arch mamba] [--threads 1 2] [--rounds 3] [--tokens 128]

Exports step_latency.py's shape model (random weights at mamba-130m shape by default) as the
static int8 graph (w8a8-smooth) and w4a8-rtn, and measures each in a fresh process
(rnnquant.exporters.measure) stepping through `BoundStep` (pre-bound ping-pong state buffers and
logits, what `OrtLM.generate` uses) and through `OrtLM.step` (a feed dict and new output arrays
per token), alternating. Writes benchmarks/results/iobinding_ab_<arch>.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from step_latency import W4A8_RTN, shape_model, static_int8  # noqa: E402

from rnnquant.exporters.measure import measure_in_process  # noqa: E402
from rnnquant.exporters.onnx_export import export_step  # noqa: E402
from rnnquant.quant import quantize  # noqa: E402
from rnnquant.zoo import MODELS_DIR  # noqa: E402

OUT = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="mamba")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=128)
    args = ap.parse_args()
    model = shape_model(args.arch)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        graphs = {"w8a8-smooth (static int8)": export_step(static_int8(model), Path(tmp) / "int8" / "m.onnx", MODELS_DIR / "tokenizer.json", prefill=False),
                  "w4a8-rtn": export_step(quantize(model, W4A8_RTN), Path(tmp) / "w4" / "m.onnx", MODELS_DIR / "tokenizer.json", prefill=False)}
        for rnd in range(args.rounds):
            for threads in args.threads:
                for name, path in graphs.items():
                    for bound in (True, False):
                        r = measure_in_process(path, args.tokens, threads, iobinding=bound)
                        rows.append({"graph": name, "threads": threads, "iobinding": bound, "round": rnd, "p50_ms": r["latency_ms"]["p50"]})
                        print(f"round {rnd} {threads}t {name:26} iobinding={bound!s:5} p50 {r['latency_ms']['p50']:.3f} ms", flush=True)
    summary = {}
    for name in graphs:
        for threads in args.threads:
            on = statistics.median(r["p50_ms"] for r in rows if r["graph"] == name and r["threads"] == threads and r["iobinding"])
            off = statistics.median(r["p50_ms"] for r in rows if r["graph"] == name and r["threads"] == threads and not r["iobinding"])
            summary[f"{name} {threads}t"] = {"iobinding_ms": on, "step_ms": off, "saved_ms": off - on, "speedup": off / on}
            print(f"{name:26} {threads}t: OrtLM.step {off:.3f} ms, BoundStep {on:.3f} ms ({off / on:.3f}x, {1e3 * (off - on):.0f} us saved)")
    (OUT / f"iobinding_ab_{args.arch}.json").write_text(json.dumps({"rows": rows, "summary": summary}, indent=1) + "\n")


if __name__ == "__main__":
    main()
