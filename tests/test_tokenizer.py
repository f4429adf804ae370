"""The RWKV World tokenizer: the vocabulary file format, greedy longest match over bytes, and its
use everywhere a model's tokenizer is (loading, export, the torch-free runner)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnquant.errors import RnnquantError
from rnnquant.text import encode_prompt
from rnnquant.tokenizer import WORLD_FILE, WorldTokenizer, load_tokenizer

# every single byte (as the real vocabulary has), then multi-byte entries, some of them partial UTF-8
MERGES = ["ab", "abc", "bcd", "def", "  ", "\n\n", "'s", '""', "\\n", "中", "中文", "文件", "😀", "é"]
PARTIAL = [b"\xe4\xb8", b"\xf0\x9f"]  # the first bytes of 中 and of an emoji: a token may end inside a character


def _line(i: int, tok: bytes) -> str:
    try:
        s = tok.decode("utf-8")
        lit = repr(s)
    except UnicodeDecodeError:
        lit = repr(tok)
    return f"{i} {lit} {len(tok)}"


def vocab_lines() -> list[str]:
    toks = [bytes([b]) for b in range(256)] + [m.encode("utf-8") for m in MERGES] + PARTIAL
    return [_line(i + 1, t) for i, t in enumerate(toks)]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    f = tmp_path_factory.mktemp("world") / WORLD_FILE
    f.write_text("\n".join(vocab_lines()) + "\n", encoding="utf-8")
    return f


def _ids(tok, *pieces) -> list[int]:
    return [tok.bytes_to_id[p.encode("utf-8") if isinstance(p, str) else p] for p in pieces]


def test_greedy_longest_match_differs_from_the_best_split(world):
    """'abcd': greedy takes 'abc' then 'd' (2 tokens); 'a' + 'bcd' is just as short, and BPE merges
    would pick by merge rank. The reference is greedy, left to right."""
    tok = load_tokenizer(world, 4096)
    assert tok.encode("abcd").ids == _ids(tok, "abc", "d")
    assert tok.encode("abdef").ids == _ids(tok, "ab", "def")


def test_utf8_and_tokens_that_end_inside_a_character(world):
    tok = WorldTokenizer.from_file(world)
    assert tok.encode("中文件").ids == _ids(tok, "中文", b"\xe4", b"\xbb", b"\xb6")  # no 文件 once 中文 took 文: greedy
    assert tok.encode("中文件").ids != _ids(tok, "中", "文件")
    assert tok.encode("😀😁").ids == _ids(tok, "😀", b"\xf0\x9f", b"\x98", b"\x81")
    assert tok.decode(tok.encode("中文件 😀😁 é\n\n'\"\\").ids) == "中文件 😀😁 é\n\n'\"\\"


def test_offsets_are_character_spans(world):
    tok = WorldTokenizer.from_file(world)
    enc = tok.encode("x😁y")  # the emoji is three tokens: each covers the character
    assert enc.offsets == [(0, 1), (1, 2), (1, 2), (1, 2), (2, 3)]
    assert encode_prompt(tok, "x😁y") == enc.ids


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("abcdef '\"\\\n中文件😀😁éx")), max_size=40))
def test_every_token_is_the_longest_entry_at_its_position(text):
    """The definition of the reference's encodeBytes, checked by brute force; and decode inverts it."""
    tok = WorldTokenizer({int(line.split(" ", 1)[0]): t for line, t in zip(vocab_lines(), _all_tokens())})
    data, pos = text.encode("utf-8"), 0
    for i in tok.encode(text).ids:
        t = tok.id_to_bytes[i]
        assert data.startswith(t, pos)
        assert not any(len(v) > len(t) and data.startswith(v, pos) for v in tok.bytes_to_id)
        pos += len(t)
    assert pos == len(data) and tok.decode(tok.encode(text).ids) == text


def _all_tokens() -> list[bytes]:
    return [bytes([b]) for b in range(256)] + [m.encode("utf-8") for m in MERGES] + PARTIAL


@pytest.mark.parametrize("line", ["1 __import__('os').system('true') 4", "1 'ab' 3", "0 'a' 1", "x 'a' 1", "1 ['a'] 1", "1 'a'"])
def test_a_bad_vocabulary_line_is_one_error_naming_it(tmp_path, line):
    """Literals are read with ast.literal_eval: an expression is refused, never run."""
    f = tmp_path / WORLD_FILE
    f.write_text("\n".join(vocab_lines()[:3] + [line]) + "\n", encoding="utf-8")
    with pytest.raises(RnnquantError, match=f"{WORLD_FILE}:4: not an RWKV World vocabulary line"):
        load_tokenizer(f, 4096)


def test_a_vocabulary_larger_than_the_model_is_refused(world):
    with pytest.raises(RnnquantError, match="the model's vocab_size is 100"):
        load_tokenizer(world, 100)


def test_an_int8_rwkv7_with_a_world_vocabulary_exports_and_runs_without_torch(capsys, tmp_path, world):
    """The Done-when of the RWKV issue at tiny size: the World vocabulary travels from the model
    directory to the export, and the torch-free runner encodes the prompt and decodes with it."""
    import os
    import subprocess
    import sys

    from rnnquant.io import save_checkpoint
    from tests.conftest import tiny_model
    from tests.helpers import run_cli

    d, out, text = tmp_path / "rwkv7-world", tmp_path / "o" / "m.onnx", tmp_path / "calib.txt"
    save_checkpoint(tiny_model("rwkv7"), d, tokenizer_path=world)
    text.write_text("中文件 abcdef 😀 é\n\n" * 200, encoding="utf-8")
    code, _, err = run_cli(capsys, "calibrate", d, "--data", text, "--samples", 4, "--seq-len", 32, "--out", tmp_path / "calib")
    assert code == 0, err
    code, _, err = run_cli(capsys, "export", d, "--recipe", "w8a8-outlier", "--calib", tmp_path / "calib", "--out", out)
    assert code == 0, err
    assert (out.parent / WORLD_FILE).read_bytes() == world.read_bytes() and not (out.parent / "tokenizer.json").exists()
    runner = "import sys; sys.modules['torch'] = None; from rnnquant.cli import main; main(sys.argv[1:])"
    res = subprocess.run([sys.executable, "-c", runner, "run", str(out), "--prompt", "中文 😀", "--max-new-tokens", "8"],
                         capture_output=True, text=True, env=os.environ | {"PYTHONPATH": os.getcwd()}, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("中文 😀") and "decode 8 tokens" in res.stderr
