"""Text in, token ids out, in bounded memory and with one-line errors (no torch import: the ONNX
runner uses it too).

A text file is read in chunks of ``CHUNK_BYTES``, validated as it goes (NUL bytes, invalid UTF-8
with the byte offset) and cut only where the byte-level pre-tokenizer splits anyway (after a lone newline
between two non-space characters; a cut inside a run of whitespace would change its tokens), so chunked tokenization gives the same ids as tokenizing the
whole text. Tokenization stops at ``max_tokens``: a 1 GB file costs one chunk of memory, not 1 GB.
"""
from __future__ import annotations

import codecs
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .errors import RnnquantError

CHUNK_BYTES = 1 << 20
MAX_TOKENS = 2_000_000  # default budget: 16 MB of int64 ids; the zoo test split is ~5% of it
_CUT = re.compile(r"(?<=\S)\n(?=\S)")  # a lone newline between two non-space characters


def iter_text(path, chunk_bytes: int = CHUNK_BYTES) -> Iterator[str]:
    """Yield the UTF-8 text of ``path`` in pieces that end where the pre-tokenizer splits anyway."""
    path = Path(path)
    if not path.exists() or path.is_dir():  # not is_file(): pipes such as <(...) are fine
        raise RnnquantError(f"{path}: no such file")
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, carry, seen_text = 0, "", False
    with path.open("rb") as f:
        while data := f.read(chunk_bytes):
            if (nul := data.find(b"\x00")) >= 0:
                raise RnnquantError(f"{path}: binary file (NUL byte at offset {offset + nul}), expected UTF-8 text")
            pending = len(decoder.getstate()[0])
            try:
                text = carry + decoder.decode(data)
            except UnicodeDecodeError as e:
                raise RnnquantError(f"{path}: not valid UTF-8 (byte offset {offset - pending + e.start})") from None
            offset += len(data)
            cut = _last_cut(text, len(carry))
            if cut is None and len(text) < 16 * chunk_bytes:  # no safe cut yet: keep reading
                carry = text
                continue
            cut = len(text) if cut is None else cut
            seen_text = seen_text or bool(text[:cut].strip())
            yield text[:cut]
            carry = text[cut:]
        try:
            carry += decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise RnnquantError(f"{path}: not valid UTF-8 (truncated character at the end)") from None
    if not (seen_text or carry.strip()):
        raise RnnquantError(f"{path}: empty text")
    if carry:
        yield carry


def _last_cut(text: str, start: int) -> int | None:
    """Index just after the last lone newline between two non-space characters."""
    last = None
    for m in _CUT.finditer(text, max(start - 1, 0)):
        last = m.end()
    return last


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Token ids of a prompt; characters the tokenizer maps to its unknown token or silently drops
    are an error (a byte-level BPE encodes everything; WordPiece/WordLevel vocabularies may not)."""
    enc = tokenizer.encode(text)
    unk = getattr(getattr(tokenizer, "model", None), "unk_token", None)  # an RWKV World vocabulary has none
    unk_id = tokenizer.token_to_id(unk) if unk else None
    covered = np.zeros(len(text) + 1, dtype=np.int32)
    for tid, (s, e) in zip(enc.ids, enc.offsets):
        if tid != unk_id:
            covered[s] += 1
            covered[e] -= 1
    covered = np.cumsum(covered)[: len(text)] > 0
    bad = [c for c, ok in zip(text, covered) if not ok and not c.isspace()]
    if bad:
        raise RnnquantError(f"the tokenizer cannot encode {''.join(dict.fromkeys(bad))[:20]!r} in the prompt")
    if not enc.ids:
        raise RnnquantError("the prompt is empty after tokenization")
    return enc.ids


def token_ids(tokenizer, source, max_tokens: int = MAX_TOKENS) -> tuple[np.ndarray, bool]:
    """Ids of a text file (``Path``) or string, at most ``max_tokens`` of them; also says whether
    the text was cut short. Reading stops at the budget."""
    if max_tokens < 2:
        raise RnnquantError(f"--max-tokens must be >= 2, got {max_tokens}")
    pieces = iter_text(source) if isinstance(source, Path) else [source]
    chunks: list[np.ndarray] = []
    n, truncated = 0, False
    for piece in pieces:
        chunks.append(np.asarray(tokenizer.encode(piece).ids, dtype=np.int64))
        n += len(chunks[-1])
        if n >= max_tokens:
            truncated = True
            break
    if n < 2:
        raise RnnquantError("text is too short: it must tokenize to at least 2 tokens")
    return np.concatenate(chunks)[:max_tokens], truncated
