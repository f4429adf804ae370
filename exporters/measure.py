"""Per-token latency and peak memory of one step graph, measured in a process of its own.

    python -m rnnquant.exporters.measure model.onnx --tokens 256 --threads 1

Prints one JSON object: step latency p50/p90/p99 in ms (batch 1, after warm-up, stepping as
generation does: ``BoundStep``'s pre-bound buffers; ``--no-iobinding``: ``OrtLM.step``), decode tok/s,
peak RSS in bytes (VmHWM of this process: the Python runtime, the session and its weights) and
the baseline RSS before the session was created. Imports no torch.
"""
from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np


def peak_rss_bytes() -> int:
    """VmHWM of this process. (ru_maxrss survives exec on Linux, so a child started by a large
    parent would report the parent's peak.)"""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(path: str, tokens: int, threads: int, warmup: int = 16, prefill: int = 128, iobinding: bool = True) -> dict:
    """``iobinding``: step as generation does (``BoundStep``: pre-bound ping-pong buffers); False:
    ``OrtLM.step`` (a feed dict and new output arrays per token), for an A/B of the two."""
    from rnnquant.exporters.runner import BoundStep, OrtLM

    rss_before = peak_rss_bytes()
    lm = OrtLM(path, threads=threads)
    state, tok, times = lm.init_state(1), 0, []
    bound = BoundStep(lm, state) if iobinding else None
    rng = np.random.default_rng(0)
    for i in range(warmup + tokens):
        t0 = time.perf_counter()
        if bound is not None:
            bound.step(tok)
        else:
            _, state = lm.step(np.array([tok]), state)
        dt = time.perf_counter() - t0
        if i >= warmup:
            times.append(dt)
        tok = int(rng.integers(lm.vocab_size))  # token choice does not change the work
    ms = np.array(times) * 1e3
    prompt = rng.integers(lm.vocab_size, size=(1, prefill))
    lm.prefill(prompt[:, :8], lm.init_state(1), all_logits=False)  # warm-up; timed as generation uses it
    t0 = time.perf_counter()
    lm.prefill(prompt, lm.init_state(1), all_logits=False)
    prefill_s = time.perf_counter() - t0
    return {
        "latency_ms": {"p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)), "p99": float(np.percentile(ms, 99))},
        "decode_tok_s": float(1e3 / ms.mean()),
        "prefill_tok_s": float(prefill / prefill_s),
        "peak_rss_bytes": peak_rss_bytes(),
        "base_rss_bytes": rss_before,
        "tokens": tokens,
        "threads": threads,
        "iobinding": iobinding,
    }


def measure_in_process(path, tokens: int, threads: int, iobinding: bool = True) -> dict:
    """``measure`` in a fresh Python process, so variants' memory and caches don't bleed."""
    import subprocess
    import sys

    from rnnquant.errors import RnnquantError

    cmd = [sys.executable, "-m", "rnnquant.exporters.measure", str(path), "--tokens", str(tokens), "--threads", str(threads),
           *([] if iobinding else ["--no-iobinding"])]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if res.returncode != 0:
        last = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit code {res.returncode}"
        raise RnnquantError(f"{path}: latency measurement failed ({last})")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-iobinding", action="store_true", help="Step through OrtLM.step (a feed dict per token) instead.")
    args = ap.parse_args(argv)
    print(json.dumps(measure(args.model, args.tokens, args.threads, iobinding=not args.no_iobinding)))


if __name__ == "__main__":
    main()
