"""``rnnquant compare``: perplexity, latency, size and memory of every variant against the float model.

Every variant is evaluated on the same token ids and windows. Latency and peak RSS come from
``rnnquant.exporters.measure`` run in a separate process per variant (ORT CPU EP, batch 1), so
numbers don't bleed between variants; the float model and quantized directories are measured
through a temporary ONNX export of their step graph, like the exported variants.

report.json schema (version 1):
    {"schema_version": 1,
     "float":    {name, path, kind, recipe, perplexity, tokens, latency_ms: {p50, p90, p99}, decode_tok_s,
                  prefill_tok_s, size_bytes, peak_rss_bytes, state_bytes,
                  by_position (only with --by-position): [{from, to (null: open-ended), tokens, ppl}]},
     "variants": [the same keys + ppl_delta_pct],
     "machine":  {cpu, cores, threads, python, onnxruntime, torch},
     "data":     {source, tokens, window, sha256}}
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from pathlib import Path

from ..errors import RnnquantError
from ..exporters.measure import measure_in_process
from ..exporters.prefill import step_bytes
from ..exporters.states import state_bytes
from ..io import atomic_path
from ..tokenizer import tokenizer_file

SCHEMA_VERSION = 1


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


def _torch_entry(model, name: str, path: str, ids, window: int, tokens: int, threads: int, tmp: Path, by_position: bool) -> dict:
    from ..eval import perplexity_by_position, perplexity_ids
    from ..exporters.onnx_export import export_step, state_metadata

    ppl = perplexity_ids(model, ids, window=window, progress=True)
    positions = {"by_position": perplexity_by_position(model, ids, progress=True)} if by_position else {}
    onnx_path = export_step(model, tmp / f"{len(list(tmp.iterdir()))}.onnx", tokenizer_file(Path(model.provenance.source)))
    m = measure_in_process(onnx_path, tokens, threads)
    recipe = model.provenance.recipe
    pruned = model.provenance.prune_report or {}
    kind = "quantized-dir" if recipe is not None else "pruned-dir" if pruned else "pytorch"
    return {"name": name, "path": path, "kind": kind, "recipe": _label(recipe.name if recipe else "float", pruned.get("spec", "")), "perplexity": ppl.ppl, "tokens": ppl.tokens,
            "size_bytes": _dir_size(Path(model.provenance.source)), "state_bytes": state_bytes(state_metadata(model))} | _timing(m) | positions


def _label(recipe: str, prune_spec: str) -> str:
    """The recipe column: 'w8a8-outlier', or 'w8a8-outlier + wanda:0.5' for a pruned variant."""
    return f"{recipe} + {prune_spec}" if prune_spec else recipe


def _timing(m: dict) -> dict:
    return {"latency_ms": m["latency_ms"], "decode_tok_s": m["decode_tok_s"], "prefill_tok_s": m["prefill_tok_s"], "peak_rss_bytes": m["peak_rss_bytes"]}


def _onnx_entry(path: Path, ids, window: int, tokens: int, threads: int, by_position: bool) -> dict:
    from ..exporters.runner import OrtLM

    lm = OrtLM(path, threads=threads)
    ppl, n = lm.perplexity(ids.numpy(), window=window, progress=True)
    positions = {"by_position": lm.perplexity_by_position(ids.numpy(), progress=True)} if by_position else {}
    recipe = lm.meta["recipe"]
    return {"name": path.stem, "path": str(path), "kind": path.suffix.lstrip("."),
            "recipe": _label(json.loads(recipe)["name"] if recipe != "float" else "float", lm.meta.get("prune", "")), "perplexity": ppl, "tokens": n,
            "size_bytes": step_bytes(path), "state_bytes": state_bytes(lm.states)} | _timing(measure_in_process(path, tokens, threads)) | positions


def machine(threads: int) -> dict:
    import onnxruntime
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": threads, "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__, "torch": torch.__version__}


def _check_variant(v: str, float_fp: str) -> None:
    """Fail before any measurement: every variant must exist and come from the float model
    (directly, or through pruning and/or quantization)."""
    from ..exporters.runner import read_metadata
    from ..io import PRUNE_REPORT, read_mapping

    p = Path(v)
    if p.suffix in (".onnx", ".ort"):
        meta = read_metadata(p.with_suffix(".onnx") if p.suffix == ".ort" else p)
        fp = meta.get("origin_fingerprint") or meta.get("model_fingerprint", "")
        if fp != float_fp:
            raise RnnquantError(f"{p}: exported from another model (fingerprint {fp[:12]}, float model {float_fp[:12]})")
    elif p.is_dir() and (p / "quant.json").is_file():
        meta = read_mapping(p / "quant.json", "quantized model metadata")
        if (meta.get("origin_fingerprint") or meta.get("source_fingerprint")) != float_fp:
            raise RnnquantError(f"{p}: quantized from another model")
    elif p.is_dir() and (p / PRUNE_REPORT).is_file():
        if read_mapping(p / PRUNE_REPORT, "prune report").get("origin_fingerprint") != float_fp:
            raise RnnquantError(f"{p}: pruned from another model")
    else:
        raise RnnquantError(f"{v}: a variant must be an .onnx/.ort file, a quantized or a pruned model directory")


def compare(float_model, variants: list[str], ids, window: int, tokens: int, threads: int, data_source: str, by_position: bool = False) -> dict:
    """``by_position``: also the perplexity per position bucket of the text read as one stream, the
    state carried across it (``rnnquant.eval.perplexity_by_position``), for every row."""
    from ..artifacts import load

    for v in variants:
        _check_variant(v, float_model.provenance.fingerprint)
    rows = []
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        base = _torch_entry(float_model, "float", float_model.provenance.source, ids, window, tokens, threads, tmp, by_position)
        for v in variants:
            p = Path(v)
            if p.suffix in (".onnx", ".ort"):
                rows.append(_onnx_entry(p, ids, window, tokens, threads, by_position))
            else:
                rows.append(_torch_entry(load(p), p.name, str(p), ids, window, tokens, threads, tmp, by_position))
    for r in rows:
        r["ppl_delta_pct"] = 100 * (r["perplexity"] / base["perplexity"] - 1)
    data = {"source": data_source, "tokens": int(len(ids)), "window": window, "sha256": hashlib.sha256(ids.numpy().tobytes()).hexdigest()}
    return {"schema_version": SCHEMA_VERSION, "float": base, "variants": rows, "machine": machine(threads), "data": data}


def markdown_table(report: dict) -> str:
    head = "| variant | kind | recipe | perplexity | Δ ppl | p50 ms | p90 ms | p99 ms | decode tok/s | size MiB | peak RSS MiB | state KiB |\n"
    head += "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    lines = []
    for r in [report["float"], *report["variants"]]:
        d = f"{r['ppl_delta_pct']:+.2f}%" if "ppl_delta_pct" in r else "—"
        lat = r["latency_ms"]
        lines.append(f"| {r['name']} | {r['kind']} | {r['recipe']} | {r['perplexity']:.3f} | {d} | {lat['p50']:.3f} | {lat['p90']:.3f} | {lat['p99']:.3f} | "
                     f"{r['decode_tok_s']:.0f} | {r['size_bytes'] / 2**20:.2f} | {r['peak_rss_bytes'] / 2**20:.1f} | {r['state_bytes'] / 1024:.1f} |")
    return head + "\n".join(lines) + "\n" + (f"\n{POSITION_CAPTION}\n\n{positions}" if (positions := _position_table(report)) else "")


POSITION_CAPTION = "Perplexity by position: the text read as one stream, the state carried from its first token to its last."


def _html_tables(markdown: str) -> str:
    """Each markdown table of ``markdown`` as an HTML table, other lines as paragraphs."""
    out, rows = [], []
    for line in [*markdown.splitlines(), ""]:
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip("|").split("|")])
            continue
        if rows:
            body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows[2:])
            out.append("<table border=1 cellpadding=4><tr>" + "".join(f"<th>{c}</th>" for c in rows[0]) + f"</tr>{body}</table>")
            rows = []
        if line:
            out.append(f"<p>{line}</p>")
    return "".join(out)


def _position_table(report: dict) -> str:
    """The by-position column group (when compare ran with it): perplexity per position bucket
    of the stream, each variant's change against the float model's bucket."""
    base = report["float"].get("by_position")
    if not base:
        return ""
    spans = [f"{b['from']}-{b['to']}" if b["to"] is not None else f"{b['from']}+" for b in base]
    head = "| variant | " + " | ".join(f"ppl @ {s}" for s in spans) + " |\n|---|" + "---:|" * len(spans) + "\n"
    lines = []
    for r in [report["float"], *report["variants"]]:
        cells = [f"{b['ppl']:.3f}" + ("" if r is report["float"] else f" ({100 * (b['ppl'] / f['ppl'] - 1):+.2f}%)")
                 for b, f in zip(r["by_position"], base, strict=True)]
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def write_report(report: dict, out_dir) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [report["float"], *report["variants"]]
    table = markdown_table(report)
    m, d = report["machine"], report["data"]
    note = (f"Machine: {m['cpu']}, {m['cores']} cores, {m['threads']} ORT thread(s); onnxruntime {m['onnxruntime']}, torch {m['torch']}.  \n"
            f"Data: {d['source']}, {d['tokens']} tokens, window {d['window']}.  \n"
            "Latency: ORT CPU EP step graph, batch 1, each variant in its own process (the float model and quantized "
            "directories through a temporary export). Perplexity of .onnx/.ort variants through ONNX Runtime; of "
            "directories through the PyTorch simulation. Prefill: the exported prefill graph (Mamba: forward_with_state with the chunked parallel scan; LSTM/GRU: an ONNX Loop over the step graph), 128 tokens.\n")
    with atomic_path(out_dir, directory=True) as tmp:
        (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        (tmp / "report.md").write_text(f"# rnnquant compare\n\n{table}\n{note}\n![ppl vs size](ppl_vs_size.png)\n![latency](latency.png)\n")
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in rows:
            ax.scatter(r["size_bytes"] / 2**20, r["perplexity"])
            ax.annotate(r["name"], (r["size_bytes"] / 2**20, r["perplexity"]), fontsize=7)
        ax.set_xlabel("size on disk (MiB)")
        ax.set_ylabel("perplexity")
        ax.set_title("perplexity vs size")
        fig.tight_layout()
        fig.savefig(tmp / "ppl_vs_size.png", dpi=100)
        plt.close(fig)
        fig, ax = plt.subplots(figsize=(6, 0.4 * len(rows) + 1.2))
        p50 = [r["latency_ms"]["p50"] for r in rows]
        p90 = [r["latency_ms"]["p90"] for r in rows]
        ax.barh([r["name"] for r in rows], p50, xerr=[[0] * len(rows), [b - a for a, b in zip(p50, p90)]])
        ax.set_xlabel("per-token step latency, ms (bar p50, whisker p90)")
        fig.tight_layout()
        fig.savefig(tmp / "latency.png", dpi=100)
        plt.close(fig)
        (tmp / "report.html").write_text(
            f"<!doctype html><meta charset=utf-8><title>rnnquant compare</title><h1>rnnquant compare</h1>"
            f"{_html_tables(table)}<p>{note.replace(chr(10), '<br>')}</p>"
            f"<img src=ppl_vs_size.png><img src=latency.png>\n")
