"""The exported model in a browser: ``rnnquant export ... --web`` writes a static generation page
beside the graphs.

    DIR/model.onnx  model.prefill.onnx  model.onnx.data  tokenizer.json   (the export)
    DIR/model.json                                          (the manifest: what the page's runner reads)
    DIR/index.html  app.mjs  rnnlm.mjs                      (the page, from rnnquant/exporters/web/)
    DIR/ort.wasm.min.mjs  ort-wasm-simd-threaded.{mjs,wasm}  (onnxruntime-web's WASM build)
    DIR/tokenizers.min.mjs                                  (@huggingface/tokenizers)
    DIR/world.mjs  world_vocab.json                         (an RWKV World vocabulary's tokenizer, when the model has one)

Nothing is fetched from anywhere but DIR. ``rnnlm.mjs`` is the JavaScript twin of ``OrtLM`` (the
same initial state, prefill windows and greedy rule); the manifest carries what ``OrtLM`` reads
from the graphs' metadata, since onnxruntime-web does not expose ONNX metadata_props.

The JavaScript packages come from the npm lockfile in the repository's ``web/`` folder
(``npm ci --ignore-scripts --prefix web``; ``make test`` does it), or from the ``node_modules``
folder ``RNNQUANT_WEB_ASSETS`` names.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from rnnquant.errors import RnnquantError
from rnnquant.io import atomic_path
from rnnquant.tokenizer import HF_FILE, WorldTokenizer, find_tokenizer

from .prefill import PREFILL_WINDOW, prefill_path, weights_path
from .runner import read_metadata
from .states import state_bytes

PAGE_DIR = Path(__file__).parent / "web"
PAGE_FILES = ("index.html", "app.mjs", "rnnlm.mjs", "world.mjs")
# (package, file in the package) -> name in the page folder
VENDOR_FILES = {
    ("onnxruntime-web", "dist/ort.wasm.min.mjs"): "ort.wasm.min.mjs",
    ("onnxruntime-web", "dist/ort-wasm-simd-threaded.mjs"): "ort-wasm-simd-threaded.mjs",
    ("onnxruntime-web", "dist/ort-wasm-simd-threaded.wasm"): "ort-wasm-simd-threaded.wasm",
    ("@huggingface/tokenizers", "dist/tokenizers.min.mjs"): "tokenizers.min.mjs",
}
MANIFEST = "model.json"
WORLD_JSON = "world_vocab.json"  # an RWKV World vocabulary as [[id, hex bytes], ...], for world.mjs


def node_modules() -> Path:
    """The folder holding the page's npm packages: $RNNQUANT_WEB_ASSETS, else the checkout's web/node_modules."""
    env = os.environ.get("RNNQUANT_WEB_ASSETS")
    folder = Path(env) if env else Path(__file__).resolve().parents[1] / "web" / "node_modules"
    missing = [f"{pkg}/{f}" for pkg, f in VENDOR_FILES if not (folder / pkg / f).is_file()]
    if missing:
        raise RnnquantError(f"--web needs onnxruntime-web and @huggingface/tokenizers ({folder / missing[0]} is missing): "
                            "run `npm ci --ignore-scripts --prefix web` in the rnnquant checkout, or set RNNQUANT_WEB_ASSETS "
                            "to a node_modules folder that has them")
    return folder


def tokenizer_entry(folder: Path) -> dict:
    """How the page tokenizes: the model's tokenizer.json with @huggingface/tokenizers, or an RWKV
    World vocabulary (as world_vocab.json) with world.mjs."""
    f = find_tokenizer(folder)
    if f is None:
        raise RnnquantError(f"{folder}: no tokenizer beside the exported graph")
    return {"kind": "hf", "file": f.name} if f.name == HF_FILE else {"kind": "world", "file": WORLD_JSON}


def manifest(step_path: Path) -> dict:
    """What the JavaScript runner needs, read from the exported graphs' metadata as ``OrtLM`` reads it."""
    step_path = Path(step_path)
    meta = read_metadata(step_path)
    if meta.get("int8_weights") == "int8":  # U8S8 is right on x86 VNNI / AMX kernels; WebAssembly's are not checked
        raise RnnquantError(f"{step_path}: exported with --cpu vnni (for native x86 ONNX Runtime); export with --cpu any for the web")
    pre = prefill_path(step_path)
    pre_meta = read_metadata(pre) if pre.is_file() else None
    states = json.loads(meta["states"])
    weights = weights_path(step_path)
    recipe = json.loads(meta["recipe"]).get("name", "custom") if meta["recipe"] != "float" else "float"
    return {
        "format": "rnnquant-web/1",
        "step": step_path.name,
        "prefill": pre.name if pre_meta else None,
        "weights": weights.name if weights.is_file() else None,  # external data both graphs read
        # a parallel prefill graph is exact for at most prefill_max_tokens per call; a Loop takes any length
        "prefill_window": min(PREFILL_WINDOW, int(pre_meta["prefill_max_tokens"])) if pre_meta and pre_meta.get("prefill") == "parallel" else None,
        "prefill_last_only": bool(pre_meta and pre_meta.get("prefill_logits") == "last"),
        "states": states,
        "state_bytes": state_bytes(states),
        "vocab_size": int(meta["vocab_size"]),
        "eos_token_id": int(meta["eos_token_id"]),
        "architecture": meta["architecture"],
        "recipe": recipe,
        "prune": meta.get("prune", ""),
        "rnnquant_version": meta.get("rnnquant_version", ""),
        "tokenizer": tokenizer_entry(step_path.parent),
        "bytes": {"step": step_path.stat().st_size, "prefill": pre.stat().st_size if pre_meta else 0,
                  "weights": weights.stat().st_size if weights.is_file() else 0},
    }


def _write_world_json(vocab: Path, out: Path) -> None:
    tok = WorldTokenizer.from_file(vocab)
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps([[i, b.hex()] for i, b in sorted(tok.id_to_bytes.items())]))


def write_manifest(step_path: Path) -> Path:
    out = Path(step_path).parent / MANIFEST
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(manifest(step_path), indent=1) + "\n")
    return out


def write_page(step_path: Path) -> Path:
    """Write the page, its runtime files and the manifest beside ``step_path``; return index.html."""
    step_path = Path(step_path)
    if step_path.suffix != ".onnx":
        raise RnnquantError(f"{step_path}: --web needs the .onnx step graph")
    modules = node_modules()
    out = step_path.parent
    if tokenizer_entry(out)["kind"] == "world":
        _write_world_json(find_tokenizer(out), out / WORLD_JSON)
    copies = {modules / pkg / f: out / name for (pkg, f), name in VENDOR_FILES.items()}
    copies |= {PAGE_DIR / name: out / name for name in PAGE_FILES}
    for src, dst in copies.items():
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
    write_manifest(step_path)
    return out / "index.html"
