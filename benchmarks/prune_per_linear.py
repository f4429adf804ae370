"""Which Linear a pruning method loses on, and why: prune one Linear at a time.

    python benchmarks/prune_per_linear.py [--model lstm-pydoc] [--methods magnitude wanda] [--sparsity 0.5] [--mean-correct]

For each Linear (never the head) and method, with only that Linear pruned:
  ppl / delta_pct   test perplexity and its change
  err_diag          the layer output error Wanda's score minimises: sum_ij dW_ij^2 E[x_j^2]
  err_true          the real layer output error E||dW x||^2 = tr(dW C dW^T), C = E[x x^T]
                    (err_true > err_diag where the input channels are correlated)
  logit_mse         E||logits - dense logits||^2 over the calibration text: what the error costs
                    after every later layer and the head
dW is the removed part of W. --mean-correct adds dW E[x] to the bias after pruning (the error's
mean; a check, not a pruning option) and takes the errors over the centred covariance. Same calibration as prune_table.py (64 x 512 train tokens for the
activation norms; 16 x 512 for C, the logits and --methods sparsegpt's Hessian 2C). Writes benchmarks/results/prune_per_linear_<model>.json.
"""
from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

from rnnquant.calibrate import CalibConfig, calibrate, calibration_batches
from rnnquant.eval import perplexity_ids
from rnnquant.artifacts import load
from rnnquant.prune.apply import _rms, hessians_by_block
from rnnquant.prune.masks import magnitude_mask, sparsegpt_prune, wanda_mask
from rnnquant.zoo.corpus import split_text


@torch.no_grad()
def pruned_one(model, name: str, method: str, sparsity: float, calib, C: torch.Tensor, mean_correct: bool = False):
    p = copy.deepcopy(model)
    lin = dict(p.named_modules())[name]
    w = lin.weight
    if method == "sparsegpt":  # OBS updates with H = 2C: the kept weights change too
        new = sparsegpt_prune(w, 2 * C, sparsity)[0]
    else:
        mask = wanda_mask(w, _rms(calib, f"{name}.input"), sparsity) if method == "wanda" else magnitude_mask(w, sparsity)
        new = w * mask
    if mean_correct:
        lin.bias += (w - new) @ calib.stat(f"{name}.input", "mean")
    w.copy_(new)
    return p


@torch.no_grad()
def layer_errors(w: torch.Tensor, w_pruned: torch.Tensor, C: torch.Tensor) -> dict[str, float]:
    dW = (w - w_pruned).double()  # [out, in]
    C = C.double()
    return {"err_diag": float((dW**2 * C.diag()).sum()), "err_true": float(torch.einsum("oi,ij,oj->", dW, C, dW))}


@torch.no_grad()
def logit_mse(model, pruned, batches) -> float:
    return float(torch.cat([(pruned(b) - model(b)).pow(2).sum(-1).flatten() for b in batches]).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="lstm-pydoc")
    ap.add_argument("--methods", nargs="+", default=["magnitude", "wanda"], choices=["magnitude", "wanda", "sparsegpt"])
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--mean-correct", action="store_true")
    ap.add_argument("--linears", nargs="+", help="Only these Linears (default: all but the head).")
    args = ap.parse_args()
    torch.set_num_threads(2)
    model = load(args.model)
    train = torch.tensor(model.tokenizer.encode(split_text("train")).ids)
    test = torch.tensor(model.tokenizer.encode(split_text("test")).ids)
    calib = calibrate(model, train, CalibConfig(samples=64, seq_len=512))
    batches = calibration_batches(train, 16, 512, 8)
    names = args.linears or [n for n, role in model.arch_spec().linears.items() if role != "lm_head"]
    C = {n: 0.5 * h.hessian() for block in hessians_by_block(model, names, batches) for n, h in block.items()}  # H = 2 C
    if args.mean_correct:  # what is left after the bias takes the mean: the centred covariance
        C = {n: c - calib.stat(f"{n}.input", "mean").outer(calib.stat(f"{n}.input", "mean")) for n, c in C.items()}
    base = perplexity_ids(model, test, window=512).ppl
    mods = dict(model.named_modules())
    rows = []
    for name in names:
        for method in args.methods:
            p = pruned_one(model, name, method, args.sparsity, calib, C[name], args.mean_correct)
            ppl = perplexity_ids(p, test, window=512).ppl
            row = {"linear": name, "method": method, "ppl": ppl, "delta_pct": 100 * (ppl / base - 1)}
            row |= layer_errors(mods[name].weight, dict(p.named_modules())[name].weight, C[name]) | {"logit_mse": logit_mse(model, p, batches)}
            rows.append(row)
            print(f"{name:32} {method:10} ppl {ppl:8.3f} ({row['delta_pct']:+6.2f} %)  err diag {row['err_diag']:9.3f}  "
                  f"true {row['err_true']:9.3f}  logit mse {row['logit_mse']:9.2f}", flush=True)
    suffix = "_mean_correct" if args.mean_correct else ""
    out = Path(__file__).parent / "results" / f"prune_per_linear_{args.model}{suffix}.json"
    out.write_text(json.dumps({"base_ppl": base, "sparsity": args.sparsity, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
