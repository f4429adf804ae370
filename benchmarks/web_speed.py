"""Tokens/s of the generation page (onnxruntime-web WASM in headless Chromium) beside `rnnquant run`
(Python ONNX Runtime) on the same exports, same prompt, same machine, interleaved.

    python benchmarks/web_speed.py [--model mamba-pydoc] [--recipes float w8a8-outlier w4a16-gptq] [--tokens 128] [--rounds 2]

Each recipe is exported once with `rnnquant export --web`; the page is served from 127.0.0.1 with
COOP/COEP headers, so it is cross-origin isolated and WASM may use threads (`?threads=K`). Both
sides report the same two rates (`rnnquant run`'s): prefill = prompt tokens / time to the first new
token, decode = (new tokens - 1) / time after it. Needs `make web-deps`. Writes
benchmarks/results/web_speed.json.
"""
from __future__ import annotations

import argparse
import functools
import http.server
import json
import re
import subprocess
import sys
import tempfile
import threading
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "web_speed.json"
PROMPT = "The list data type has some more methods. Here are all of the methods of list objects:"
RUN_RATES = re.compile(r"\[prefill (\d+) tokens: ([\d.]+) tok/s; decode (\d+) tokens: ([\d.]+) tok/s")


class _Isolated(http.server.SimpleHTTPRequestHandler):
    """Cross-origin isolation (SharedArrayBuffer, so WASM threads) for a page of same-origin files."""

    def end_headers(self):
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        super().end_headers()

    def log_message(self, *args):
        pass


def rq(*args) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "rnnquant.cli", *map(str, args)], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr.strip())
    return proc


def python_rates(path: Path, tokens: int, threads: int) -> dict:
    err = rq("run", path, "--prompt", PROMPT, "--max-new-tokens", tokens, "--threads", threads).stderr
    m = RUN_RATES.search(err)
    return {"prefill_tokens": int(m[1]), "prefill_tps": float(m[2]), "decode_tokens": int(m[3]), "decode_tps": float(m[4])}


def page_rates(port: int, tokens: int, threads: int) -> dict:
    url = f"http://127.0.0.1:{port}/index.html?" + urllib.parse.urlencode({"prompt": PROMPT, "tokens": tokens, "threads": threads})
    with tempfile.TemporaryDirectory() as d:
        proc = subprocess.run(["node", str(ROOT / "web" / "test" / "page.mjs"), url, f"{d}/shot.png"], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr.strip()[-500:])
    result = json.loads(proc.stdout.splitlines()[-1])
    if result["title"] != "done" or not result["isolated"]:
        raise SystemExit(f"page: {result['title']} (cross-origin isolated: {result['isolated']})")
    return result["rates"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mamba-pydoc")
    ap.add_argument("--recipes", nargs="+", default=["float", "w8a8-outlier", "w4a16-gptq"])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="rnnquant-web-speed-") as tmp:
        tmp = Path(tmp)
        rq("calibrate", args.model, "--samples", 64, "--out", tmp / "calib")
        for recipe in args.recipes:
            out = tmp / recipe / "model.onnx"
            quantize = [] if recipe == "float" else ["--calib", tmp / "calib", "--recipe", recipe]
            rq("export", args.model, *quantize, "--out", out, "--web")
            server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Isolated, directory=str(out.parent)))
            threading.Thread(target=server.serve_forever, daemon=True).start()
            try:
                for rnd in range(args.rounds):
                    for threads in args.threads:
                        for side, measure in (("page (WASM)", lambda: page_rates(server.server_port, args.tokens, threads)),
                                              ("rnnquant run (Python ORT)", lambda: python_rates(out, args.tokens, threads))):
                            rows.append({"recipe": recipe, "runtime": side, "threads": threads, "round": rnd, **measure()})
                            r = rows[-1]
                            print(f"{recipe:14s} {side:26s} {threads}t round {rnd}: prefill {r['prefill_tps']:8.1f} tok/s, "
                                  f"decode {r['decode_tps']:7.1f} tok/s", flush=True)
            finally:
                server.shutdown()
    args.out.write_text(json.dumps({"model": args.model, "prompt": PROMPT, "tokens": args.tokens, "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
