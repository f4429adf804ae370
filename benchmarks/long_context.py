"""Does quantization error accumulate in the recurrent state? Perplexity by position in one long stream.

    python benchmarks/long_context.py [--models mamba-pydoc lstm-pydoc mamba2-pydoc] [--presets w8a8-outlier w4a16-gptq]

For each zoo model: float and each preset (PyTorch simulation), the whole test split read as one
stream with the state carried from the first token to the last (``perplexity_by_position``),
perplexity per position bucket (0-256, 256-1k, 1k-4k, 4k-16k, 16k+). Calibration as in
quant_table.py (64 x 512 train tokens; 32 x 256 for static scales / GPTQ). Writes
benchmarks/results/long_context.json and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from rnnquant.artifacts import load
from rnnquant.calibrate import CalibConfig, calibrate, calibration_batches
from rnnquant.eval import perplexity_by_position
from rnnquant.quant import PRESETS, quantize
from rnnquant.zoo.corpus import split_text

OUT = Path(__file__).parent / "results" / "long_context.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["mamba-pydoc", "lstm-pydoc", "mamba2-pydoc"])
    ap.add_argument("--presets", nargs="+", default=["w8a8-outlier", "w4a16-gptq"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        model = load(name)
        train = torch.tensor(model.tokenizer.encode(split_text("train")).ids)
        test = torch.tensor(model.tokenizer.encode(split_text("test")).ids)
        calib = calibrate(model, train, CalibConfig(samples=64, seq_len=512))
        batches = calibration_batches(train, 32, 256, 8)
        variants = {"float": model} | {p: quantize(model, PRESETS[p], calib, batches) for p in args.presets}
        for variant, m in variants.items():
            buckets = perplexity_by_position(m, test)
            rows.append({"model": name, "variant": variant, "buckets": buckets})
            print(name, variant, " ".join(f"{b['from']}:{b['ppl']:.3f}" for b in buckets), flush=True)
    args.out.write_text(json.dumps({"command": "python benchmarks/long_context.py " + " ".join(f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                                                                                              for k, v in vars(args).items() if k != "out"),
                                    "rows": rows}, indent=1) + "\n")
    spans = [f"{b['from']}-{b['to'] or ''}" for b in rows[0]["buckets"]]
    print("\n| model | variant | " + " | ".join(spans) + " |\n|---|---|" + "---:|" * len(spans))
    base = {}
    for r in rows:
        ppl = [b["ppl"] for b in r["buckets"]]
        base.setdefault(r["model"], ppl)
        cells = [f"{p:.3f}" if r["variant"] == "float" else f"{p:.3f} ({100 * (p / f - 1):+.2f}%)" for p, f in zip(ppl, base[r["model"]])]
        print(f"| {r['model']} | {r['variant']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
