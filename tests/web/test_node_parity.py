"""Exported graphs in onnxruntime-node and onnxruntime-web (WASM, in Node) equal Python ONNX Runtime.

Every adapter's tiny model is exported float, w8a8-outlier (MatMulInteger) and w4a16-gptq
(MatMulNBits); Python ORT runs the step graph over TOKENS tokens and the prefill graph over the
same tokens; web/test/parity.mjs runs both again through rnnlm.mjs (the page's runner) in each
JavaScript runtime and reports the largest differences.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from rnnquant.calibrate import CalibConfig, calibrate, calibration_batches
from rnnquant.exporters.onnx_export import export_step
from rnnquant.exporters.ort_format import convert_to_ort
from rnnquant.exporters.runner import OrtLM
from rnnquant.exporters.web import write_manifest
from rnnquant.models import fingerprint
from rnnquant.quant import PRESETS, quantize
from tests.conftest import TOKENIZER, tiny_model
from tests.web.conftest import run_node

# one layout per adapter
ARCHS = ["gru", "lstm", "mamba", "mamba2", "mingru", "minlstm", "recurrent_gemma", "rwkv", "rwkv7", "xlstm"]
RECIPES = ["float", "w8a8-outlier", "w4a16-gptq"]
RUNTIMES = ["node", "wasm"]
ORT_FORMAT = ["mamba", "rwkv7"]  # also converted to .ort (ORT Mobile's format), which the JavaScript runtimes load too
TOKENS = 12  # past recurrent_gemma's window of 8: the shift-register state is exercised
IDS = torch.randint(0, 4096, (3000,), generator=torch.Generator().manual_seed(0))
# Seen: onnxruntime-node gives Python ORT's logits bit for bit (the same MLAS kernels); WASM differs
# by <= 1e-5 (other SIMD widths and summation orders), quantized graphs included (their integer
# matmuls are exact, and no activation rounded the other way on these tokens). Logits here are
# O(1-10): 1e-4 leaves room for another build's float order, far below what a wrong op changes.
TOLERANCE = 1e-4


def _export(arch: str, recipe: str, out):
    m = tiny_model(arch)
    m.provenance = m.provenance.derive(fingerprint=fingerprint(m))
    if recipe != "float":
        calib = calibrate(m, IDS, CalibConfig(samples=4, seq_len=64))
        m = quantize(m, PRESETS[recipe], calib, calibration_batches(IDS, 4, 64, 4))
    return export_step(m, out / "model.onnx", TOKENIZER)


def _save(case, ref: dict, key: str, array: np.ndarray) -> None:
    ref[key] = {"file": f"{key}.bin", "dtype": str(array.dtype)}
    np.ascontiguousarray(array).tofile(case / f"{key}.bin")


def _reference(path) -> dict:
    """Python ORT's step-by-step and prefill logits and states on TOKENS tokens, as .bin files."""
    lm, case = OrtLM(path), path.parent
    tokens = IDS[-TOKENS:].tolist()
    ref = {"tokens": tokens}
    state, rows = lm.init_state(1), []
    for s, v in zip(lm.states, state):
        _save(case, ref, f"init_{s['name']}", v)
    for t in tokens:
        logits, state = lm.step(np.array([t]), state)
        rows.append(logits[0])
    _save(case, ref, "step_logits", np.stack(rows))
    for s, v in zip(lm.states, state):
        _save(case, ref, f"step_{s['name']}", v)
    logits, state = lm.prefill(np.array([tokens]), lm.init_state(1), all_logits=not lm.prefill_last_only)
    _save(case, ref, "prefill_logits", logits[0])
    for s, v in zip(lm.states, state):
        _save(case, ref, f"prefill_{s['name']}", v)
    (case / "reference.json").write_text(json.dumps(ref))


def _ort_case(path, case) -> None:
    """The same export as .ort files, referenced by Python ORT running the .ort files."""
    case.mkdir()
    for f in [*path.parent.glob("*.onnx"), *path.parent.glob("*.onnx.data"), path.parent / "tokenizer.json"]:
        shutil.copy(f, case / f.name)
    write_manifest(case / path.name)
    ort_path, _ = convert_to_ort(case / path.name)
    manifest = json.loads((case / "model.json").read_text())
    manifest |= {"step": ort_path.name, "prefill": ort_path.with_suffix(".prefill.ort").name, "weights": None}  # .ort embeds them
    (case / "model.json").write_text(json.dumps(manifest))
    _reference(ort_path)


@pytest.fixture(scope="module")
def parity(tmp_path_factory, node) -> dict:
    root = tmp_path_factory.mktemp("web-parity")
    for arch in ARCHS:
        for recipe in RECIPES:
            case = root / f"{arch}-{recipe}"
            case.mkdir()
            path = _export(arch, recipe, case)
            write_manifest(path)
            _reference(path)
            if arch in ORT_FORMAT:
                _ort_case(path, root / f"{arch}-{recipe}-ort")
    rows = [json.loads(line) for line in run_node(node, "parity.mjs", root)]
    return {(r["case"], r["runtime"]): r for r in rows}


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("arch", ARCHS)
def test_js_runtime_equals_python_ort(parity, arch, recipe, runtime):
    _check(parity[(f"{arch}-{recipe}", runtime)])


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("arch", ORT_FORMAT)
def test_js_runtime_runs_the_ort_format(parity, arch, recipe, runtime):
    _check(parity[(f"{arch}-{recipe}-ort", runtime)])


def _check(r: dict) -> None:
    assert "error" not in r, r
    assert r["init_states"] == 0, r  # each state's declared dtype and fill value (RWKV-4's running max: -1e38)
    assert r["step_logits"] <= TOLERANCE and r["step_states"] <= TOLERANCE, r
    assert r["prefill_logits"] is not None, r  # every export has a prefill graph
    assert r["prefill_logits"] <= TOLERANCE and r["prefill_states"] <= TOLERANCE, r
