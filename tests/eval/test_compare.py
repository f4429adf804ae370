"""`rnnquant compare` on tiny models writes a schema-valid report with finite values."""
from __future__ import annotations

import json
import math

from rnnquant.io import save_checkpoint
from rnnquant.artifacts import load
from rnnquant.quant import PRESETS, quantize, save_quantized
from tests.conftest import TOKENIZER, tiny_model
from tests.eval.test_perplexity import TEXT
from tests.helpers import assert_one_line_error, run_cli

KEYS = {"name", "path", "recipe", "perplexity", "latency_ms", "prefill_tok_s", "size_bytes", "peak_rss_bytes", "state_bytes"}


def test_compare_report(capsys, tmp_path):
    d = tmp_path / "m"
    save_checkpoint(tiny_model("lstm"), d, tokenizer_path=TOKENIZER)
    data = tmp_path / "data.txt"
    data.write_text(TEXT)
    assert run_cli(capsys, "export", d, "--out", tmp_path / "fp32.onnx")[0] == 0
    assert run_cli(capsys, "export", d, "--recipe", "w8a8-dynamic", "--out", tmp_path / "w8.onnx")[0] == 0
    save_quantized(quantize(load(d), PRESETS["w4a16-rtn"]), tmp_path / "w4", TOKENIZER)
    out = tmp_path / "report"
    code, stdout, err = run_cli(capsys, "compare", "--float", d, tmp_path / "fp32.onnx", tmp_path / "w8.onnx", tmp_path / "w4",
                                "--data", data, "--window", 64, "--tokens", 20, "--out", out)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["schema_version"] == 1 and set(report) == {"schema_version", "float", "variants", "machine", "data"}
    assert len(report["variants"]) == 3
    for r in [report["float"], *report["variants"]]:
        assert KEYS <= set(r)
        for v in (r["perplexity"], r["prefill_tok_s"], *r["latency_ms"].values()):
            assert math.isfinite(v) and v > 0
        assert r["size_bytes"] > 0 and r["peak_rss_bytes"] > 0 and r["state_bytes"] == 2 * 2 * 32 * 4
    fp32 = report["variants"][0]
    assert abs(fp32["ppl_delta_pct"]) < 1e-3  # float vs float
    assert report["variants"][2]["size_bytes"] < report["float"]["size_bytes"] / 3
    assert {p.name for p in out.iterdir()} >= {"report.json", "report.md", "report.html", "ppl_vs_size.png", "latency.png"}
    assert "| float |" in stdout


def test_compare_by_position_reports_every_variants_buckets(capsys, tmp_path):
    d = tmp_path / "m"
    save_checkpoint(tiny_model("gru"), d, tokenizer_path=TOKENIZER)
    data = tmp_path / "data.txt"
    data.write_text(TEXT)
    assert run_cli(capsys, "export", d, "--recipe", "w8a8-dynamic", "--out", tmp_path / "w8.onnx")[0] == 0
    save_quantized(quantize(load(d), PRESETS["w4a16-rtn"]), tmp_path / "w4", TOKENIZER)
    out = tmp_path / "report"
    code, stdout, err = run_cli(capsys, "compare", "--float", d, tmp_path / "w8.onnx", tmp_path / "w4", "--data", data,
                                "--tokens", 8, "--by-position", "--out", out)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    rows = [report["float"], *report["variants"]]
    n = report["data"]["tokens"] - 1  # every token but the first is predicted once
    for r in rows:
        assert sum(b["tokens"] for b in r["by_position"]) == n
        assert [b["from"] for b in r["by_position"]] == [b["from"] for b in report["float"]["by_position"]]
    assert "ppl @ 0-256" in stdout and sum(line.startswith("| float |") for line in stdout.splitlines()) == 2
    assert (out / "report.html").read_text().count("<table") == 2


def test_compare_refuses_other_models_variant(capsys, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    save_checkpoint(tiny_model("gru", seed=0), a, tokenizer_path=TOKENIZER)
    save_checkpoint(tiny_model("gru", seed=1), b, tokenizer_path=TOKENIZER)
    assert run_cli(capsys, "export", b, "--out", tmp_path / "b.onnx")[0] == 0
    data = tmp_path / "data.txt"
    data.write_text(TEXT)
    assert_one_line_error(capsys, "compare", "--float", a, tmp_path / "b.onnx", "--data", data, "--out", tmp_path / "r", match="exported from another model")
    assert not (tmp_path / "r").exists()


def test_compare_takes_pruned_variants(capsys, tmp_path):
    """A pruned graph or directory is a variant of the float model it was pruned from (issue #8:
    pruned models get their ORT latency through `compare`); one pruned from another model is not."""
    d, other = tmp_path / "m", tmp_path / "o"
    save_checkpoint(tiny_model("lstm"), d, tokenizer_path=TOKENIZER)
    save_checkpoint(tiny_model("lstm", seed=1), other, tokenizer_path=TOKENIZER)
    data = tmp_path / "data.txt"
    data.write_text(TEXT)
    for src, out in ((d, "p"), (other, "op")):
        assert run_cli(capsys, "prune", src, "--method", "magnitude", "--sparsity", 0.5, "--out", tmp_path / out)[0] == 0
    assert run_cli(capsys, "export", tmp_path / "p", "--out", tmp_path / "p.onnx")[0] == 0  # a pruned dir, exported later
    assert run_cli(capsys, "calibrate", d, "--data", data, "--samples", 4, "--seq-len", 64, "--out", tmp_path / "c")[0] == 0
    code, _, err = run_cli(capsys, "export", d, "--prune", "channels:0.25", "--recipe", "w8a8-dynamic", "--calib", tmp_path / "c",
                           "--data", data, "--samples", 4, "--seq-len", 64, "--out", tmp_path / "ch.onnx")
    assert code == 0, err
    out = tmp_path / "report"
    code, stdout, err = run_cli(capsys, "compare", "--float", d, tmp_path / "p", tmp_path / "p.onnx", tmp_path / "ch.onnx",
                                "--data", data, "--window", 64, "--tokens", 20, "--out", out)
    assert code == 0, err
    rows = json.loads((out / "report.json").read_text())["variants"]
    assert [(r["kind"], r["recipe"]) for r in rows] == [("pruned-dir", "float + magnitude:0.5"), ("onnx", "float + magnitude:0.5"),
                                                        ("onnx", "w8a8-dynamic + channels:0.25")]
    assert abs(rows[0]["perplexity"] / rows[1]["perplexity"] - 1) < 1e-4  # the pruned dir and its export agree
    assert rows[2]["size_bytes"] < rows[1]["size_bytes"]  # structural + int8
    assert_one_line_error(capsys, "compare", "--float", d, tmp_path / "op", "--data", data, "--out", tmp_path / "r", match="pruned from another model")
