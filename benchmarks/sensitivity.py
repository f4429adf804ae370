"""Per-layer sensitivity: quantize one Linear at a time and measure the perplexity rise.

    python benchmarks/sensitivity.py --model mamba-pydoc --presets w4a16-rtn w4a16-gptq [--tokens 16384]

For each Linear the adapter declares, a recipe that applies the preset's rule to that Linear only
(everything else float). Writes benchmarks/results/sensitivity_<model>.json and prints a table.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from rnnquant.calibrate import CalibConfig, calibrate, calibration_batches
from rnnquant.eval import perplexity_ids
from rnnquant.artifacts import load
from rnnquant.quant import PRESETS, quantize
from rnnquant.zoo.corpus import split_text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mamba-pydoc")
    ap.add_argument("--presets", nargs="+", default=["w4a16-rtn", "w4a16-gptq"])
    ap.add_argument("--tokens", type=int, default=16384)
    args = ap.parse_args()
    model = load(args.model)
    train = torch.tensor(model.tokenizer.encode(split_text("train")).ids)
    test = torch.tensor(model.tokenizer.encode(split_text("test")).ids)[: args.tokens]
    calib = calibrate(model, train, CalibConfig(samples=64, seq_len=512))
    batches = calibration_batches(train, 32, 256, 8)
    base = perplexity_ids(model, test, window=512).ppl
    rows = []
    for name, role in model.arch_spec().linears.items():
        row = {"linear": name, "role": role}
        for preset in args.presets:
            r = PRESETS[preset]
            rule = dataclasses.replace(r.rule_for(name, role), match=name)
            only = dataclasses.replace(r, name=f"{preset}@{name}", rules=[rule])
            ppl = perplexity_ids(quantize(model, only, calib, batches), test, window=512).ppl
            row[preset] = 100 * (ppl / base - 1)
        rows.append(row)
        print(f"{name:40} " + "  ".join(f"{p} {row[p]:+.3f}%" for p in args.presets), flush=True)
    out = Path(__file__).parent / "results" / f"sensitivity_{args.model}.json"
    out.write_text(json.dumps({"base_ppl": base, "tokens": len(test), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
