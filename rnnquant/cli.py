"""The ``rnnquant`` command line. Every user error ends in one line on stderr and exit code 2."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .errors import RnnquantError
from .tokenizer import stored_name, tokenizer_file


_ALLOW_PICKLE = False


def _model(path_or_name):
    from .artifacts import load

    return load(path_or_name, allow_pickle=_ALLOW_PICKLE)


def _ids(model, data, split: str, max_tokens: int | None = None):
    """Token ids of --data, or for zoo models of the corpus split (train for calibration, test for
    evaluation); read in bounded memory, at most ``max_tokens`` of them."""
    import torch

    from .text import MAX_TOKENS, token_ids
    from .zoo import is_zoo_model
    from .zoo.corpus import split_text

    if data is not None:
        source = Path(data)
    elif is_zoo_model(model.provenance.origin_path):  # a pruned or quantized dir remembers its float origin
        source = split_text(split)
    else:
        raise RnnquantError("--data FILE is required for models outside the zoo")
    # the budget guards streamed files; the shipped zoo splits are read whole unless --max-tokens says otherwise
    ids, truncated = token_ids(model.tokenizer, source, max_tokens or (MAX_TOKENS if data is not None else 10**12))
    if truncated:
        click.echo(f"note: using the first {len(ids)} tokens of {data or 'the ' + split + ' split'} (raise --max-tokens for more)", err=True)
    return torch.from_numpy(ids)


def _file_sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _text_of(data, calib):
    """--data, or else the text file the --calib directory was calibrated on (recorded with its
    sha256 by `rnnquant calibrate --data`): the calibrate -> quantize/export/prune flow names it once."""
    if data is not None or calib is None:
        return data
    from .calibrate.artifact import META
    from .io import read_mapping

    meta_file = Path(calib) / META
    text = read_mapping(meta_file, "calibration metadata").get("data") if meta_file.is_file() else None
    if not isinstance(text, dict) or not isinstance(text.get("path"), str):
        return None  # a zoo calibration, or one made before the text was recorded: the zoo default applies
    path = Path(text["path"])
    if not path.is_file():
        raise RnnquantError(f"{calib}: its calibration text {path} is gone; pass --data FILE")
    if _file_sha256(path) != text.get("sha256"):
        raise RnnquantError(f"{calib}: its calibration text {path} changed since `rnnquant calibrate`; pass --data FILE or recalibrate")
    return str(path)


def _calibration(calib, model):
    if calib is None:
        return None
    from .calibrate import load_calibration

    return load_calibration(calib, model)


def _text(model, data, samples, seq_len):
    from .pipeline import TextSource

    return TextSource(lambda: _ids(model, data, "train"), samples, seq_len)


def _pruned(m, cfg, calib, data, samples, seq_len):
    from .pipeline import pruned

    return pruned(m, cfg, _calibration(calib, m), _text(m, data, samples, seq_len), inplace=True, progress=True)


def _quantized(m, recipe, calib, data, samples, seq_len, prune_spec=None):
    """Optionally prune, then quantize (rnnquant.pipeline.prepare); prints the pruning report and
    the sparsity that survives quantization."""
    from .pipeline import prepare
    from .prune import parse_spec
    from .quant import load_recipe
    from .quant.apply import require_calibration

    r = load_recipe(recipe)
    require_calibration(r, calib)
    qm = prepare(m, recipe=r, prune=parse_spec(prune_spec) if prune_spec else None, calib=_calibration(calib, m),
                 text=_text(m, data, samples, seq_len), on_pruned=_echo_prune, inplace=True, progress=True)
    report = qm.provenance.prune_report  # the pruned model's, carried through quantization
    if prune_spec and report["masked_sparsity_pct"] > 0:
        from .prune.apply import masked_sparsity

        pct = masked_sparsity(qm, list(report["masked_sparsity_pct_per_linear"]))[0]
        click.echo(f"after {r.name}: masked sparsity {pct:.1f}% of pruned Linears"
                   + (" (Hadamard-rotated Linears are stored rotated, so dense)" if r.hadamard else ""))
    return qm


def _batches(model, data, samples, seq_len):
    return _text(model, data, samples, seq_len).batches()


_max_tokens = click.option(
    "--max-tokens", type=int, default=None, help="Read at most this many tokens of the text (default 2,000,000); the file is streamed."
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rnnquant")
@click.option("--allow-pickle", is_flag=True, help="Accept pickle checkpoints (pytorch_model.bin), loaded with torch.load(weights_only=True).")
def cli(allow_pickle):
    """Quantize, prune and export recurrent language models for O(1)-per-token inference.

    \b
    Example:
      rnnquant zoo
      rnnquant ppl mamba-pydoc
      rnnquant generate mamba-pydoc --prompt "import os"
    """
    global _ALLOW_PICKLE
    _ALLOW_PICKLE = allow_pickle


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def zoo(as_json):
    """List the built-in models with parameters, size and test perplexity.

    \b
    Example:
      rnnquant zoo
    """
    from .zoo import describe, names

    rows = [describe(n) for n in names()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    wn, wa = max(len("name"), *(len(r["name"]) for r in rows)), max(len("arch"), *(len(r["arch"]) for r in rows))  # columns fit the longest
    click.echo(f"{'name':<{wn}} {'arch':<{wa}} {'params':>8} {'size':>9} {'test ppl':>9} {'unigram ppl':>12}")
    for r in rows:
        ppl = f"{r['test_ppl']:.2f}" if r.get("test_ppl") else "-"
        uni = f"{r['unigram_test_ppl']:.1f}" if r.get("unigram_test_ppl") else "-"
        click.echo(f"{r['name']:<{wn}} {r['arch']:<{wa}} {r['params'] / 1e6:>7.2f}M {r['size_bytes'] / 2**20:>7.1f}MB {ppl:>9} {uni:>12}")


@cli.command()
@click.argument("src", type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output model directory (written atomically).")
@click.option("--tokenizer", type=click.Path(dir_okay=False), help="tokenizer.json or RWKV World vocabulary (.txt) to copy (default: the one beside SRC).")
@click.option("--type", "rnn_type", type=click.Choice(["lstm", "gru"]), help="Check the RNN type (default: from the shapes).")
@click.option("--embedding", help="Name of the embedding (default: the bias-free [V, E] weight feeding layer 0).")
@click.option("--rnn", help="Module prefix of the nn.LSTM/nn.GRU (default: the only one, or a numbered list of one-layer RNNs).")
@click.option("--head", help="Name of the output Linear (default: the [V, H] weight after the RNN; the embedding's name for a tied head).")
@click.option("--force", is_flag=True, help="Overwrite an existing output directory.")
def convert(src, out, tokenizer, rnn_type, embedding, rnn, head, force):
    """Convert a foreign checkpoint (a torch.nn.LSTM/GRU language model's state_dict) into a model directory.

    SRC is a .safetensors or .pt/.pth/.bin file (loaded with torch.load(weights_only=True): a plain
    tensor dict, or a dict holding one), or a directory with one. Prints the mapping it used.

    \b
    Example:
      rnnquant convert model.pt --tokenizer tokenizer.json --out my-lstm/
      rnnquant convert ckpt/ --rnn encoder.rnn --head decoder --out my-lstm/
      rnnquant ppl my-lstm/ --data valid.txt
    """
    from .convert import convert as run_convert

    result = run_convert(src, out, tokenizer, force=force, embedding=embedding, rnn=rnn, head=head, rnn_type=rnn_type)
    for line in result.mapping:
        click.echo(line)
    click.echo(f"wrote {Path(out)}/ ({result.config['model_type']}, {sum(t.numel() for t in result.tensors.values()) / 1e6:.2f}M parameters)")


@cli.command()
@click.argument("model")
@click.option("--data", type=click.Path(dir_okay=False), help="UTF-8 text file (default for zoo models: the corpus test split).")
@click.option("--window", default=512, show_default=True, help="Tokens per window; each window starts from a fresh state.")
@click.option("--mode", type=click.Choice(["forward", "step"]), default="forward", show_default=True, help="Parallel forward or the O(1) step form.")
@click.option("--batch-size", default=8, show_default=True)
@click.option("--by-position", is_flag=True, help="One stream with the state carried across the whole text: perplexity per position "
              "bucket (0-256, 256-1k, 1k-4k, 4k-16k, 16k+), to see error accumulate in the state.")
@_max_tokens
def ppl(model, data, window, mode, batch_size, by_position, max_tokens):
    """Token-level perplexity of MODEL on a text.

    \b
    Example:
      rnnquant ppl mamba-pydoc
      rnnquant ppl ./my-mamba --data valid.txt --window 1024
      rnnquant ppl mamba-w8/ --by-position
    """
    from .eval import perplexity_by_position, perplexity_ids

    m = _model(model)
    if by_position:
        for b in perplexity_by_position(m, _ids(m, data, "test", max_tokens), progress=True):
            span = f"{b['from']}-{b['to']}" if b["to"] is not None else f"{b['from']}+"
            click.echo(f"positions {span:>12}: perplexity {b['ppl']:.4f} over {b['tokens']} tokens")
        return
    r = perplexity_ids(m, _ids(m, data, "test", max_tokens), window=window, batch_size=batch_size, mode=mode, progress=True)
    click.echo(f"perplexity {r.ppl:.4f} over {r.tokens} tokens (window {window}, {mode})")


@cli.command()
@click.argument("model")
@click.option("--data", type=click.Path(dir_okay=False), help="UTF-8 calibration text (default for zoo models: the corpus train split).")
@click.option("--samples", default=128, show_default=True, help="Number of calibration sequences.")
@click.option("--seq-len", default=512, show_default=True, help="Tokens per sequence.")
@click.option("--batch-size", default=8, show_default=True)
@click.option("--outlier-k", default=6.0, show_default=True, help="Outlier: channel absmax > K x the point's median absmax.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory (written atomically).")
@click.option("--force", is_flag=True, help="Overwrite an existing output directory.")
@_max_tokens
def calibrate(model, data, samples, seq_len, batch_size, outlier_k, out, force, max_tokens):
    """Record per-channel activation statistics and find the outlier channels.

    Writes OUT/calib.safetensors, OUT/calib.json, OUT/report.md and PNG plots.

    \b
    Example:
      rnnquant calibrate mamba-pydoc --out calib/
      rnnquant calibrate ./my-mamba --data calib.txt --samples 64 --seq-len 256 --out calib/
    """
    from .calibrate import CalibConfig, calibrate as run_calibration, save_calibration

    if Path(out).exists() and not force:
        raise RnnquantError(f"{out} already exists (use --force to overwrite)")
    for name, v in (("--samples", samples), ("--seq-len", seq_len), ("--batch-size", batch_size)):
        if v < 1:
            raise RnnquantError(f"{name} must be >= 1, got {v}")
    m = _model(model)
    ids = _ids(m, data, "train", max_tokens)
    cfg = CalibConfig(samples=samples, seq_len=seq_len, batch_size=batch_size, outlier_k=outlier_k)
    calib = run_calibration(m, ids, cfg, progress=True)
    if data is not None:  # quantize/export/prune --calib OUT reuse it, checked against this fingerprint
        calib.meta["data"] = {"path": str(Path(data).resolve()), "sha256": _file_sha256(Path(data))}
    save_calibration(calib, out, force=force)
    worst = sorted(calib.points.items(), key=lambda kv: -kv[1]["outliers"]["max_median_ratio"])[:5]
    n_out = sum(len(p["outliers"]["absmax"]) for p in calib.points.values())
    click.echo(f"calibrated on {calib.meta['tokens']} tokens: {len(calib.points)} points, {n_out} outlier channels (absmax > {outlier_k}x median)")
    for name, p in worst:
        click.echo(f"  {name:<45} max/median {p['outliers']['max_median_ratio']:7.1f}  outliers {len(p['outliers']['absmax'])}")
    click.echo(f"wrote {Path(out)}/ (calib.safetensors, calib.json, report.md)")


@cli.command()
@click.argument("model")
@click.option("--recipe", default="w8a8-outlier", show_default=True, help="Preset name or a recipe .json/.yaml file.")
@click.option("--calib", type=click.Path(file_okay=False), help="Calibration directory from `rnnquant calibrate` (needed by static/outlier-aware recipes).")
@click.option("--data", type=click.Path(dir_okay=False), help="Text for static scales and GPTQ (default: the text --calib was made on; zoo models: the train split).")
@click.option("--samples", default=32, show_default=True, help="Sequences for static scales / GPTQ Hessians.")
@click.option("--seq-len", default=256, show_default=True)
@click.option("--prune", "prune_spec", help="Prune first: wanda:0.5, wanda:0.5:owl, sparsegpt:2:4, channels:0.25, layers:1, or a .json/.yaml prune config.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory (written atomically).")
@click.option("--force", is_flag=True, help="Overwrite an existing output directory.")
def quantize(model, recipe, calib, data, samples, seq_len, prune_spec, out, force):
    """Apply a quantization recipe and write the integer model (evaluate it with `rnnquant ppl`).

    \b
    Presets: w8a8-naive w8a8-dynamic w8a8-smooth w8a8-hadamard w8a8-outlier (default)
             w4a16-rtn w4a16-gptq w4a8
    \b
    Example:
      rnnquant calibrate mamba-pydoc --out calib/
      rnnquant quantize mamba-pydoc --calib calib/ --recipe w8a8-outlier --out mamba-w8a8/
      rnnquant ppl mamba-w8a8/
    """
    from .quant import save_quantized, size_bytes

    if Path(out).exists() and not force:
        raise RnnquantError(f"{out} already exists (use --force to overwrite)")
    m = _model(model)
    float_bytes = size_bytes(m)  # now: quantization works in place, m is the quantized model afterwards
    qm = _quantized(m, recipe, calib, _text_of(data, calib), samples, seq_len, prune_spec)
    save_quantized(qm, out, tokenizer_file(Path(m.provenance.source)), force=force)
    click.echo(f"{qm.provenance.recipe.name}: {float_bytes / 2**20:.2f} MiB float -> {size_bytes(qm) / 2**20:.2f} MiB; wrote {Path(out)}/")


@cli.command()
@click.argument("model")
@click.option("--method", type=click.Choice(["magnitude", "wanda", "sparsegpt", "channels", "state", "heads", "layers"]),
              help="Pruning method (or --config FILE); heads: Mamba-2 and RWKV-7 attention heads.")
@click.option("--sparsity", type=float, default=0.5, show_default=True, help="Fraction removed (unstructured: the mean over pruned Linears; channels).")
@click.option("--nm", help="N:M pattern instead of --sparsity, e.g. 2:4.")
@click.option("--layers", "n_layers", type=int, default=1, show_default=True, help="Layers removed (--method layers).")
@click.option("--profile", type=click.Choice(["uniform", "owl"]), default="uniform", show_default=True,
              help="Per-layer sparsity: the same everywhere, or OWL (layers with more activation outliers pruned less).")
@click.option("--owl-m", type=float, default=5.0, show_default=True, help="OWL: a score is an outlier above M x its layer's mean.")
@click.option("--owl-lambda", type=float, default=0.08, show_default=True, help="OWL: layer sparsities spread over 2 x lambda around --sparsity.")
@click.option("--layer-sparsity", "layer_sparsity", multiple=True, metavar="PATTERN=S",
              help="Override the sparsity of Linears matching an fnmatch pattern (repeatable; last wins; 0 keeps them dense).")
@click.option("--bias-correction/--no-bias-correction", "bias_correction", default=None,
              help="Move what pruning removes on average into the Linears' biases (needs --calib). Default: on for channels, off for unstructured.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="A .json/.yaml PruneConfig (or an earlier prune_report.json) instead of the flags above.")
@click.option("--calib", type=click.Path(file_okay=False), help="Calibration directory (wanda, owl, channels, state).")
@click.option("--data", type=click.Path(dir_okay=False), help="Text for SparseGPT Hessians / block influence (default: the text --calib was made on; zoo models: the train split).")
@click.option("--samples", default=32, show_default=True)
@click.option("--seq-len", default=256, show_default=True)
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--force", is_flag=True)
def prune(model, method, sparsity, nm, n_layers, profile, owl_m, owl_lambda, layer_sparsity, bias_correction, config_file, calib, data, samples,
          seq_len, out, force):
    """Prune a model: masked (magnitude, Wanda, SparseGPT, N:M) or structural (channels, state, layers).

    Writes a float checkpoint (and prune_report.json: the config and what it removed); structural
    pruning shrinks its config and matrices. Prints masked sparsity and structural savings separately.

    \b
    Example:
      rnnquant prune mamba-pydoc --calib calib/ --method wanda --sparsity 0.5 --out mamba-wanda50/
      rnnquant prune lstm-pydoc --calib calib/ --method wanda --profile owl --out lstm-owl50/
      rnnquant prune lstm-pydoc --calib calib/ --method magnitude --layer-sparsity 'proj=0.3' --out lstm-m50/
      rnnquant prune mamba-pydoc --calib calib/ --method channels --sparsity 0.25 --out mamba-ch25/
    """
    from dataclasses import replace

    from .io import save_checkpoint
    from .prune import parse_spec

    if Path(out).exists() and not force:
        raise RnnquantError(f"{out} already exists (use --force to overwrite)")
    if config_file:
        cfg = parse_spec(config_file)
    elif method is None:
        raise RnnquantError("prune needs --method or --config FILE")
    else:
        spec = f"layers:{n_layers}" if method == "layers" else f"{method}:{nm}" if nm else f"{method}:{sparsity}"
        overrides: dict[str, float] = {}
        for pattern, s in map(_pattern_value, layer_sparsity):
            overrides.pop(pattern, None)  # a repeated pattern moves to the end: the last one given wins
            overrides[pattern] = s
        cfg = replace(parse_spec(spec), profile=profile, owl_m=owl_m, owl_lambda=owl_lambda, layer_sparsity=tuple(overrides.items()),
                      bias_correction=bias_correction)
        cfg.validate()
    m = _model(model)
    p = _pruned(m, cfg, calib, _text_of(data, calib), samples, seq_len)
    save_checkpoint(p, out, tokenizer_file(Path(m.provenance.source)), force=force)
    _echo_prune(p)
    click.echo(f"wrote {Path(out)}/")


def _pattern_value(text: str) -> tuple[str, float]:
    pattern, _, value = text.rpartition("=")
    try:
        return pattern, float(value)
    except ValueError:
        raise RnnquantError(f"bad --layer-sparsity {text!r}: expected PATTERN=SPARSITY, e.g. 'proj=0.3'") from None


def _echo_prune(p) -> None:
    r = p.provenance.prune_report
    click.echo(f"{r['spec']}: masked sparsity {r['masked_sparsity_pct']:.1f}% of pruned Linears; "
               f"structural {r['params_before'] / 1e6:.2f}M -> {r['params_after'] / 1e6:.2f}M params ({r['structural_reduction_pct']:.1f}% removed); "
               f"{r['nonzero_params'] / 1e6:.2f}M nonzero. {r['note']}.")
    if r["config"]["bias_correction"] and not r["bias_corrected"]:
        click.echo("no bias correction: it needs --calib")
    if "removed_layers" in r:
        click.echo(f"removed layers {r['removed_layers']} (lowest block influence)")
    if r["config"]["profile"] != "uniform" or r["config"]["layer_sparsity"]:
        click.echo("per Linear: " + ", ".join(f"{n} {v:.1f}%" for n, v in r["masked_sparsity_pct_per_linear"].items()))


@cli.command()
@click.argument("model")
@click.option("--prompt", required=True, help="Text to continue.")
@click.option("--max-new-tokens", default=64, show_default=True)
@click.option("--temperature", default=0.0, show_default=True, help="0 is greedy.")
@click.option("--top-k", default=0, show_default=True, help="0 keeps all tokens.")
@click.option("--seed", default=0, show_default=True)
def generate(model, prompt, max_new_tokens, temperature, top_k, seed):
    """Continue a prompt with the PyTorch step mode (the ONNX path is `rnnquant run`).

    \b
    Example:
      rnnquant generate mamba-pydoc --prompt "The list data type" --max-new-tokens 40
    """
    import time

    from .generate import generate as gen
    from .text import encode_prompt

    m = _model(model)
    ids = encode_prompt(m.tokenizer, prompt)
    click.echo(prompt, nl=False)
    out, t0 = [], time.perf_counter()
    for tok in gen(m, ids, max_new_tokens, temperature, top_k, seed):
        out.append(tok)
        # decode the whole continuation each time: byte-level BPE tokens may split UTF-8 characters
        click.echo(m.tokenizer.decode(out)[len(m.tokenizer.decode(out[:-1])) :], nl=False)
    dt = time.perf_counter() - t0
    click.echo(f"\n[{len(out)} tokens in {dt:.2f}s, {len(out) / dt:.1f} tok/s, PyTorch step mode]", err=True)


@cli.command()
@click.argument("model")
@click.option("--recipe", help="Quantize first with this preset or recipe file (default: export as is).")
@click.option("--calib", type=click.Path(file_okay=False), help="Calibration directory (for static/outlier-aware recipes).")
@click.option("--data", type=click.Path(dir_okay=False), help="Text for static scales / GPTQ (default: the text --calib was made on; zoo models: the train split).")
@click.option("--samples", default=32, show_default=True)
@click.option("--seq-len", default=256, show_default=True)
@click.option("--prune", "prune_spec", help="Prune first: wanda:0.5, wanda:0.5:owl, sparsegpt:2:4, channels:0.25, layers:1, or a .json/.yaml prune config.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output .onnx path (the model's tokenizer is written beside it).")
@click.option("--ort", "to_ort", is_flag=True, help="Also write a .ort file for mobile/minimal ONNX Runtime builds, verified against the .onnx.")
@click.option("--web", "to_web", is_flag=True, help="Also write a static generation page beside the graphs (index.html + "
              "onnxruntime-web's WASM files + tokenizer; serve the folder, e.g. `python -m http.server -d DIR`).")
@click.option("--opset", default=17, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["integer", "qoperator"]), default="integer", show_default=True,
              help="integer: the recipe's MatMulInteger/MatMulNBits graph (CPU EP). qoperator: QLinearMatMul with "
                   "static per-tensor scales from ONNX Runtime's quantize_static on the float model (NNAPI).")
@click.option("--prefill-logits", type=click.Choice(["all", "last"]), default="all", show_default=True,
              help="Logits the prefill graph returns: every position (perplexity needs them) or the last only "
                   "(generation; skips the vocabulary projection of the other positions).")
@click.option("--cpu", "cpu", type=click.Choice(["any", "vnni"]), default="any", show_default=True,
              help="CPUs the int8 matmuls are for. any: uint8 weights (U8U8), exact on every CPU. vnni: int8 weights "
                   "(U8S8), int8 steps 14-36 % shorter on x86 with AVX512-VNNI, AVX-VNNI or AMX (Intel Cascade Lake / "
                   "Alder Lake and later, AMD Zen 4 and later), but wrong on AVX2-only x86, where the runner refuses it.")
@click.option("--embedding-table", type=click.Choice(["shared", "own"]), default="shared", show_default=True,
              help="A tied embedding's lookup table. shared: the head's table, stored once. own: a row-major copy "
                   "(vocab x hidden more bytes on disk), so that ONNX Runtime releases the head's table once its "
                   "matmul has packed it and the lookup reads one row per token: a step session smaller by about "
                   "that table (RESULTS §23).")
@click.option("--fused", is_flag=True, help="Run the step's recurrence as rnnquant's ONNX Runtime custom ops (Mamba-1 / "
              "FalconMamba: conv and selective scan; Mamba-2: conv and SSD; RWKV-7: everything between the attention's "
              "Linears and W_o), a pass or two over the state where stock ops take ~38-80 nodes per layer; every int8 Linear (with --cpu vnni) and every 4-bit "
              "Linear with int8 activations is one op too. The op library is built on first use with this "
              "machine's C++ compiler and loaded by `rnnquant run` / `compare`; native ONNX Runtime only (not with "
              "--web, --ort or --format qoperator).")
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
def export(model, recipe, calib, data, samples, seq_len, prune_spec, out, to_ort, to_web, opset, fmt, prefill_logits, cpu, embedding_table, fused, force):
    """Export the O(1) step graph (token + state in, logits + state out) to ONNX.

    MODEL is a float model (optionally quantized on the way with --recipe) or a quantized
    directory from `rnnquant quantize`.

    \b
    Example:
      rnnquant export mamba-pydoc --out out/mamba-fp32.onnx
      rnnquant export mamba-pydoc --calib calib/ --recipe w8a8-outlier --out out/mamba-w8a8.onnx
      rnnquant export mamba-pydoc --calib calib/ --recipe w8a8-outlier --cpu vnni --out out/mamba-w8a8-vnni.onnx
      rnnquant export mamba-pydoc --calib calib/ --recipe w8a8-outlier --cpu vnni --fused --out out/mamba-fused.onnx
      rnnquant export mamba-w4/ --out out/mamba-w4.onnx --ort
      rnnquant export mamba-pydoc --format qoperator --out out/mamba-qop.onnx
      rnnquant export mamba-pydoc --recipe w4a16-gptq --out web/model.onnx --web
    """
    from .exporters.onnx_export import export_step
    from .exporters.prefill import prefill_path, step_bytes, weights_path

    if Path(out).exists() and not force:
        raise RnnquantError(f"{out} already exists (use --force to overwrite)")
    if cpu == "vnni" and (to_web or fmt == "qoperator"):
        raise RnnquantError(f"--cpu vnni is for the integer format on native x86 ONNX Runtime; not with {'--web' if to_web else '--format qoperator'}")
    if embedding_table == "own" and fmt == "qoperator":
        raise RnnquantError("--embedding-table own is for the integer format; --format qoperator graphs are ONNX Runtime's quantize_static of the float graph")
    if fused and (to_web or to_ort or fmt == "qoperator"):
        raise RnnquantError(f"--fused graphs need rnnquant's op library in native ONNX Runtime; not with {'--web' if to_web else '--ort' if to_ort else '--format qoperator'}")
    if fused:  # build (or find) the op library before any work: a machine that cannot build it is refused here
        from .kernels import ortops

        ortops.build()
    if cpu == "vnni" and to_ort:  # --ort checks the .ort against the .onnx by running both: refuse before any work where they cannot run
        from .exporters.runner import check_int8_kernels

        check_int8_kernels("int8", out)
    if to_web:
        from .exporters.web import node_modules

        node_modules()  # refuse before any work when the page's npm packages are not here
    m = _model(model)
    data = _text_of(data, calib)
    if recipe is not None or prune_spec:
        if m.provenance.recipe is not None:
            raise RnnquantError(f"{model} is already quantized ({m.provenance.recipe.name}); export it without --recipe/--prune")
        if recipe is not None:
            m = _quantized(m, recipe, calib, data, samples, seq_len, prune_spec)
        else:
            from .prune import parse_spec

            m = _pruned(m, parse_spec(prune_spec), calib, data, samples, seq_len)
            _echo_prune(m)
    tokenizer = tokenizer_file(Path(m.provenance.source))
    if fmt == "qoperator":
        from .exporters.qoperator import export_qoperator

        path = export_qoperator(m, out, tokenizer, _batches(m, data, samples, seq_len), opset=opset, force=force, prefill_logits=prefill_logits)
    else:
        path = export_step(m, out, tokenizer, opset=opset, force=force, prefill_logits=prefill_logits,
                           int8_weights="int8" if cpu == "vnni" else "uint8", embedding_table=embedding_table, fused=fused)
    click.echo(f"wrote {path} ({step_bytes(path) / 2**20:.2f} MiB with its weights file {weights_path(path).name}), {prefill_path(path).name} "
               f"and {path.parent / stored_name(tokenizer)}")
    if to_ort:
        from .exporters.ort_format import convert_to_ort

        ort_path, diff = convert_to_ort(path)
        pre_ort = ort_path.with_suffix(".prefill.ort")
        click.echo(f"wrote {ort_path} ({ort_path.stat().st_size / 2**20:.2f} MiB)" + (f" and {pre_ort.name}" if pre_ort.is_file() else "")
                   + f"; max |logits .ort - .onnx| = {diff:.2e}")
    if to_web:
        from .exporters.web import write_page

        page = write_page(path)
        click.echo(f"wrote {page} and its runtime files: `python -m http.server -d {page.parent}`, then open http://127.0.0.1:8000/")


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--prompt", required=True, help="Text to continue.")
@click.option("--max-new-tokens", default=64, show_default=True)
@click.option("--temperature", default=0.0, show_default=True, help="0 is greedy.")
@click.option("--top-k", default=0, show_default=True, help="0 keeps all tokens.")
@click.option("--seed", default=0, show_default=True)
@click.option("--threads", default=0, show_default=True, help="ONNX Runtime intra-op threads (0: its default).")
def run(model, prompt, max_new_tokens, temperature, top_k, seed, threads):
    """Generate with an exported graph in ONNX Runtime (imports no torch).

    \b
    Example:
      rnnquant run out/mamba-w8a8.onnx --prompt "def read_config(path):" --max-new-tokens 48 --threads 2
    """
    import time

    from .exporters.runner import OrtLM

    lm = OrtLM(model, threads=threads or None)
    ids = lm.encode(prompt)
    click.echo(prompt, nl=False)
    out, t0, t_first = [], time.perf_counter(), None
    for tok in lm.generate(ids, max_new_tokens, temperature, top_k, seed):
        if t_first is None:
            t_first = time.perf_counter()
        out.append(tok)
        click.echo(lm.tokenizer.decode(out)[len(lm.tokenizer.decode(out[:-1])) :], nl=False)
    t_end = time.perf_counter()
    decode = (len(out) - 1) / (t_end - t_first) if len(out) > 1 else float("nan")
    click.echo(f"\n[prefill {len(ids)} tokens: {len(ids) / (t_first - t0):.1f} tok/s; decode {len(out)} tokens: {decode:.1f} tok/s; "
               f"{lm.meta['architecture']} {json.loads(lm.meta['recipe']).get('name', 'float') if lm.meta['recipe'] != 'float' else 'float'}]", err=True)


@cli.command()
@click.option("--float", "float_model", required=True, help="The float model (directory or zoo name): the reference.")
@click.argument("variants", nargs=-1, required=True)
@click.option("--data", type=click.Path(dir_okay=False), help="Evaluation text (default for zoo models: the test split).")
@click.option("--window", default=512, show_default=True)
@click.option("--threads", default=1, show_default=True, help="ONNX Runtime threads for latency.")
@click.option("--tokens", default=256, show_default=True, help="Timed decode steps per variant (after warm-up).")
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--by-position", is_flag=True, help="Also perplexity per position bucket of the text read as one stream, the state "
              "carried across it (as `ppl --by-position`), for every variant: a second table in the report.")
@_max_tokens
def compare(float_model, variants, data, window, threads, tokens, out, by_position, max_tokens):
    """Perplexity, latency, size and memory of each VARIANT against the float model.

    A VARIANT is an exported .onnx/.ort file or a quantized model directory. Writes
    OUT/report.json (stable schema), report.md, report.html and PNG plots.

    \b
    Example:
      rnnquant compare --float mamba-pydoc out/mamba-w8a8.onnx out/mamba-w4.onnx --threads 2 --out report/
    """
    from .eval.compare import compare as run_compare, markdown_table, write_report

    m = _model(float_model)
    source = data or "zoo test split"
    report = run_compare(m, list(variants), _ids(m, data, "test", max_tokens), window, tokens, threads, source, by_position)
    write_report(report, out)
    click.echo(markdown_table(report))
    click.echo(f"wrote {Path(out)}/report.json, report.md, report.html")


def _large_tensors_in_huge_pages() -> None:
    """With every large tensor mmapped (``release_large_frees``), each allocation faults its pages in afresh, 4 KiB at
    a time: that made the block engine's replays 1.4x slower than with glibc's default heap reuse
    (mamba-130m shape calibration, docs/RESULTS.md §21). torch's CPU allocator asks for transparent
    huge pages on allocations of 2 MiB and more when THP_MEM_ALLOC_ENABLE is set, which it reads once,
    at its first allocation: so here, before anything imports torch. A user's own setting wins."""
    import os

    if "torch" not in sys.modules:
        os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def main(argv=None) -> None:
    from .heap import release_large_frees

    release_large_frees()
    _large_tensors_in_huge_pages()
    try:
        cli.main(args=argv, prog_name="rnnquant", standalone_mode=False)
    except RnnquantError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.ClickException as e:  # usage errors too: one line, with the command's --help hint
        ctx = getattr(e, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        click.echo(f"error: {e.format_message()}{hint}", err=True)
        sys.exit(2)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
