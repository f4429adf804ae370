"""Resident memory of one step graph's ONNX Runtime session under a few loading options.

    python benchmarks/session_memory.py MODEL.onnx [--rounds 3] [--steps 60]

Each option runs in a fresh process (batch 1, 1 thread, zero state): RSS before the session,
peak RSS (VmHWM) and steady RSS (VmRSS after the steps), and p50 step latency; medians over
``--rounds`` round-robin rounds. Options: ORT defaults; ``disable_prepacking``; glibc's
``MALLOC_MMAP_THRESHOLD_=131072`` (large frees go back to the OS instead of staying in the heap);
the .ort format with ``use_ort_model_bytes_directly`` (converted beside MODEL first; not for an
``export --fused`` graph, whose op library the probes load); and the
earlier one-file layout (the graph with its weights inline, written beside MODEL first), since
exports now keep their weights in ``<name>.onnx.data``. Ratios are to the weight bytes (the graph
file plus its weights file).
Writes benchmarks/results/session_memory.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

PROBE = r"""
import json, sys, time, numpy as np, onnxruntime as ort
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
path, opt = sys.argv[1], sys.argv[2]
base = status("VmRSS:")
o = ort.SessionOptions(); o.intra_op_num_threads = 1
if sys.argv[4]:  # `export --fused`: rnnquant's op library (built before the probes run)
    o.register_custom_ops_library(sys.argv[4])
if opt == "no_prepacking":
    o.add_session_config_entry("session.disable_prepacking", "1")
if opt == "ort_format":
    o.add_session_config_entry("session.use_ort_model_bytes_directly", "1")
    o.add_session_config_entry("session.use_ort_model_bytes_for_initializers", "1")
s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
feeds = {i.name: np.array([5]) if i.name == "input_ids" else np.zeros([1, *i.shape[1:]], np.float32) for i in s.get_inputs()}
times = []
for _ in range(int(sys.argv[3])):
    t0 = time.perf_counter(); s.run(None, feeds); times.append(time.perf_counter() - t0)
print(json.dumps({"base": base, "peak": status("VmHWM:"), "steady": status("VmRSS:"), "p50_ms": 1e3 * float(np.median(times[10:]))}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=60)
    args = ap.parse_args()
    model = Path(args.model)
    import onnx

    from rnnquant.exporters.runner import read_metadata
    from rnnquant.kernels import ortops

    library = str(ortops.build()) if read_metadata(model).get("custom_ops") else ""  # a fused graph: no .ort form
    if not library:
        from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

        ort_dir = model.parent / "ort_format"
        convert_onnx_models_to_ort(model, output_dir=ort_dir, optimization_styles=[OptimizationStyle.Fixed])
        ort_file = next(ort_dir.glob(f"{model.stem}*.ort"))

    from rnnquant.exporters.prefill import step_bytes

    inline = model.with_name(f"{model.stem}.inline.onnx")
    onnx.save(onnx.load(str(model)), str(inline))  # loads the external weights, saves them inside
    weights = step_bytes(model)
    runs = {
        "one file, weights inline (earlier layout)": (inline, "default", {}),
        "one file + MALLOC_MMAP_THRESHOLD_": (inline, "default", {"MALLOC_MMAP_THRESHOLD_": "131072"}),
        "ORT defaults (external weights)": (model, "default", {}),
        "session.disable_prepacking": (model, "no_prepacking", {}),
        "external + MALLOC_MMAP_THRESHOLD_ (OrtLM)": (model, "default", {"MALLOC_MMAP_THRESHOLD_": "131072"}),
    }
    if not library:
        runs |= {".ort, model bytes used directly": (ort_file, "ort_format", {}),
                 ".ort + MALLOC_MMAP_THRESHOLD_": (ort_file, "ort_format", {"MALLOC_MMAP_THRESHOLD_": "131072"})}
    got = {k: [] for k in runs}
    for _ in range(args.rounds):
        for name, (path, opt, env) in runs.items():
            out = subprocess.run([sys.executable, "-c", PROBE, str(path), opt, str(args.steps), library], capture_output=True, text=True,
                                 env=os.environ | env, check=True)
            got[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    rows = []
    for name, rs in got.items():
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        rows.append({"option": name, **med, "peak_over_weights": med["peak"] / weights, "steady_over_weights": med["steady"] / weights,
                     "session_steady_over_weights": (med["steady"] - med["base"]) / weights})
        r = rows[-1]
        print(f"{name:42} base {r['base'] / 2**20:5.0f} MiB  peak {r['peak'] / 2**20:5.0f} MiB ({r['peak_over_weights']:.2f}x)  "
              f"steady {r['steady'] / 2**20:5.0f} MiB ({r['steady_over_weights']:.2f}x; session {r['session_steady_over_weights']:.2f}x)  "
              f"p50 {r['p50_ms']:.2f} ms", flush=True)
    out = Path(__file__).parent / "results" / "session_memory.json"
    out.write_text(json.dumps({"model": str(model), "weights_bytes": weights, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
