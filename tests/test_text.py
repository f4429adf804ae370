"""Streaming text reading and prompt encoding (rnnquant.text)."""
import shutil
import subprocess
import sys

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from rnnquant.errors import RnnquantError
from rnnquant.text import encode_prompt, iter_text, token_ids
from rnnquant.zoo import MODELS_DIR
from rnnquant.zoo.corpus import split_text


@pytest.fixture(scope="module")
def zoo_tokenizer():
    return Tokenizer.from_file(str(MODELS_DIR / "tokenizer.json"))


def test_chunked_tokenization_equals_whole_text(tmp_path, zoo_tokenizer):
    text = split_text("test")[:200_000] + "\n\n   indented\n\ttab\nlast line without newline é"
    f = tmp_path / "t.txt"
    f.write_text(text, encoding="utf-8")
    pieces = list(iter_text(f, chunk_bytes=997))  # odd size: cuts land inside multi-byte characters too
    assert len(pieces) > 100 and "".join(pieces) == text
    ids, truncated = token_ids(zoo_tokenizer, f, max_tokens=10**9)
    assert not truncated and ids.tolist() == zoo_tokenizer.encode(text).ids


@pytest.mark.parametrize("chunk", [5, 7, 16, 64])
def test_cuts_never_split_whitespace_runs(tmp_path, zoo_tokenizer, chunk):
    text = "a\n\n..b\n \nc\n\t\td\r\ne\n\n\nf  g\n" * 50
    f = tmp_path / "t.txt"
    f.write_bytes(text.encode())
    assert token_ids(zoo_tokenizer, f, max_tokens=10**9)[0].tolist() == zoo_tokenizer.encode(text).ids


def test_budget_stops_reading(tmp_path, zoo_tokenizer):
    f = tmp_path / "t.txt"
    f.write_text("def f(x):\n    return x\n" * 100_000)
    ids, truncated = token_ids(zoo_tokenizer, f, max_tokens=1000)
    assert truncated and len(ids) == 1000


@pytest.mark.parametrize(
    "content, match",
    [
        (b"ok\n" * 1000 + b"\xff", "not valid UTF-8 \\(byte offset 3000\\)"),
        (b"ok\n" * 1000 + "é".encode()[:1], "truncated character at the end"),
        (b"ok\n" * 1000 + b"\x00", "NUL byte at offset 3000"),
        (b"\n \n\t" * 1000, "empty text"),
    ],
    ids=["bad-byte", "truncated-char", "nul", "whitespace"],
)
def test_errors_name_the_offset_across_chunks(tmp_path, content, match):
    f = tmp_path / "t.txt"
    f.write_bytes(content)
    with pytest.raises(RnnquantError, match=match):
        list(iter_text(f, chunk_bytes=64))


def test_prompt_the_tokenizer_cannot_encode():
    unk = Tokenizer(models.WordLevel({"def": 0, "f": 1, "[UNK]": 2}, unk_token="[UNK]"))
    unk.pre_tokenizer = pre_tokenizers.Whitespace()
    assert encode_prompt(unk, "def f") == [0, 1]
    with pytest.raises(RnnquantError, match="cannot encode 'λ' in the prompt"):
        encode_prompt(unk, "def λ")
    drops = Tokenizer(models.BPE({"a": 0, "b": 1}, []))  # no unk token: unknown characters vanish
    with pytest.raises(RnnquantError, match="cannot encode 'c'"):
        encode_prompt(drops, "abc")
    with pytest.raises(RnnquantError, match="empty after tokenization"):
        encode_prompt(drops, "   ")


@pytest.mark.parametrize("arch", ["lstm"])
def test_one_gigabyte_text_in_bounded_memory(tmp_path, tiny_dir):
    """A 1 GiB calibration text is streamed: peak RSS stays far below the file size."""
    if shutil.disk_usage(tmp_path).free < 3 * 2**30:
        pytest.skip("needs 3 GiB of free disk")
    f = tmp_path / "big.txt"
    block = ("def f(x):\n    return x * 2  # a line of Python\n" * 21000).encode()[: 2**20]
    block = block[: block.rfind(b"\n") + 1].ljust(2**20, b"#")
    with f.open("wb") as out:
        for _ in range(1024):
            out.write(block)
    assert f.stat().st_size == 2**30
    code = (
        "import resource, sys; from rnnquant.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)"
    )

    def peak_rss(text_file, out):
        args = ["calibrate", str(tiny_dir), "--data", str(text_file), "--samples", "4", "--seq-len", "32", "--out", str(out)]
        r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        assert (out / "calib.json").is_file()
        return int(r.stdout.strip().splitlines()[-1]), r.stderr

    small = tmp_path / "small.txt"
    small.write_bytes(block)
    base, _ = peak_rss(small, tmp_path / "calib-small")
    peak, err = peak_rss(f, tmp_path / "calib-big")
    assert "note: using the first 2000000 tokens" in err
    # the 2M-token budget costs 16 MB of ids plus a tokenizer chunk; reading the file whole would cost >= 1 GiB
    print(f"1 GiB text: peak RSS {peak / 2**20:.0f} MiB, 1 MiB text: {base / 2**20:.0f} MiB")
    assert peak - base < 128 * 2**20, f"peak RSS {peak / 2**20:.0f} MiB vs {base / 2**20:.0f} MiB on a 1 MiB text"
