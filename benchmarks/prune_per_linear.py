"""Which Linear a pruning method loses on: prune one Linear at a time, test perplexity each.

    python benchmarks/prune_per_linear.py [--model lstm-pydoc] [--methods magnitude wanda] [--sparsity 0.5]

Same calibration as prune_table.py (64 x 512 train tokens); the head is never pruned. Writes
benchmarks/results/prune_per_linear_<model>.json.
"""
from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

from rnnquant.calibrate import CalibConfig, calibrate
from rnnquant.eval import perplexity_ids
from rnnquant.models import load
from rnnquant.prune.apply import _rms
from rnnquant.prune.masks import magnitude_mask, wanda_mask
from rnnquant.zoo.corpus import split_text


@torch.no_grad()
def pruned_one(model, name: str, method: str, sparsity: float, calib):
    p = copy.deepcopy(model)
    w = dict(p.named_modules())[name].weight
    mask = wanda_mask(w, _rms(calib, f"{name}.input"), sparsity) if method == "wanda" else magnitude_mask(w, sparsity)
    w.mul_(mask)
    return p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="lstm-pydoc")
    ap.add_argument("--methods", nargs="+", default=["magnitude", "wanda"], choices=["magnitude", "wanda"])
    ap.add_argument("--sparsity", type=float, default=0.5)
    args = ap.parse_args()
    torch.set_num_threads(2)
    model = load(args.model)
    train = torch.tensor(model.tokenizer.encode(split_text("train")).ids)
    test = torch.tensor(model.tokenizer.encode(split_text("test")).ids)
    calib = calibrate(model, train, CalibConfig(samples=64, seq_len=512))
    base = perplexity_ids(model, test, window=512).ppl
    rows = []
    for name, role in model.arch_spec().linears.items():
        if role == "lm_head":
            continue
        for method in args.methods:
            ppl = perplexity_ids(pruned_one(model, name, method, args.sparsity, calib), test, window=512).ppl
            rows.append({"linear": name, "method": method, "ppl": ppl, "delta_pct": 100 * (ppl / base - 1)})
            print(f"{name:16} {method:10} ppl {ppl:8.3f}  ({rows[-1]['delta_pct']:+.2f} %)", flush=True)
    out = Path(__file__).parent / "results" / f"prune_per_linear_{args.model}.json"
    out.write_text(json.dumps({"base_ppl": base, "sparsity": args.sparsity, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
