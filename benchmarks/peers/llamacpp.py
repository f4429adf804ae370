"""llama.cpp as a peer: convert a Mamba or RWKV-7 checkpoint to GGUF, quantize it, time token generation.

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


def _world_vocab(path: Path) -> None:
    """An RWKV World vocabulary of the 256 single bytes: the converter insists on the file and pads the
    rest of the vocabulary; timing token generation does not depend on which tokens exist."""
    lines = []
    for b in range(256):
        tok = bytes([b])
        lit = repr(tok.decode("ascii")) if b < 128 else repr(tok)
        lines.append(f"{b + 1} {lit} 1")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# per layout llama.cpp's convert_hf_to_gguf.py reads: the class name it dispatches on, and the
# tokenizer file it needs beside the weights (Mamba: none, it uses its bundled GPT-NeoX vocabulary)
ARCHITECTURES = {"mamba": ("MambaForCausalLM", None), "mamba2": ("Mamba2ForCausalLM", None), "rwkv7": ("RWKV7ForCausalLM", ("rwkv_vocab_v20230424.txt", _world_vocab))}


def supports(model) -> bool:
    return model.model_type in ARCHITECTURES


def to_gguf(model, work: Path, quants=("Q8_0", "Q4_0", "Q4_0 --pure")) -> dict[str, Path]:
    """Save ``model`` in the Hugging Face layout, convert to f32 GGUF, quantize (a type and
    llama-quantize's flags: ``--pure`` quantizes every tensor to the type, the output and embedding
    too, where the default Q4_0 file keeps the output at Q6_K). GGUF files stay in ``work``."""
    from rnnquant.io import save_checkpoint

    hf = work / "hf"
    save_checkpoint(model, hf)
    cfg = json.loads((hf / "config.json").read_text())
    cls, vocab = ARCHITECTURES[model.model_type]
    (hf / "config.json").write_text(json.dumps(cfg | {"architectures": [cls]}))
    if vocab:
        vocab[1](hf / vocab[0])
    f32 = work / "model-f32.gguf"
    subprocess.run([sys.executable, str(LLAMA / "convert_hf_to_gguf.py"), str(hf), "--outtype", "f32", "--outfile", str(f32)],
                   check=True, capture_output=True)
    out = {"F32": f32}
    for q in quants:
        kind, *flags = q.split()
        out[q] = work / f"model-{'-'.join([kind, *(f.strip('-') for f in flags)])}.gguf"
        subprocess.run([str(BIN / "llama-quantize"), *flags, str(f32), str(out[q]), kind], check=True, capture_output=True)
    return out


def decode_ms(gguf: Path, threads: int, tokens: int = 64) -> float:
    """Per-token generation latency from ``llama-bench -p 0 -n N`` (token generation only)."""
    r = subprocess.run([str(BIN / "llama-bench"), "-m", str(gguf), "-p", "0", "-n", str(tokens), "-t", str(threads), "-o", "json"],
                       check=True, capture_output=True, text=True)
    (test,) = [t for t in json.loads(r.stdout) if t.get("n_gen")]
    return 1e3 / test["avg_ts"]
