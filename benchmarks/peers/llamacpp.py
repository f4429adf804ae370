"""llama.cpp as a peer: convert a Mamba checkpoint to GGUF, quantize it, time token generation.

Needs the build from ``benchmarks/peers/llamacpp.sh`` (cached in $RNNQUANT_PEERS, default
~/.cache/rnnquant-peers); without it every function returns None and says why.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PEERS = Path(os.environ.get("RNNQUANT_PEERS", Path.home() / ".cache" / "rnnquant-peers"))
LLAMA = PEERS / "llama.cpp"
BIN = LLAMA / "build" / "bin"


def available() -> bool:
    ok = (BIN / "llama-bench").is_file() and (BIN / "llama-quantize").is_file()
    if not ok:
        print(f"llama.cpp row skipped: no build in {BIN} (run benchmarks/peers/llamacpp.sh)", flush=True)
    return ok


def to_gguf(model, work: Path, quants=("Q8_0", "Q4_0")) -> dict[str, Path]:
    """Save ``model`` in the Hugging Face layout, convert to f32 GGUF, quantize. GGUF files stay in ``work``."""
    from rnnquant.io import save_checkpoint

    hf = work / "hf"
    save_checkpoint(model, hf)
    cfg = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps(cfg | {"architectures": ["MambaForCausalLM"]}))
    f32 = work / "model-f32.gguf"  # no tokenizer files: the converter uses its bundled GPT-NeoX vocabulary
    subprocess.run([sys.executable, str(LLAMA / "convert_hf_to_gguf.py"), str(hf), "--outtype", "f32", "--outfile", str(f32)],
                   check=True, capture_output=True)
    out = {"F32": f32}
    for q in quants:
        out[q] = work / f"model-{q}.gguf"
        subprocess.run([str(BIN / "llama-quantize"), str(f32), str(out[q]), q], check=True, capture_output=True)
    return out


def decode_ms(gguf: Path, threads: int, tokens: int = 64) -> float:
    """Per-token generation latency from ``llama-bench -p 0 -n N`` (token generation only)."""
    r = subprocess.run([str(BIN / "llama-bench"), "-m", str(gguf), "-p", "0", "-n", str(tokens), "-t", str(threads), "-o", "json"],
                       check=True, capture_output=True, text=True)
    (test,) = [t for t in json.loads(r.stdout) if t.get("n_gen")]
    return 1e3 / test["avg_ts"]
