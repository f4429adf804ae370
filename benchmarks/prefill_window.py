"""Which window ``OrtLM.prefill`` should feed a parallel prefill graph: a 1,024-token prompt in
windows of 64 to 1,024 tokens (state carried), tokens/s and peak RSS of each.

    python benchmarks/prefill_window.py [--models mamba-pydoc mamba-130m] [--threads 2]

Float and w8a8-dynamic graphs; each window size in a fresh process (so peak RSS is its own),
median of 3 timed calls after a warm-up. Writes benchmarks/results/prefill_window.json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


from rnnquant.exporters.onnx_export import export_step
from rnnquant.artifacts import load
from rnnquant.quant import PRESETS, quantize
from rnnquant.zoo import MODELS_DIR

sys.path.insert(0, str(Path(__file__).parent))
from step_latency import shape_model  # noqa: E402

WINDOWS = [64, 128, 256, 512, 1024]
PROBE = r"""
import json, sys, time, numpy as np
from rnnquant.exporters.measure import peak_rss_bytes
from rnnquant.exporters.runner import OrtLM
lm = OrtLM(sys.argv[1], threads=int(sys.argv[3]))
lm.prefill_window = int(sys.argv[2])
ids = np.random.default_rng(0).integers(lm.vocab_size, size=(1, 1024))
lm.prefill(ids, lm.init_state(1), all_logits=False)
times = []
for _ in range(3):
    t0 = time.perf_counter(); lm.prefill(ids, lm.init_state(1), all_logits=False); times.append(time.perf_counter() - t0)
print(json.dumps({"tok_s": 1024 / float(np.median(times)), "peak_rss_bytes": peak_rss_bytes()}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["mamba-pydoc", "mamba-130m"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as td:
        for name in args.models:
            model = shape_model("mamba") if name == "mamba-130m" else load(name)
            for variant in ("float", "w8a8-dynamic"):
                q = model if variant == "float" else quantize(model, PRESETS[variant])
                path = export_step(q, Path(td) / f"{name}-{variant}.onnx", MODELS_DIR / "tokenizer.json")
                for window in WINDOWS:
                    out = subprocess.run([sys.executable, "-c", PROBE, str(path), str(window), str(args.threads)],
                                         capture_output=True, text=True, check=True)
                    r = json.loads(out.stdout.strip().splitlines()[-1])
                    rows.append({"model": name, "variant": variant, "window": window, **r})
                    print(f"{name:12} {variant:13} window {window:5d}: {r['tok_s']:8.0f} tok/s  peak RSS {r['peak_rss_bytes'] / 2**20:6.0f} MiB", flush=True)
    out = Path(__file__).parent / "results" / "prefill_window.json"
    out.write_text(json.dumps({"threads": args.threads, "prompt_tokens": 1024, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
