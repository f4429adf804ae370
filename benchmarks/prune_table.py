"""Perplexity of pruned zoo models, masked and structural, and what structural pruning saves in
the exported step graph (docs/RESULTS.md).

    python benchmarks/prune_table.py [--models mamba-pydoc lstm-pydoc] [--threads 2] [--specs SPEC ...] [--bias-correction]

Unstructured rows (magnitude / Wanda / SparseGPT at 25 % and 50 %, 2:4) zero weights of every
Linear but the head: masked sparsity, no smaller file. Structural rows remove 10 % / 25 % of
Mamba's d_inner (LSTM: hidden units; RWKV-7: FFN channels, and a quarter / half of its heads),
1 / 2 Mamba layers and the LSTM's one removable layer; for
those the float step graph is exported and its size and per-token latency (1 thread, own process)
compared with the unpruned graph's. ``:owl`` rows take per-layer sparsities from OWL. Writes
benchmarks/results/prune_table.json; with --specs, only those rows are (re)measured and merged in.
--bias-correction turns bias correction on for every row (default: channels only) and writes
prune_table_bias_corrected.json.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from rnnquant.calibrate import CalibConfig, calibrate, calibration_batches
from rnnquant.eval import perplexity_ids
from rnnquant.exporters.measure import measure_in_process
from rnnquant.exporters.onnx_export import export_step
from rnnquant.exporters.prefill import step_bytes
from rnnquant.artifacts import load
from rnnquant.prune import parse_spec, prune
from rnnquant.prune.config import STRUCTURED_GROUPS
from rnnquant.tokenizer import tokenizer_file
from rnnquant.zoo.corpus import split_text

RESULTS = Path(__file__).parent / "results"
UNSTRUCTURED = ["magnitude:0.25", "wanda:0.25", "sparsegpt:0.25", "magnitude:0.5", "wanda:0.5", "sparsegpt:0.5",
                "magnitude:0.5:owl", "wanda:0.5:owl", "sparsegpt:0.5:owl", "magnitude:2:4", "wanda:2:4", "sparsegpt:2:4"]
DEFAULT_STRUCTURAL = ["channels:0.25", "layers:1"]  # channels: the adapter's first channel group
STRUCTURAL = {"mamba2": DEFAULT_STRUCTURAL, "rwkv7": ["channels:0.25", "heads:0.25", "heads:0.5", "layers:1"], "mamba": ["channels:0.1", "channels:0.25", "state:0.25", "state:0.5", "layers:1", "layers:2"], "lstm": ["channels:0.1", "channels:0.25", "layers:1"]}


def latency(path: Path) -> float:
    return measure_in_process(path, tokens=300, threads=1)["latency_ms"]["p50"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["mamba-pydoc", "lstm-pydoc"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--specs", nargs="+", help="Only these specs (the unpruned row is always re-measured); merged into the JSON.")
    ap.add_argument("--bias-correction", action="store_true", help="Bias correction on for every row.")
    args = ap.parse_args()
    out = RESULTS / ("prune_table_bias_corrected.json" if args.bias_correction else "prune_table.json")
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as td:
        for name in args.models:
            model = load(name)
            train = torch.tensor(model.tokenizer.encode(split_text("train")).ids)
            test = torch.tensor(model.tokenizer.encode(split_text("test")).ids)
            calib = calibrate(model, train, CalibConfig(samples=64, seq_len=512))
            batches = calibration_batches(train, 32, 256, 8)
            base = perplexity_ids(model, test, window=512).ppl
            base_path = export_step(model, Path(td) / f"{name}.onnx", tokenizer_file(Path(model.provenance.source)), prefill=False)
            base_ms = latency(base_path)
            rows.append({"model": name, "spec": "none", "ppl": base, "delta_pct": 0.0, "onnx_bytes": step_bytes(base_path), "step_ms": base_ms})
            print(f"{name:12} none            ppl {base:8.3f}  onnx {step_bytes(base_path) / 2**20:.2f} MiB  {base_ms:.3f} ms", flush=True)
            for spec in [s for s in UNSTRUCTURED + STRUCTURAL.get(model.model_type, DEFAULT_STRUCTURAL) if not args.specs or s in args.specs]:
                cfg = parse_spec(spec)
                p = prune(model, replace(cfg, bias_correction=True) if args.bias_correction else cfg, calib, batches)
                ppl = perplexity_ids(p, test, window=512).ppl
                row = {"model": name, "spec": spec, "ppl": ppl, "delta_pct": 100 * (ppl / base - 1)} | p.provenance.prune_report
                if spec.split(":")[0] in (*STRUCTURED_GROUPS, "layers"):  # structural: export and time it
                    path = export_step(p, Path(td) / f"{name}-{spec.replace(':', '_')}.onnx", tokenizer_file(Path(model.provenance.source)), prefill=False)
                    row |= {"onnx_bytes": step_bytes(path), "step_ms": latency(path), "pruned_layers": p.provenance.prune_report.get("removed_layers")}
                    # the base this row was timed against travels with it: --specs re-measures rows at other times
                    row |= {"onnx_smaller_pct": 100 * (1 - row["onnx_bytes"] / step_bytes(base_path)),
                            "base_step_ms": base_ms, "faster_pct": 100 * (1 - row["step_ms"] / base_ms)}
                rows.append(row)
                extra = f"  onnx -{row['onnx_smaller_pct']:.1f}%  step {row['step_ms']:.3f} ms (-{row['faster_pct']:.1f}%)" if "onnx_bytes" in row else ""
                print(f"{name:12} {spec:15} ppl {ppl:8.3f} ({row['delta_pct']:+6.2f}%)  masked {row['masked_sparsity_pct']:5.1f}%  "
                      f"structural {row['structural_reduction_pct']:5.1f}%{extra}", flush=True)
    if args.specs and out.exists():  # keep the rows not re-measured, in their order
        new = {(r["model"], r["spec"]): r for r in rows}
        old = json.loads(out.read_text())["rows"]
        rows = [new.pop((r["model"], r["spec"]), r) for r in old] + list(new.values())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "args": vars(args)}, indent=2) + "\n")


if __name__ == "__main__":
    main()
