"""What an export puts on disk: the step graph alone vs step + prefill with their shared weights.

    python benchmarks/export_files.py [--models mamba-pydoc lstm-pydoc rwkv7-pydoc] [--recipes float w8a8-outlier w4a16-gptq]
    python benchmarks/export_files.py --shape mamba --recipes float w8a8-dynamic w4a16-rtn   # step_latency.py's 130M shape

For each zoo model and recipe: export with the prefill graph (the default: `<stem>.onnx`,
`<stem>.prefill.onnx`, `<stem>.onnx.data`) and without it (`export_step(prefill=False)`: the step
graph and its weights alone), and print the bytes of each file and the ratio
(step + prefill + weights) / (step alone + its weights), issue #21's "ship the weights once"
target (<= 1.05). Writes benchmarks/results/export_files[_<shape>_shape].json.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from rnnquant.artifacts import load
from rnnquant.calibrate import CalibConfig, calibrate, calibration_batches
from rnnquant.exporters.onnx_export import export_step
from rnnquant.exporters.prefill import prefill_path, weights_path
from rnnquant.quant import PRESETS, quantize
from rnnquant.tokenizer import tokenizer_file
from rnnquant.zoo import MODELS_DIR
from rnnquant.zoo.corpus import split_text

OUT = Path(__file__).parent / "results" / "export_files.json"


def sizes(step: Path) -> dict:
    files = {"step": step, "prefill": prefill_path(step), "weights": weights_path(step)}
    return {k: f.stat().st_size if f.is_file() else 0 for k, f in files.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["mamba-pydoc", "lstm-pydoc", "rwkv7-pydoc"])
    ap.add_argument("--recipes", nargs="+", default=["float", "w8a8-outlier", "w4a16-gptq"])
    ap.add_argument("--shape", help="Instead of zoo models: step_latency.py's random model of this architecture at real "
                                    "shape (recipes that need no calibration)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in [f"{args.shape}-shape"] if args.shape else args.models:
            if args.shape:
                sys.path.insert(0, str(Path(__file__).parent))
                from step_latency import shape_model

                m, tok, calib = shape_model(args.shape), MODELS_DIR / "tokenizer.json", None
            else:
                m = load(name)
                tok = tokenizer_file(Path(m.provenance.source))
                train = torch.tensor(m.tokenizer.encode(split_text("train")).ids)
                calib = calibrate(m, train, CalibConfig(samples=16, seq_len=256))
            for recipe in args.recipes:
                batches = calibration_batches(train, 16, 256, 4) if calib is not None else None
                q = m if recipe == "float" else quantize(m, PRESETS[recipe], calib, batches)
                both = sizes(export_step(q, Path(tmp) / name / recipe / "both" / "m.onnx", tok))
                alone = sizes(export_step(q, Path(tmp) / name / recipe / "alone" / "m.onnx", tok, prefill=False))
                ratio = sum(both.values()) / sum(alone.values())
                rows.append({"model": name, "recipe": recipe, "with_prefill": both, "step_alone": alone, "ratio": ratio})
                print(f"{name:12} {recipe:13} step {both['step'] / 2**10:7.1f} KiB  prefill {both['prefill'] / 2**10:7.1f} KiB  "
                      f"weights {both['weights'] / 2**20:6.2f} MiB | step alone {sum(alone.values()) / 2**20:6.2f} MiB | ratio {ratio:.4f}",
                      flush=True)
    out = args.out or OUT.with_name(f"export_files_{args.shape}_shape.json" if args.shape else OUT.name)
    out.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
