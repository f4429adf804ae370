"""The vendored corpus: Python 3.11 documentation sources (PSF licence), split by document.

Each document goes to train / valid / test by a hash of its path (92 / 4 / 4 %), so the
split is deterministic and independent of file order. See ``build_corpus.py`` for provenance.
"""
from __future__ import annotations

import hashlib
import json
import lzma
from functools import lru_cache
from pathlib import Path

CORPUS = Path(__file__).parent / "data" / "pydoc311.jsonl.xz"
SPLITS = ("train", "valid", "test")


def split_of(path: str) -> str:
    bucket = int(hashlib.sha256(path.encode()).hexdigest(), 16) % 100
    return "train" if bucket < 92 else "valid" if bucket < 96 else "test"


@lru_cache(maxsize=1)
def documents() -> tuple[dict, ...]:
    with lzma.open(CORPUS, "rt", encoding="utf-8") as f:
        return tuple(json.loads(line) for line in f)


def split_documents(split: str) -> list[str]:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return [d["text"] for d in documents() if split_of(d["path"]) == split]


def split_text(split: str) -> str:
    """The split as one text, documents separated by a blank line."""
    return "\n\n".join(split_documents(split))
