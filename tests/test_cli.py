"""CLI surface: every command's help shows an example; no network is touched at run time."""
from __future__ import annotations

import socket

import pytest

from rnnquant.cli import cli
from tests.eval.test_perplexity import TEXT
from tests.helpers import assert_one_line_error, run_cli


@pytest.mark.parametrize("command", [None, *sorted(cli.commands)])
def test_help_shows_an_example(capsys, command):
    code, out, _ = run_cli(capsys, *([command] if command else []), "--help")
    assert code == 0 and "Example:" in out and "rnnquant " in out


def test_runs_with_sockets_blocked(capsys, monkeypatch, tmp_path, tiny_dir):
    def refuse(*a, **k):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    data = tmp_path / "d.txt"
    data.write_text(TEXT)
    assert run_cli(capsys, "ppl", tiny_dir, "--data", data, "--window", 32)[0] == 0
    assert run_cli(capsys, "export", tiny_dir, "--out", tmp_path / "m.onnx")[0] == 0
    assert run_cli(capsys, "run", tmp_path / "m.onnx", "--prompt", "import os", "--max-new-tokens", 4)[0] == 0


def test_unknown_command_is_a_usage_error(capsys):
    code, _, err = run_cli(capsys, "frobnicate")
    assert code == 2 and "No such command" in err


@pytest.mark.parametrize(
    "args, match",
    [(["pl"], "No such command 'pl'"), (["export"], "Missing argument 'MODEL'"), (["ppl", "mamba-pydoc", "--data", "."], "is a directory")],
)
def test_usage_errors_are_one_line(capsys, args, match):
    assert_one_line_error(capsys, *args, match=match)


def test_zoo_table_columns_line_up(capsys):
    """Every row's columns start where the header's do, the longest name included."""
    code, out, _ = run_cli(capsys, "zoo")
    assert code == 0
    header, *rows = out.splitlines()
    arch = header.index("arch")
    assert len(rows) >= 8
    for row in rows:
        assert row[arch - 1] == " " and row[arch] != " ", row  # the name column is as wide as the longest name
        assert len(row) == len(header), row  # the numbers are right-aligned under their headings


def test_the_cli_asks_for_huge_pages_before_torch_allocates():
    """torch reads THP_MEM_ALLOC_ENABLE once, at its first allocation: main() can only set it while
    importing the CLI has not imported torch (a module-level torch import here would silently undo it)."""
    import subprocess
    import sys

    code = ("import sys, os; os.environ.pop('THP_MEM_ALLOC_ENABLE', None); import rnnquant.cli as c; assert 'torch' not in sys.modules; "
            "c._large_tensors_in_huge_pages(); import torch; torch.zeros(1 << 20); print(os.environ['THP_MEM_ALLOC_ENABLE'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"
