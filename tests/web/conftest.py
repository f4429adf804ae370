"""The JavaScript side: Node.js and the repository's web/node_modules (``make test`` installs them
with ``npm ci --ignore-scripts --prefix web``)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

WEB = Path(__file__).resolve().parents[2] / "web"
NODE_MODULES = WEB / "node_modules"


@pytest.fixture(scope="session")
def node() -> str:
    exe = shutil.which("node")
    if exe is None or not (NODE_MODULES / "onnxruntime-web").is_dir():
        pytest.fail("the web tests need Node.js and web/node_modules: run `make test` (it runs `npm ci --ignore-scripts --prefix web`)")
    return exe


def run_node(node: str, script: str, *args, timeout: int = 600) -> list[str]:
    """Run one of web/test/*.mjs; its stdout lines (a failed run fails the test with its stderr)."""
    proc = subprocess.run([node, str(WEB / "test" / script), *map(str, args)], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.splitlines()
