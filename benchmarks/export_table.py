"""Exported graphs of the zoo models (docs/RESULTS.md): size, node counts, parity, speed.

    python benchmarks/export_table.py [--models mamba-pydoc lstm-pydoc] [--threads 1] [--out FILE]

For float, w8a8-outlier, w4a16-gptq and w4a8 step graphs: file size, node count by op type,
max |logits ORT - PyTorch| over 64 greedy steps, ORT vs PyTorch-simulation perplexity on the
first 8192 test tokens, and decode/prefill tokens/s measured in a separate process
(rnnquant.exporters.measure). Writes benchmarks/results/export_table.json.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import torch

from rnnquant.calibrate import CalibConfig, calibrate, calibration_batches
from rnnquant.eval import perplexity_ids
from rnnquant.exporters.measure import measure_in_process
from rnnquant.exporters.onnx_export import export_step
from rnnquant.exporters.prefill import step_bytes
from rnnquant.exporters.runner import OrtLM
from rnnquant.artifacts import load
from rnnquant.quant import PRESETS, quantize
from rnnquant.tokenizer import tokenizer_file
from rnnquant.zoo.corpus import split_text

OUT = Path(__file__).parent / "results" / "export_table.json"


def parity(model, lm, steps: int = 64) -> float:
    ts, os_, tok, diff = model.init_state(1), lm.init_state(1), torch.tensor([0]), 0.0
    with torch.no_grad():
        for _ in range(steps):
            tl, ts = model.step(tok, ts)
            ol, os_ = lm.step(tok.numpy(), os_)
            diff = max(diff, float(np.abs(ol - tl.numpy()).max()))
            tok = tl.argmax(-1)
    return diff


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["mamba-pydoc", "lstm-pydoc"])
    ap.add_argument("--variants", nargs="+", default=["float", "w8a8-outlier", "w4a16-gptq", "w4a8"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eval-tokens", type=int, default=8192)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = []
    with tempfile.TemporaryDirectory() as td:
        for name in args.models:
            model = load(name)
            train = torch.tensor(model.tokenizer.encode(split_text("train")).ids)
            test = torch.tensor(model.tokenizer.encode(split_text("test")).ids)[: args.eval_tokens]
            calib = calibrate(model, train, CalibConfig(samples=64, seq_len=512))
            batches = calibration_batches(train, 32, 256, 8)
            for v in args.variants:
                m = model if v == "float" else quantize(model, PRESETS[v], calib, batches)
                path = export_step(m, Path(td) / f"{name}-{v}.onnx", tokenizer_file(Path(model.provenance.source)))
                lm = OrtLM(path)
                sim = perplexity_ids(m, test, window=512).ppl
                ort_ppl, _ = lm.perplexity(test.numpy(), window=512)
                speed = measure_in_process(path, tokens=256, threads=args.threads)
                ops = Counter(n.op_type for n in onnx.load(str(path)).graph.node)
                rows.append({"model": name, "variant": v, "size_bytes": step_bytes(path), "nodes": sum(ops.values()), "ops": dict(ops.most_common()),
                             "max_abs_logit_diff": parity(m, lm), "ppl_torch": sim, "ppl_ort": ort_ppl, "ppl_rel_diff_pct": 100 * (ort_ppl / sim - 1)} | speed)
                r = rows[-1]
                print(f"{name:12} {v:13} {r['size_bytes'] / 2**20:6.2f} MiB {r['nodes']:4d} nodes  |dlogit| {r['max_abs_logit_diff']:.1e}  "
                      f"ppl torch {sim:.3f} ort {ort_ppl:.3f}  p50 {r['latency_ms']['p50']:.3f} ms  {r['decode_tok_s']:.0f} tok/s  prefill {r['prefill_tok_s']:.0f} tok/s", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "args": vars(args) | {"out": str(args.out)}}, indent=2) + "\n")


if __name__ == "__main__":
    main()
