"""Rebuild the vendored corpus from Debian's ``python3.11-doc`` package.

Provenance: the reStructuredText sources of the Python 3.11 documentation
(``/usr/share/doc/python3.11/html/_sources/**/*.rst.txt`` in Debian bookworm's
``python3.11-doc_3.11.2-6+deb12u9``), PSF licence (see ``data/LICENSE``).

    apt-get download python3.11-doc && dpkg -x python3.11-doc_*.deb /tmp/pydoc
    python -m rnnquant.zoo.build_corpus /tmp/pydoc/usr/share/doc/python3.11/html/_sources

Writes ``data/pydoc311.jsonl.xz``: one ``{"path", "text"}`` object per document,
sorted by path so the file is byte-for-byte reproducible.
"""
from __future__ import annotations

import json
import lzma
import sys
from pathlib import Path

OUT = Path(__file__).parent / "data" / "pydoc311.jsonl.xz"


def main(src: str) -> None:
    root = Path(src)
    docs = sorted(root.rglob("*.rst.txt"))
    if not docs:
        sys.exit(f"error: no *.rst.txt under {root}")
    lines = [json.dumps({"path": str(p.relative_to(root)), "text": p.read_text("utf-8")}, ensure_ascii=False) for p in docs]
    OUT.write_bytes(lzma.compress(("\n".join(lines) + "\n").encode(), preset=9 | lzma.PRESET_EXTREME))
    print(f"{len(docs)} documents -> {OUT} ({OUT.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main(sys.argv[1])
