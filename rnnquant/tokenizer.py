"""A model's tokenizer: a Hugging Face ``tokenizer.json``, or the RWKV World vocabulary.

RWKV World models ship ``rwkv_vocab_v20230424.txt`` instead of a ``tokenizer.json``: one token per
line, ``<id> <Python str or bytes literal> <byte length>``, encoded by greedy longest match over the
UTF-8 bytes (BlinkDL's ``TRIE_TOKENIZER``). ``WorldTokenizer`` reimplements that reference exactly
for encoding, reads the literals with ``ast.literal_eval`` (never ``eval``), and offers the small
part of the ``tokenizers.Tokenizer`` API rnnquant uses (``encode(...).ids / .offsets``,
``encode_batch``, ``decode``, ``get_vocab_size``, ``token_to_id``), so every stage, the torch-free
runner included, takes either kind. Numpy and the standard library only: no torch.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

from .errors import RnnquantError

HF_FILE = "tokenizer.json"
WORLD_FILE = "rwkv_vocab_v20230424.txt"
TOKENIZER_FILES = (HF_FILE, WORLD_FILE)  # what a model directory may hold, in order of preference


def find_tokenizer(d: Path) -> Path | None:
    """The tokenizer file of model directory ``d``, or None."""
    return next((d / n for n in TOKENIZER_FILES if (d / n).is_file()), None)


def tokenizer_file(d: Path) -> Path:
    """The tokenizer file of ``d``, or a one-line error naming what was looked for."""
    f = find_tokenizer(Path(d))
    if f is None:
        raise RnnquantError(f"{Path(d) / HF_FILE}: missing tokenizer.json (or an RWKV World {WORLD_FILE})")
    return f


def is_world(f: Path) -> bool:
    return Path(f).name == WORLD_FILE or Path(f).suffix == ".txt"


def stored_name(f: Path) -> str:
    """The name a tokenizer file takes in a model or export directory: its kind's standard name."""
    return WORLD_FILE if is_world(f) else HF_FILE


def load_tokenizer(f: Path, vocab_size: int):
    """The tokenizer in file ``f`` (by its name), checked to fit a model of ``vocab_size``."""
    f = Path(f)
    if not f.is_file():
        raise RnnquantError(f"{f}: missing tokenizer.json (or an RWKV World {WORLD_FILE})")
    if is_world(f):
        tok = WorldTokenizer.from_file(f)
    else:
        from tokenizers import Tokenizer

        try:
            tok = Tokenizer.from_file(str(f))
        except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception on bad files
            raise RnnquantError(f"{f}: corrupt tokenizer ({str(e).splitlines()[0][:120]})") from None
    if tok.get_vocab_size() > vocab_size:
        raise RnnquantError(f"{f}: tokenizer has {tok.get_vocab_size()} tokens but the model's vocab_size is {vocab_size}")
    return tok


@dataclass(frozen=True)
class Encoding:
    ids: list[int]
    offsets: list[tuple[int, int]]  # character span of each token in the text (as tokenizers gives it)


class WorldTokenizer:
    """Greedy longest-match over bytes: at each position the longest vocabulary entry that the
    remaining bytes start with. Id 0 is ``<|endoftext|>`` (not in the file, decodes to nothing)."""

    model = None  # no unknown token: every byte has one when the vocabulary holds all 256 single bytes

    def __init__(self, tokens: dict[int, bytes]):
        self.id_to_bytes = dict(tokens)
        self.bytes_to_id = {b: i for i, b in self.id_to_bytes.items()}
        self.trie: dict = {}  # byte -> child node; key None holds the id of the entry ending here
        for b, i in self.bytes_to_id.items():
            node = self.trie
            for c in b:
                node = node.setdefault(c, {})
            node[None] = i

    @classmethod
    def from_file(cls, f: Path) -> WorldTokenizer:
        tokens: dict[int, bytes] = {}
        try:
            lines = Path(f).read_text("utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise RnnquantError(f"{f}: not UTF-8 text ({e.reason})") from None
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                idx, rest = line.split(" ", 1)
                literal, length = rest.rsplit(" ", 1)
                tok = ast.literal_eval(literal)
                tok = tok.encode("utf-8") if isinstance(tok, str) else tok
                ok = isinstance(tok, bytes) and len(tok) == int(length) and int(idx) > 0 and tok
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                ok = False
            if not ok:
                raise RnnquantError(f"{f}:{n}: not an RWKV World vocabulary line (<id> <str or bytes literal> <byte length>)")
            if int(idx) in tokens or tok in tokens.values():
                raise RnnquantError(f"{f}:{n}: token id {idx} or its bytes appear twice")
            tokens[int(idx)] = tok
        if not tokens:
            raise RnnquantError(f"{f}: empty RWKV World vocabulary")
        return cls(tokens)

    # --- the tokenizers.Tokenizer subset ------------------------------------
    def encode_bytes(self, src: bytes) -> list[int]:
        """The reference's ``encodeBytes``: ids and, per id, its byte span."""
        return [i for i, _ in self._spans(src)]

    def _spans(self, src: bytes) -> list[tuple[int, tuple[int, int]]]:
        out, pos = [], 0
        while pos < len(src):
            node, j, best = self.trie, pos, None
            while j < len(src) and src[j] in node:
                node = node[src[j]]
                j += 1
                if None in node:
                    best = (node[None], j)
            if best is None:
                raise RnnquantError(f"the RWKV World vocabulary has no token for byte 0x{src[pos]:02x}")
            out.append((best[0], (pos, best[1])))
            pos = best[1]
        return out

    def encode(self, text: str, add_special_tokens: bool = True) -> Encoding:
        data = text.encode("utf-8")
        char_at = [0] * (len(data) + 1)  # byte offset -> index of the character it belongs to
        b = 0
        for ci, ch in enumerate(text):
            for _ in range(len(ch.encode("utf-8"))):
                char_at[b] = ci
                b += 1
        char_at[len(data)] = len(text)
        spans = self._spans(data)
        # a token that ends inside a character covers that character (as a byte-level BPE's offsets do)
        offsets = [(char_at[s], char_at[e] if e == len(data) or char_at[e - 1] != char_at[e] else char_at[e] + 1) for _, (s, e) in spans]
        return Encoding([i for i, _ in spans], offsets)

    def encode_batch(self, texts) -> list[Encoding]:
        return [self.encode(t) for t in texts]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """UTF-8 of the ids' bytes; invalid sequences (a character split across a cut) become U+FFFD
        each (the reference returns one U+FFFD for the whole text instead)."""
        return b"".join(self.id_to_bytes.get(int(i), b"") for i in ids).decode("utf-8", errors="replace")

    def get_vocab_size(self) -> int:
        return max(self.id_to_bytes) + 1

    def token_to_id(self, token: str) -> int | None:
        if token == "<|endoftext|>":
            return 0
        return self.bytes_to_id.get(token.encode("utf-8"))
