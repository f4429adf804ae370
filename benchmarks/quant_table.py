"""Test-split perplexity and size of every quantization preset on every zoo model (docs/RESULTS.md).

    python benchmarks/quant_table.py [--models mamba-pydoc lstm-pydoc] [--inject 50] [--threads 2]

Rows: float, each preset (PyTorch simulation of the integer model; the ONNX parity tests hold
the exported graphs to within 0.5% of these numbers). With --inject S, also the zoo Mamba with
function-preserving outliers (x S on a few norm channels per layer; the float model is unchanged).
Writes benchmarks/results/quant_table.json and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from rnnquant.calibrate import CalibConfig, calibrate, calibration_batches, inject_outliers
from rnnquant.eval import perplexity_ids
from rnnquant.artifacts import load
from rnnquant.quant import PRESETS, quantize, size_bytes
from rnnquant.zoo.corpus import split_text

OUT = Path(__file__).parent / "results" / "quant_table.json"


def injected(model, scale: float):
    """A few channels per layer (3 in layer 0, 2 elsewhere), spread over the hidden size."""
    pairs = model.arch_spec().smoothing_pairs
    d = model.config["hidden_size"]
    chans = {norm: ([7, d // 2 + 3, d - 5] if i == 0 else [11 + i, d // 3 + i]) for i, (norm, _) in enumerate(pairs)}
    model, _ = inject_outliers(model, chans, scale)
    return model


def evaluate(name: str, model, train_ids, test_ids, args) -> list[dict]:
    calib = calibrate(model, train_ids, CalibConfig(samples=args.calib_samples, seq_len=512))
    batches = calibration_batches(train_ids, args.data_samples, 256, 8)
    base = perplexity_ids(model, test_ids, window=512).ppl
    rows = [{"model": name, "preset": "float", "ppl": base, "delta_pct": 0.0, "size_bytes": size_bytes(model), "seconds": 0.0}]
    print(f"{name:24} float          ppl {base:8.3f}", flush=True)
    for preset in args.presets:
        t0 = time.time()
        recipe = replace(PRESETS[preset], embedding_bits=None) if args.float_embedding else PRESETS[preset]
        q = quantize(model, recipe, calib, batches)
        ppl = perplexity_ids(q, test_ids, window=512).ppl
        rows.append({"model": name, "preset": preset, "ppl": ppl, "delta_pct": 100 * (ppl / base - 1), "size_bytes": size_bytes(q), "seconds": time.time() - t0})
        print(f"{name:24} {preset:14} ppl {ppl:8.3f}  {rows[-1]['delta_pct']:+7.2f}%  {rows[-1]['size_bytes'] / 2**20:6.2f} MiB", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["mamba-pydoc", "lstm-pydoc"])
    ap.add_argument("--presets", nargs="+", default=list(PRESETS))
    ap.add_argument("--inject", type=float, default=50.0, help="outlier scale for the injected Mamba (0: skip)")
    ap.add_argument("--calib-samples", type=int, default=64)
    ap.add_argument("--data-samples", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--float-embedding", action="store_true",
                    help="every preset with embedding_bits null: an untied embedding table stays float (as before docs/RESULTS.md §24)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        model = load(name)
        train_ids = torch.tensor(model.tokenizer.encode(split_text("train")).ids)
        test_ids = torch.tensor(model.tokenizer.encode(split_text("test")).ids)
        rows += evaluate(name, model, train_ids, test_ids, args)
        if args.inject and model.model_type == "mamba":
            rows += evaluate(f"{name}+outliers x{args.inject:g}", injected(model, args.inject), train_ids, test_ids, args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": rows, "args": vars(args)}, indent=2) + "\n")
    print("\n| model | preset | test ppl | Δ vs float | size MiB |\n|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['preset']} | {r['ppl']:.3f} | {r['delta_pct']:+.2f}% | {r['size_bytes'] / 2**20:.2f} |")


if __name__ == "__main__":
    main()
