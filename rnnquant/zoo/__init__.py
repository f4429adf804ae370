"""The built-in zoo: small recurrent LMs trained by ``rnnquant.zoo.train`` on the vendored corpus.

Each entry is a model directory in the Hugging Face layout plus ``metrics.json`` (written by
``python -m rnnquant.zoo.train metrics``): test/valid perplexity and the unigram baseline.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

MODELS_DIR = Path(__file__).parent / "models"
DEFAULT = "mamba-pydoc"


def names() -> list[str]:
    return sorted(p.name for p in MODELS_DIR.iterdir() if (p / "config.json").is_file()) if MODELS_DIR.is_dir() else []


def zoo_path(name: str) -> Path | None:
    return MODELS_DIR / name if name in names() else None


def is_zoo_model(path) -> bool:
    return Path(path).resolve().parent == MODELS_DIR.resolve()


def describe(name: str) -> dict:
    """Name, architecture, parameter count, bytes on disk and recorded perplexities of a zoo entry."""
    from safetensors import safe_open

    d = MODELS_DIR / name
    cfg = json.loads((d / "config.json").read_text())
    with safe_open(str(d / "model.safetensors"), "pt") as f:
        params = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    metrics = json.loads((d / "metrics.json").read_text()) if (d / "metrics.json").is_file() else {}
    return {"name": name, "arch": cfg["model_type"], "params": params, "size_bytes": (d / "model.safetensors").stat().st_size} | metrics

