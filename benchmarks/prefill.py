"""The parallel prefill graph (forward_with_state traced: Mamba's chunked scan, Mamba-2's SSD,
RWKV-7's chunked delta rule) against the Loop over the step graph, in one run (docs/RESULTS.md).

    python benchmarks/prefill.py [--models mamba-pydoc mamba-130m rwkv7-pydoc rwkv7@shape] [--lengths 16 128 1024] [--threads 1 2]

A model is a zoo name, ``mamba-130m`` (a random-init Mamba at mamba-130m shape, as in
step_latency.py) or ``ARCH@shape`` (step_latency.py's shape for that architecture). For float,
w8a8-dynamic and w4a16-rtn graphs: prefill tokens/s of both forms and of the parallel form
exported with ``--prefill-logits last`` (what generation needs: no vocabulary projection of the
other positions), batch 1, median of 5 calls after a warm-up call; and max |logits parallel - loop|
and |state parallel - loop| over the prompt (the last call's positions). Writes --out
(benchmarks/results/prefill.json).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from rnnquant.exporters.onnx_export import export_step
from rnnquant.exporters.prefill import build_prefill
from rnnquant.exporters.states import initial_state
from rnnquant.artifacts import load
from rnnquant.quant import PRESETS, quantize
from rnnquant.zoo import MODELS_DIR

sys.path.insert(0, str(Path(__file__).parent))
from step_latency import shape_model  # noqa: E402

OUT = Path(__file__).parent / "results" / "prefill.json"


def _model(name: str):
    if name.endswith("@shape"):
        return shape_model(name.removesuffix("@shape"))
    return shape_model("mamba") if name == "mamba-130m" else load(name)


def _session(path: Path, threads: int):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _max_tokens(path: Path) -> int:
    """The most tokens one call of a prefill graph is exact for (a Loop: any number)."""
    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return int(meta.get("prefill_max_tokens") or 2**62)


def _prefill(sess, ids, state, names, window):
    """The prompt in calls of at most ``window`` tokens, the state carried: (last call's logits, state)."""
    for start in range(0, ids.shape[1], window):
        logits, *state = sess.run(None, {"prompt_ids": ids[:, start : start + window]} | dict(zip(names, state)))
    return logits, state


def _timed(sess, ids, state, names, window, reps: int = 5):
    out = _prefill(sess, ids, state, names, window)  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        _prefill(sess, ids, state, names, window)
        times.append(time.perf_counter() - t0)
    return out, float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["mamba-pydoc", "mamba-130m"])
    ap.add_argument("--variants", nargs="+", default=["float", "w8a8-dynamic", "w4a16-rtn"])
    ap.add_argument("--lengths", type=int, nargs="+", default=[16, 128, 1024])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as td:
        for name in args.models:
            model = _model(name)
            vocab = model.vocab_size
            for variant in args.variants:
                q = model if variant == "float" else quantize(model, PRESETS[variant])
                step = export_step(q, Path(td) / f"{name}-{variant}.onnx", MODELS_DIR / "tokenizer.json")
                last = export_step(q, Path(td) / "last" / f"{name}-{variant}.onnx", MODELS_DIR / "tokenizer.json", prefill_logits="last")
                loop = step.with_suffix(".loop.onnx")
                onnx.save(build_prefill(onnx.load(str(step))), str(loop))
                states = json.loads({p.key: p.value for p in onnx.load(str(step), load_external_data=False).metadata_props}["states"])
                names = [s["name"] for s in states]
                window = _max_tokens(step.with_suffix(".prefill.onnx"))  # a parallel graph's calls: at most this long
                for threads in args.threads:
                    parallel_s, loop_s = _session(step.with_suffix(".prefill.onnx"), threads), _session(loop, threads)
                    last_s = _session(last.with_suffix(".prefill.onnx"), threads)
                    for length in args.lengths:
                        ids = np.random.default_rng(length).integers(vocab, size=(1, length))
                        state = initial_state(states, 1)
                        (lp, sp), t_par = _timed(parallel_s, ids, state, names, window)
                        (ll, sl), t_loop = _timed(loop_s, ids, state, names, 2**62)
                        _, t_last = _timed(last_s, ids, state, names, window)
                        lp, ll = lp[:, -min(window, length):], ll[:, -min(window, length):]  # the last call's positions
                        row = {"model": name, "variant": variant, "threads": threads, "tokens": length, "parallel_window": min(window, length),
                               "parallel_tok_s": length / t_par, "loop_tok_s": length / t_loop, "speedup": t_loop / t_par,
                               "parallel_last_tok_s": length / t_last,
                               "max_logit_diff": float(np.abs(lp - ll).max()),
                               "max_state_diff": max(float(np.abs(a - b).max()) for a, b in zip(sp, sl))}
                        rows.append(row)
                        print(f"{name:11s} {variant:13s} {threads}t {length:5d} tok: parallel {row['parallel_tok_s']:8.0f} tok/s  "
                              f"loop {row['loop_tok_s']:8.0f} tok/s  x{row['speedup']:.2f}  last-only {row['parallel_last_tok_s']:8.0f} tok/s  "
                              f"|dlogits| {row['max_logit_diff']:.2e}  "
                              f"|dstate| {row['max_state_diff']:.2e}", flush=True)
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows}, indent=1))


if __name__ == "__main__":
    main()
