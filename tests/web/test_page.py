"""`rnnquant export --web`: the generation page, driven in real headless Chromium (Debian's
chromium through playwright-core), served from 127.0.0.1, against `rnnquant run`."""
from __future__ import annotations

import functools
import http.server
import json
import shutil
import threading
import urllib.parse
from pathlib import Path

import pytest
import torch

from rnnquant.exporters.web import PAGE_FILES, VENDOR_FILES
from rnnquant.io import save_checkpoint
from tests.conftest import TOKENIZER, tiny_model
from tests.helpers import assert_one_line_error, run_cli
from tests.web.conftest import run_node

CHROMIUM = "/usr/bin/chromium"
PROMPT = "The list data type has some more methods."
TOKENS = 24


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def chromium() -> str:
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: run `make test` (it installs Debian's chromium)")
    return CHROMIUM


def _open_page(node: str, chromium: str, folder: Path, prompt: str, shot: Path) -> dict:
    """Serve ``folder`` from 127.0.0.1, open its page as ``index.html?prompt=...&tokens=TOKENS`` in
    headless Chromium (web/test/page.mjs) and return what the page showed."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/index.html?" + urllib.parse.urlencode({"prompt": prompt, "tokens": TOKENS})
        return json.loads(run_node(node, "page.mjs", url, shot, chromium)[-1])
    finally:
        server.shutdown()


@pytest.mark.parametrize("recipe", ["float", "w4a16-rtn"])
def test_page_continues_the_prompt_like_rnnquant_run(capsys, tmp_path, node, chromium, recipe):
    out = tmp_path / "page" / "model.onnx"
    code, _, err = run_cli(capsys, "export", "mamba-pydoc", "--out", out, "--web", *([] if recipe == "float" else ["--recipe", recipe]))
    assert code == 0, err
    code, stdout, err = run_cli(capsys, "run", out, "--prompt", PROMPT, "--max-new-tokens", TOKENS)
    assert code == 0 and stdout.startswith(PROMPT), err
    expected = stdout[len(PROMPT) :]  # `rnnquant run` prints the prompt, then the continuation (its timing goes to stderr)
    shot = tmp_path / "page.png"
    result = _open_page(node, chromium, out.parent, PROMPT, shot)
    assert result["title"] == "done", result
    assert result["output"] == expected, result
    assert result["errors"] == [] and result["outside"] == [], result  # nothing fetched from anywhere but the page's folder
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_page_folder_is_self_contained(capsys, tmp_path):
    d = tmp_path / "m"
    save_checkpoint(tiny_model("mamba"), d, tokenizer_path=TOKENIZER)
    out = tmp_path / "page" / "model.onnx"
    assert run_cli(capsys, "export", d, "--out", out, "--web")[0] == 0
    names = {p.name for p in out.parent.iterdir()}
    assert {*PAGE_FILES, *VENDOR_FILES.values(), "model.json", "tokenizer.json", "model.onnx", "model.prefill.onnx", "model.onnx.data"} <= names
    manifest = json.loads((out.parent / "model.json").read_text())
    assert manifest["step"] == "model.onnx" and manifest["prefill"] == "model.prefill.onnx" and manifest["prefill_window"] == 128


def test_web_without_its_packages_is_refused_before_any_work(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("RNNQUANT_WEB_ASSETS", str(tmp_path / "empty"))
    d = tmp_path / "m"
    save_checkpoint(tiny_model("mamba"), d, tokenizer_path=TOKENIZER)
    assert_one_line_error(capsys, "export", d, "--out", tmp_path / "page" / "model.onnx", "--web", match="npm ci --ignore-scripts --prefix web")
    assert not (tmp_path / "page").exists()


def test_page_with_an_rwkv_world_vocabulary(capsys, tmp_path, node, chromium):
    """An RWKV-7 with a World vocabulary (the tokenizer tests' one: multi-byte characters, tokens
    that end inside a character): the page encodes the prompt and decodes the continuation with
    world.mjs exactly as OrtLM does with rnnquant's WorldTokenizer. The random tiny model's
    vocabulary is the World vocabulary's size, so every id it generates decodes to bytes (its
    continuation includes characters cut between tokens: U+FFFD)."""
    from rnnquant.exporters.runner import OrtLM
    from rnnquant.models import build
    from rnnquant.tokenizer import WORLD_FILE
    from tests.conftest import CONTRACT
    from tests.test_tokenizer import vocab_lines

    world = tmp_path / WORLD_FILE
    world.write_text("\n".join(vocab_lines()) + "\n", encoding="utf-8")
    d, out, prompt = tmp_path / "rwkv7-world", tmp_path / "page" / "model.onnx", "中文件 abc 😀 é"
    torch.manual_seed(0)
    model = build(CONTRACT["rwkv7"] | {"vocab_size": len(vocab_lines()) + 1})  # id 0 is <|endoftext|>
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    save_checkpoint(model, d, tokenizer_path=world)
    assert run_cli(capsys, "export", d, "--out", out, "--web")[0] == 0
    lm = OrtLM(out)
    expected = lm.tokenizer.decode(list(lm.generate(lm.encode(prompt), TOKENS)))
    assert len(expected) >= TOKENS // 2, expected  # a real continuation, not ids the vocabulary lacks
    result = _open_page(node, chromium, out.parent, prompt, tmp_path / "page.png")
    assert result["title"] == "done" and result["errors"] == [], result
    assert result["output"] == expected, result
