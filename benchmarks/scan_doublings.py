"""Cost of the parallel scan's doublings across chunks: the mamba-130m-shape float prefill graph
exported with 10 and with 14 doublings, timed interleaved.

    python benchmarks/scan_doublings.py [--lengths 16 128] [--threads 2]

Prints the median of 5 calls per graph and prompt length (batch 1).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

import rnnquant.models.ssm as ssm
from rnnquant.exporters.onnx_export import export_step
from rnnquant.zoo import MODELS_DIR

sys.path.insert(0, str(Path(__file__).parent))
from step_latency import shape_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[16, 128])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    model = shape_model("mamba")
    default = ssm.SCAN_CHUNK_DOUBLINGS
    sessions = {}
    with tempfile.TemporaryDirectory() as td:
        for k in (10, 14):
            ssm.SCAN_CHUNK_DOUBLINGS = k
            path = export_step(model, Path(td) / f"k{k}" / "m.onnx", MODELS_DIR / "tokenizer.json")
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = args.threads
            sessions[k] = ort.InferenceSession(str(path.with_suffix(".prefill.onnx")), opts, providers=["CPUExecutionProvider"])
        ssm.SCAN_CHUNK_DOUBLINGS = default
        states = json.loads(sessions[10].get_modelmeta().custom_metadata_map["states"])
        for length in args.lengths:
            ids = np.random.default_rng(0).integers(model.vocab_size, size=(1, length))
            feeds = {"prompt_ids": ids} | {s["name"]: np.zeros((1, *s["shape"]), np.float32) for s in states}
            times = {k: [] for k in sessions}
            for _ in range(5):
                for k, sess in sessions.items():
                    t0 = time.perf_counter()
                    sess.run(None, feeds)
                    times[k].append(time.perf_counter() - t0)
            print(f"{length:5d} tokens: " + ", ".join(f"{k} doublings {1e3 * float(np.median(v)):.1f} ms" for k, v in times.items()), flush=True)


if __name__ == "__main__":
    main()
