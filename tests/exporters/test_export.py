"""ORT vs PyTorch parity of the exported step graph, float and quantized; CLI refusals."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from rnnquant.calibrate import CalibConfig, calibrate, calibration_batches
from rnnquant.errors import RnnquantError
from rnnquant.eval import perplexity_by_position, perplexity_ids
from rnnquant.exporters.onnx_export import export_step
from rnnquant.exporters.ort_format import convert_to_ort
from rnnquant.exporters.runner import OrtLM, u8s8_saturates_here
from rnnquant.generate import generate
from rnnquant.io import save_checkpoint
from rnnquant.artifacts import load
from rnnquant.models import fingerprint
from rnnquant.quant import PRESETS, quantize, save_quantized
from tests.conftest import TOKENIZER, tiny_model
from tests.helpers import assert_one_line_error, run_cli

IDS = torch.randint(0, 4096, (5000,), generator=torch.Generator().manual_seed(0))


def _model(arch):
    m = tiny_model(arch)
    m.provenance = m.provenance.derive(fingerprint=fingerprint(m))
    return m


def test_float_step_parity_64_tokens(tmp_path, any_arch):
    m = _model(any_arch)
    lm = OrtLM(export_step(m, tmp_path / "m.onnx", TOKENIZER))
    ids = IDS[:2 * 64].view(2, 64)
    ts, os_ = m.init_state(2), lm.init_state(2)
    with torch.no_grad():
        for t in range(64):
            tl, ts = m.step(ids[:, t], ts)
            ol, os_ = lm.step(ids[:, t].numpy(), os_)
            assert np.abs(ol - tl.numpy()).max() <= 1e-4
    for a, b in zip(os_, ts, strict=True):  # the state round-trips through ORT
        assert np.abs(a - b.numpy()).max() <= 1e-4


def test_greedy_generation_matches_torch(tmp_path):
    m = _model("mamba")
    lm = OrtLM(export_step(m, tmp_path / "m.onnx", TOKENIZER))
    prompt = IDS[:7].tolist()
    assert list(lm.generate(prompt, 32)) == list(generate(m, prompt, 32))


@pytest.mark.parametrize("arch", ["mamba", "lstm"])  # a parallel prefill graph; a Loop over the step
def test_ort_perplexity_by_position_matches_torch(tmp_path, arch):
    """The state carried across chunks through the exported graphs gives PyTorch's buckets."""
    m = _model(arch)
    lm = OrtLM(export_step(m, tmp_path / "m.onnx", TOKENIZER))
    ids = IDS[:400]
    ours = lm.perplexity_by_position(ids.numpy(), edges=(0, 50, 200), chunk=96)
    ref = perplexity_by_position(m, ids, edges=(0, 50, 200), chunk=96)
    assert [(b["from"], b["to"], b["tokens"]) for b in ours] == [(0, 50, 49), (50, 200, 150), (200, None, 200)]
    assert [(b["from"], b["to"], b["tokens"]) for b in ours] == [(b["from"], b["to"], b["tokens"]) for b in ref]
    for a, b in zip(ours, ref, strict=True):
        assert abs(a["ppl"] - b["ppl"]) / b["ppl"] <= 1e-4


@pytest.mark.parametrize("arch", ["mamba", "mamba2", "lstm", "lstm-untied", "lstmp"])
@pytest.mark.parametrize("preset", ["w8a8-naive", "w8a8-dynamic", "w8a8-outlier", "w4a16-gptq", "w4a8"])
def test_quantized_ort_perplexity_matches_simulation(tmp_path, arch, preset):
    m = _model(arch)
    calib = calibrate(m, IDS, CalibConfig(samples=8, seq_len=128))
    q = quantize(m, PRESETS[preset], calib, calibration_batches(IDS, 8, 128, 4))
    lm = OrtLM(export_step(q, tmp_path / "q.onnx", TOKENIZER))
    test = IDS[-600:]
    sim = perplexity_ids(q, test, window=64, mode="step").ppl
    ort_ppl, _ = lm.perplexity(test.numpy(), window=64)
    assert abs(ort_ppl - sim) / sim <= 0.005
    for graph in ("q.onnx", "q.prefill.onnx"):  # a parallel prefill graph is quantized the same way
        ops = {n.op_type for n in onnx.load(tmp_path / graph).graph.node}
        ops |= {n.op_type for node in onnx.load(tmp_path / graph).graph.node for a in node.attribute if a.g for n in a.g.node}
        assert ("MatMulNBits" in ops) if preset.startswith("w4") else ("MatMulInteger" in ops)


@pytest.mark.parametrize("preset", ["w8a8-dynamic", "w8a8-outlier"])
def test_int8_matmuls_are_u8u8(tmp_path, preset):
    """Every MatMulInteger takes uint8 weights with zero point 128 (U8U8): ONNX Runtime's U8S8 kernel
    saturates int16 pair sums on x86 CPUs without VNNI (every AVX2-only CPU), 1e5 off in 3e5."""
    _assert_int8_form(export_step(_w8(preset), tmp_path / "q.onnx", TOKENIZER), onnx.TensorProto.UINT8, 128)


@pytest.mark.parametrize("preset", ["w8a8-dynamic", "w8a8-outlier"])
def test_int8_weights_int8_makes_every_int8_matmul_u8s8(tmp_path, preset):
    """``int8_weights="int8"`` (``--cpu vnni``): every MatMulInteger takes the int8 codes with zero point
    0, the activations staying uint8 with zero point 128, and the graph says so in its metadata."""
    path = export_step(_w8(preset), tmp_path / "q.onnx", TOKENIZER, int8_weights="int8")
    _assert_int8_form(path, onnx.TensorProto.INT8, 0)
    assert {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}["int8_weights"] == "int8"


def _w8(preset):
    m = _model("mamba")
    return quantize(m, PRESETS[preset], calibrate(m, IDS, CalibConfig(samples=8, seq_len=128)), calibration_batches(IDS, 8, 128, 4))


def _assert_int8_form(path, weight_type, weight_zero):
    from onnx import numpy_helper

    proto = onnx.load(path)
    inits = {t.name: t for t in proto.graph.initializer}
    consts = {n.output[0]: n.attribute[0].t for n in proto.graph.node if n.op_type == "Constant"}
    matmuls = [n for n in proto.graph.node if n.op_type == "MatMulInteger"]
    assert matmuls
    for n in matmuls:
        weight, a_zero, b_zero = (inits.get(x) or consts.get(x) for x in (n.input[1], n.input[2], n.input[3] if len(n.input) > 3 else ""))
        assert weight.data_type == weight_type, n.name
        assert b_zero is not None and b_zero.data_type == weight_type and numpy_helper.to_array(b_zero) == weight_zero, n.name
        assert a_zero.data_type == onnx.TensorProto.UINT8 and numpy_helper.to_array(a_zero) == 128, n.name


U8S8_EXACT_HERE = not u8s8_saturates_here()


@pytest.mark.skipif(not U8S8_EXACT_HERE, reason="x86 without VNNI / AMX: ONNX Runtime's U8S8 kernel saturates here (the refusal is tested)")
@pytest.mark.parametrize("preset", ["w8a8-dynamic", "w8a8-outlier"])
def test_int8_weights_give_the_same_logits_where_u8s8_is_exact(tmp_path, preset):
    """On a CPU whose U8S8 kernel is exact (VNNI / AMX), the int8-weights graph computes the same
    integer products as the U8U8 one: the same logits and states, step and prefill."""
    q = _w8(preset)
    a = OrtLM(export_step(q, tmp_path / "u8.onnx", TOKENIZER))
    b = OrtLM(export_step(q, tmp_path / "s8.onnx", TOKENIZER, int8_weights="int8"))
    ids = IDS[:40].numpy()[None]
    (la, sa), (lb, sb) = a.prefill(ids, a.init_state(1)), b.prefill(ids, b.init_state(1))
    np.testing.assert_allclose(lb, la, rtol=0, atol=1e-5)
    (la, sa), (lb, sb) = a.step(ids[:, -1], sa), b.step(ids[:, -1], sb)
    np.testing.assert_allclose(lb, la, rtol=0, atol=1e-5)
    for x, y in zip(sa, sb):
        np.testing.assert_allclose(y, x, rtol=0, atol=1e-5)


def test_export_cpu_vnni_ort_refuses_before_any_work_on_a_cpu_without_vnni(capsys, tmp_path, saved, monkeypatch):
    """``--ort`` runs the graph to check the .ort file: on a CPU where a ``--cpu vnni`` graph cannot
    run, the export stops before writing anything, not after the .onnx."""
    from rnnquant.exporters import runner

    monkeypatch.setattr(runner.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(runner, "cpu_flags", lambda: {"sse2", "avx2"})
    assert_one_line_error(capsys, "export", saved, "--cpu", "vnni", "--ort", "--out", tmp_path / "a.onnx", match="--cpu any")
    assert not list(tmp_path.glob("*.onnx*"))


def test_runner_refuses_int8_weights_on_a_cpu_without_vnni(tmp_path, monkeypatch):
    """A ``--cpu vnni`` graph on an x86 CPU without VNNI / AMX is a one-line error, not wrong logits."""
    from rnnquant.exporters import runner

    path = export_step(_w8("w8a8-dynamic"), tmp_path / "s8.onnx", TOKENIZER, int8_weights="int8")
    monkeypatch.setattr(runner.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(runner, "cpu_flags", lambda: {"sse2", "avx2", "fma"})
    with pytest.raises(RnnquantError, match="--cpu any"):
        OrtLM(path)
    monkeypatch.setattr(runner, "cpu_flags", lambda: {"avx2", "avx512_vnni"})
    assert OrtLM(path).meta["int8_weights"] == "int8"


def _matmul_and_gather_weights(path, ops=("Gather", "MatMul", "Gemm", "MatMulInteger", "MatMulNBits")):
    """Names of the weights (external data, 2-D or more) the graph's matmuls and gathers (``ops``) read."""
    proto = onnx.load(path, load_external_data=False)
    inits = {t.name: t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL and len(t.dims) >= 2}
    weight_input = {op: 0 if op == "Gather" else 1 for op in ops}
    nodes = [*proto.graph.node, *(n for node in proto.graph.node for a in node.attribute if a.g for n in a.g.node)]  # (a Loop prefill's body)
    return {n.input[weight_input[n.op_type]] for n in nodes if n.op_type in weight_input} & set(inits)


@pytest.mark.parametrize("preset", [None, "w8a8-outlier"])
def test_weights_go_to_the_file_under_their_modules_names(tmp_path, any_arch, preset):
    """Every matmul's weight and every embedding table is traced as a named graph input and written
    from the model's own tensors (``<module path>.weight_t``, ``.codes``, ...), not serialized by the
    TorchScript exporter as ``onnx::MatMul_123`` (which held three copies of them: 18 GB at mamba-1.4b shape)."""
    if preset and any_arch not in ("mamba", "lstm"):
        pytest.skip("the quantized lowering is the same for every architecture: two suffice")
    m = _model(any_arch)
    if preset:
        m = quantize(m, PRESETS[preset], calibrate(m, IDS, CalibConfig(samples=4, seq_len=64)), calibration_batches(IDS, 4, 64, 4))
    out = export_step(m, tmp_path / "m.onnx", TOKENIZER)
    modules = {name for name, _ in m.named_modules()}
    for graph in (out, out.with_suffix(".prefill.onnx")):
        names = _matmul_and_gather_weights(graph)
        assert names, graph.name
        assert {n for n in names if n.rsplit(".", 1)[0] not in modules} == set(), graph.name


@torch.no_grad()
@pytest.mark.parametrize("arch", ["mamba", "lstm"])  # lstm: a tied 24-wide head, one padded 32-code block per row
def test_w8_float_activation_graph_keeps_its_activations_float(tmp_path, arch):
    """8-bit weights with float activations (per channel where a Linear is one group wide, else group-wise)
    give the simulation's logits in a default ORT session: a DequantizeLinear -> MatMul lowering was
    fused by ORT into int8-activation MatMulNBits (2e-2 off)."""
    from rnnquant.quant.recipe import Recipe, Rule

    m = _model(arch)
    q = quantize(m, Recipe("w8g32", [Rule(w_bits=8, w_granularity="group", group_size=32)]), None, None)
    lm = OrtLM(export_step(q, tmp_path / "q.onnx", TOKENIZER))
    ids = IDS[:16]
    state, ort_state = q.init_state(1), lm.init_state(1)
    for t in ids:
        ref, state = q.step(t.view(1), state)
        logits, ort_state = lm.step(t.view(1).numpy(), ort_state)
        assert np.abs(logits - ref.numpy()).max() <= 1e-4


def _tied(kind):
    """A tied Mamba: float, W8A8 (MatMulInteger, [D, V] codes), or W8 per channel with float
    activations (MatMulNBits, one 8-bit block per row)."""
    from rnnquant.quant.recipe import Recipe, Rule

    m = _model("mamba")
    if kind == "w8a8":
        return _w8("w8a8-dynamic")
    return m if kind == "float" else quantize(m, Recipe("w8", [Rule(w_bits=8, w_granularity="channel")]), None, None)


@pytest.mark.parametrize("kind", ["float", "w8a8", "w8-nbits"])
def test_own_embedding_table_gives_the_same_logits(tmp_path, kind):
    """``embedding_table="own"`` gathers the same values from a row-major copy of a tied head's
    table: the same logits and states as the shared table, step and prefill."""
    m = _tied(kind)
    a = OrtLM(export_step(m, tmp_path / "shared.onnx", TOKENIZER))
    b = OrtLM(export_step(m, tmp_path / "own.onnx", TOKENIZER, embedding_table="own"))
    ids = IDS[:40].numpy()[None]
    (la, sa), (lb, sb) = a.prefill(ids, a.init_state(1)), b.prefill(ids, b.init_state(1))
    np.testing.assert_array_equal(lb, la)
    (la, sa), (lb, sb) = a.step(ids[:, -1], sa), b.step(ids[:, -1], sb)
    np.testing.assert_array_equal(lb, la)
    for x, y in zip(sa, sb):
        np.testing.assert_array_equal(y, x)


@pytest.mark.parametrize("kind", ["float", "w8a8", "w8-nbits"])
def test_own_embedding_table_is_not_the_heads(tmp_path, kind):
    """With its own table, no tied lookup reads an initializer a matmul also reads (ONNX Runtime
    keeps such a table whole beside the matmul's packed copy); by default it reads the head's."""
    m = _tied(kind)
    for table, shares in (("shared", True), ("own", False)):
        path = export_step(m, tmp_path / f"{table}.onnx", TOKENIZER, embedding_table=table)
        for graph in (path, path.with_suffix(".prefill.onnx")):
            gathers, matmuls = _matmul_and_gather_weights(graph, ["Gather"]), _matmul_and_gather_weights(graph, ["MatMul", "MatMulInteger", "MatMulNBits"])
            assert gathers and bool(gathers & matmuls) == shares, (table, graph.name)


@torch.no_grad()
@pytest.mark.parametrize("arch", ["lstm-untied", "rwkv7"])
def test_an_untied_int8_table_is_gathered_as_int8_rows(tmp_path, arch):
    """An untied embedding's int8 codes are the graph's only [V, D] table (int8, row-major), and
    the lookup gives the simulation's logits, step and prefill."""
    m = _model(arch)
    q = quantize(m, PRESETS["w8a8-dynamic"])
    path = export_step(q, tmp_path / "q.onnx", TOKENIZER)
    v, d = m.vocab_size, q.get_submodule(q.arch_spec().embedding).table.in_features
    for graph in (path, path.with_suffix(".prefill.onnx")):
        proto = onnx.load(graph, load_external_data=False)
        tables = [t for t in proto.graph.initializer if list(t.dims) == [v, d]]
        assert [t.data_type for t in tables] == [onnx.TensorProto.INT8], graph.name
        assert tables[0].name in _matmul_and_gather_weights(graph, ["Gather"]), graph.name
    lm = OrtLM(path)
    ids = IDS[:24].view(1, 24)
    logits, _ = lm.prefill(ids.numpy(), lm.init_state(1))
    assert np.abs(logits - q(ids).numpy()).max() <= 1e-4
    state, ort_state = q.init_state(1), lm.init_state(1)
    for t in ids[0]:
        ref, state = q.step(t.view(1), state)
        out, ort_state = lm.step(t.view(1).numpy(), ort_state)
        assert np.abs(out - ref.numpy()).max() <= 1e-4


def _int8_weight_bytes(path) -> list[int]:
    proto = onnx.load(path, load_external_data=False)
    sizes = {t.name: math.prod(t.dims) for t in proto.graph.initializer}
    return [sizes.get(n.input[1], 0) for n in proto.graph.node if n.op_type == "MatMulInteger"]  # (tiny weights stay Constants)


@pytest.mark.parametrize("table", ["shared", "own"])
def test_large_w8_matmuls_are_column_blocks_with_the_same_logits(tmp_path, monkeypatch, table):
    """A W8 code matrix over ``W8_BLOCK_BYTES`` is emitted as column blocks, each at most that size
    (ONNX Runtime's load then peaks at one block's original, not the head's), computing the same
    logits; except a head whose codes a shared tied lookup reads whole."""
    from rnnquant.exporters import qops

    q = _w8("w8a8-dynamic")
    whole = OrtLM(export_step(q, tmp_path / "whole.onnx", TOKENIZER, embedding_table=table))
    monkeypatch.setattr(qops, "W8_BLOCK_BYTES", 16 * 1024)  # the head's 4096 x 32 codes: 8 blocks
    path = export_step(q, tmp_path / "blocks.onnx", TOKENIZER, embedding_table=table)
    head = 4096 * 32
    assert max(_int8_weight_bytes(path)) == (head if table == "shared" else 16 * 1024)
    blocks = OrtLM(path)
    ids = IDS[:40].numpy()[None]
    (la, sa), (lb, sb) = whole.prefill(ids, whole.init_state(1)), blocks.prefill(ids, blocks.init_state(1))
    np.testing.assert_array_equal(lb, la)
    (la, _), (lb, _) = whole.step(ids[:, -1], sa), blocks.step(ids[:, -1], sb)
    np.testing.assert_array_equal(lb, la)


def test_export_refuses_an_unknown_embedding_table(tmp_path):
    with pytest.raises(RnnquantError, match="embedding table"):
        export_step(_model("mamba"), tmp_path / "m.onnx", TOKENIZER, embedding_table="copy")


def test_metadata_and_ort_format(tmp_path):
    m = _model("mamba")
    path = export_step(m, tmp_path / "m.onnx", TOKENIZER)
    meta = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert meta["architecture"] == "mamba" and meta["model_fingerprint"] == m.provenance.fingerprint
    assert [s["name"] for s in json.loads(meta["states"])] == ["conv_0", "ssm_0", "conv_1", "ssm_1"]
    big = [t for t in onnx.load(path).graph.initializer if list(t.dims) in ([4096, 32], [32, 4096])]
    assert len(big) == 1  # the tied embedding and the head share one table
    ort_path, diff = convert_to_ort(path)
    assert ort_path.is_file() and path.with_suffix(".prefill.ort").is_file() and diff <= 1e-5
    lm = OrtLM(ort_path)
    assert lm.prefill_session is not None and lm.prefill_window == 128  # the .ort prefill, with its .onnx's metadata
    export_step(m, path, TOKENIZER)  # a new export removes the old .ort files: they would no longer match
    assert not ort_path.exists() and not path.with_suffix(".prefill.ort").exists()


@pytest.fixture
def saved(tmp_path):
    d = tmp_path / "m"
    save_checkpoint(tiny_model("mamba"), d, tokenizer_path=TOKENIZER)
    return d


def test_export_cli_and_run_without_torch(capsys, tmp_path, saved):
    out = tmp_path / "o" / "m.onnx"
    code, stdout, err = run_cli(capsys, "export", saved, "--out", out)
    assert code == 0, err
    # `rnnquant run` must work where torch cannot be imported
    code = "import sys; sys.modules['torch'] = None; from rnnquant.cli import main; main(sys.argv[1:])"
    res = subprocess.run([sys.executable, "-c", code, "run", str(out), "--prompt", "def f(x):", "--max-new-tokens", "8"],
                         capture_output=True, text=True, env=os.environ | {"PYTHONPATH": os.getcwd()}, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("def f(x):") and "decode 8 tokens" in res.stderr


def test_export_cli_embedding_table_own(capsys, tmp_path, saved):
    """``--embedding-table own`` reaches the graph; with ``--format qoperator`` it is refused before any work."""
    out = tmp_path / "o" / "m.onnx"
    code, _, err = run_cli(capsys, "export", saved, "--embedding-table", "own", "--out", out)
    assert code == 0, err
    assert _matmul_and_gather_weights(out, ["Gather"]) == {"backbone.embeddings.weight"}
    assert_one_line_error(capsys, "export", saved, "--embedding-table", "own", "--format", "qoperator", "--out", tmp_path / "q.onnx",
                          match="--embedding-table own")
    assert not list(tmp_path.glob("q.onnx*"))


def test_export_refusals(capsys, tmp_path, saved):
    assert_one_line_error(capsys, "export", saved, "--recipe", "w8a8-outlier", "--out", tmp_path / "a.onnx", match="needs calibration statistics")
    assert_one_line_error(capsys, "export", saved, "--out", tmp_path / "a.txt", match="must end in .onnx")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_one_line_error(capsys, "export", saved, "--out", blocker / "a.onnx", match="cannot write to")
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob(".*"))
    (tmp_path / "exists.onnx").write_text("x")
    assert_one_line_error(capsys, "export", saved, "--out", tmp_path / "exists.onnx", match="already exists")


@pytest.mark.parametrize("other", [["--web"], ["--format", "qoperator"]])
def test_export_refuses_cpu_vnni_where_it_does_not_apply(capsys, tmp_path, saved, other):
    """``--cpu vnni`` (U8S8) is for native x86 ONNX Runtime's integer graph: not the page (WebAssembly's
    int8 kernels are not checked) nor ONNX Runtime's own QOperator graph."""
    assert_one_line_error(capsys, "export", saved, "--cpu", "vnni", *other, "--out", tmp_path / "a.onnx", match="--cpu vnni")
    assert not list(tmp_path.glob("*.onnx*"))


def test_run_refuses_foreign_onnx(capsys, tmp_path):
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(g), tmp_path / "foreign.onnx")
    assert_one_line_error(capsys, "run", tmp_path / "foreign.onnx", "--prompt", "hi", match="no rnnquant metadata")
    (tmp_path / "junk.onnx").write_bytes(b"\x00garbage" * 10)
    assert_one_line_error(capsys, "run", tmp_path / "junk.onnx", "--prompt", "hi", match="not a readable ONNX model")


def test_export_quantized_directory(capsys, tmp_path, saved):
    m = load(saved)
    q = quantize(m, PRESETS["w4a16-rtn"])
    save_quantized(q, tmp_path / "q", TOKENIZER)
    code, _, err = run_cli(capsys, "export", tmp_path / "q", "--out", tmp_path / "q.onnx")
    assert code == 0, err
    meta = {p.key: p.value for p in onnx.load(tmp_path / "q.onnx").metadata_props}
    assert json.loads(meta["recipe"])["name"] == "w4a16-rtn" and meta["model_fingerprint"] == m.provenance.fingerprint


def test_ort_perplexity_of_a_model_far_from_the_text_is_inf_not_an_overflow(tmp_path):
    """Like the PyTorch evaluator: a mean NLL past exp's range (a broken quantization, say) is an
    infinite perplexity to report, not a traceback from ``rnnquant compare``."""
    m = _model("lstm")
    with torch.no_grad():
        m.lm_head.weight.mul_(1e4)  # logits ~1e4 apart
    lm = OrtLM(export_step(m, tmp_path / "m.onnx", TOKENIZER))
    assert lm.perplexity(IDS[:300].numpy(), window=100)[0] == math.inf


def test_ort_perplexity_bounds_the_logits_of_one_call(tmp_path):
    """Windows go to the prefill graph in batches whose float32 logits fit ``logits_bytes``, the
    perplexity unchanged (at a 50,280-word vocabulary 8 windows of 512 were 822 MB of logits)."""
    lm = OrtLM(export_step(_model("mamba"), tmp_path / "m.onnx", TOKENIZER))
    ids = IDS[:1000].numpy()
    whole = lm.perplexity(ids, window=64)
    seen, prefill = [], lm.prefill
    lm.prefill = lambda x, state, **kw: seen.append(len(x)) or prefill(x, state, **kw)
    bounded = lm.perplexity(ids, window=64, logits_bytes=2 * 64 * lm.vocab_size * 4)  # two windows of 64 predicted positions
    assert max(seen) == 2 and sum(seen) == 16
    assert bounded[1] == whole[1] and math.isclose(bounded[0], whole[0], rel_tol=1e-6)


def _prepacks(session) -> bool:
    try:
        return session.get_session_options().get_session_config_entry("session.disable_prepacking") != "1"
    except Exception:  # noqa: BLE001 - ORT raises when the entry was never set: its default, pre-packing
        return True


@pytest.mark.parametrize(("arch", "preset", "prefill_prepacks"), [("mamba", "w8a8-dynamic", False), ("mamba", None, False),
                                                                   ("mamba", "w4a16-rtn", True), ("lstm", "w8a8-dynamic", True)])
def test_only_the_step_session_keeps_packed_weights(tmp_path, arch, preset, prefill_prepacks):
    """The step session pre-packs its weights (a batch-1 matmul needs them packed); a parallel
    prefill graph's MatMul / MatMulInteger pack theirs per call instead (many rows: no slower),
    which spares a second copy of the weights. MatMulNBits (no fast unpacked path) and a Loop
    prefill (the step graph, one token per iteration) keep pre-packing."""
    m = _model(arch)
    lm = OrtLM(export_step(quantize(m, PRESETS[preset]) if preset else m, tmp_path / "m.onnx", TOKENIZER))
    assert _prepacks(lm.session)
    assert _prepacks(lm.prefill_session) == prefill_prepacks


@pytest.mark.parametrize("arch", ["mamba", "mamba2-groups", "rwkv7", "mingru", "minlstm", "recurrent_gemma", "xlstm", "rwkv", "lstm", "lstmp", "gru-tied-nobias"])
def test_prefill_then_step_equals_stepping(tmp_path, arch):
    m = _model(arch)
    q = quantize(m, PRESETS["w8a8-dynamic"]) if m.model_type in ("lstm", "gru") else m
    lm = OrtLM(export_step(q, tmp_path / "m.onnx", TOKENIZER))
    assert lm.prefill_session is not None
    ids = IDS[:2 * 40].view(2, 40).numpy()
    logits, state = lm.prefill(ids[:, :25], lm.init_state(2))
    stepped, s2 = [], lm.init_state(2)
    for t in range(40):
        out, s2 = lm.step(ids[:, t], s2)
        stepped.append(out)
    for t in range(25, 40):
        out, state = lm.step(ids[:, t], state)
        assert np.abs(out - stepped[t]).max() <= 1e-4
    assert np.abs(logits - np.stack(stepped[:25], 1)).max() <= 1e-4
    for a, b in zip(state, s2, strict=True):
        assert np.abs(a - b).max() <= 1e-4


@pytest.mark.parametrize("arch", ["mamba", "mamba2", "rwkv", "rwkv7", "mingru", "recurrent_gemma", "xlstm", "lstm"])
def test_prefill_form(tmp_path, arch):
    """Every prefill graph but the LSTM's is forward_with_state traced
    (no Loop: projections over the whole sequence, a parallel scan; RecurrentGemma's local attention
    over its cache and the whole call, 128 tokens past its window of 8), fed in windows by the runner;
    the LSTM's is a Loop over the step graph."""
    lm = OrtLM(export_step(_model(arch), tmp_path / "m.onnx", TOKENIZER))
    graph = onnx.load(tmp_path / "m.prefill.onnx")
    meta = {p.key: p.value for p in graph.metadata_props}
    has_loop = any(n.op_type == "Loop" for n in graph.graph.node)
    assert (meta["prefill"], has_loop) == (("parallel", False) if arch != "lstm" else ("loop", True))
    ids = IDS[:3 * 130].view(3, 130).numpy()  # one whole call of the runner's 128-token window, and 2 more
    whole, state = lm.prefill(ids, lm.init_state(3))
    lm.prefill_window = 7  # seven calls, the state carried between them
    pieces, state_p = lm.prefill(ids, lm.init_state(3))
    assert np.abs(whole - pieces).max() <= 1e-4
    for a, b in zip(state, state_p, strict=True):
        assert np.abs(a - b).max() <= 1e-5


@pytest.mark.parametrize("arch", ["mamba", "lstm"])
def test_prefill_last_logits_only(tmp_path, arch):
    """--prefill-logits last: the prefill graph returns [B, V] for the last position (the same
    values as the all-positions graph); perplexity then falls back to the step graph."""
    m = _model(arch)
    every = OrtLM(export_step(m, tmp_path / "all" / "m.onnx", TOKENIZER))
    last = OrtLM(export_step(m, tmp_path / "last" / "m.onnx", TOKENIZER, prefill_logits="last"))
    meta = {p.key: p.value for p in onnx.load(tmp_path / "last" / "m.prefill.onnx").metadata_props}
    assert meta["prefill_logits"] == "last" and last.prefill_last_only
    ids = IDS[:2 * 30].view(2, 30).numpy()
    feeds = {"prompt_ids": ids} | {s["name"]: v for s, v in zip(last.states, last.init_state(2))}
    raw, *_ = last.prefill_session.run(None, feeds)
    assert raw.shape == (2, m.vocab_size)
    (la, sa), (ll, sl) = every.prefill(ids, every.init_state(2)), last.prefill(ids, last.init_state(2), all_logits=False)
    assert ll.shape == (2, 1, m.vocab_size) and np.abs(ll[:, 0] - la[:, -1]).max() <= 1e-4
    assert all(np.abs(a - b).max() <= 1e-5 for a, b in zip(sa, sl))
    test = IDS[-300:].numpy()
    ppl_last, ppl_all = last.perplexity(test, window=64)[0], every.perplexity(test, window=64)[0]
    assert abs(ppl_last - ppl_all) / ppl_all <= 1e-5
    assert next(last.generate([1, 2, 3], 1)) == next(every.generate([1, 2, 3], 1))


def test_prefill_graph_from_another_export_is_refused(tmp_path):
    """A prefill graph left beside a step graph of another model is an error, not silent use."""
    import shutil

    a = export_step(_model("mamba"), tmp_path / "a" / "m.onnx", TOKENIZER)
    other = tiny_model("mamba")
    with torch.no_grad():
        other.lm_head.weight.mul_(2)
    other.provenance = other.provenance.derive(fingerprint=fingerprint(other))
    b = export_step(other, tmp_path / "b" / "m.onnx", TOKENIZER)
    shutil.copyfile(b.with_suffix(".prefill.onnx"), a.with_suffix(".prefill.onnx"))
    with pytest.raises(RnnquantError, match="exported with another model"):
        OrtLM(a)


def test_failed_prefill_write_leaves_no_step_graph(monkeypatch, tmp_path):
    """The step graph, its prefill graph and their weights are one export: if the prefill cannot
    be written, none is left (nor a stale prefill of an earlier export)."""
    from rnnquant.exporters import onnx_export
    from rnnquant.exporters.prefill import weights_path

    out = export_step(_model("lstm"), tmp_path / "m.onnx", TOKENIZER)
    real = onnx_export._check_loads

    def failing(path):
        if ".prefill." in path.name:
            raise RnnquantError("ONNX Runtime cannot load the exported graph: injected")
        real(path)

    monkeypatch.setattr(onnx_export, "_check_loads", failing)
    with pytest.raises(RnnquantError, match="injected"):
        export_step(_model("mamba"), out, TOKENIZER)
    assert not out.exists() and not out.with_suffix(".prefill.onnx").exists() and not weights_path(out).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json"]  # no temporary left either


def _external_bytes(graph_path) -> dict[int, int]:
    """offset -> length of every tensor a graph reads from its external-data file."""
    refs = {}
    for t in onnx.load(graph_path, load_external_data=False).graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in t.external_data}
            assert info["location"] == "m.onnx.data", info
            refs[int(info["offset"])] = int(info["length"])
    return refs


@pytest.mark.parametrize("recipe", [None, "w4a16-rtn", "w8a8-dynamic"])  # float initializers; traced integer Constants
@pytest.mark.parametrize("arch", ["mamba", "lstm"])  # a traced parallel prefill graph, a Loop over the step graph
def test_step_and_prefill_share_one_weights_file(tmp_path, arch, recipe):
    from rnnquant.exporters.onnx_export import WEIGHTS_MIN_BYTES

    m = _model(arch) if recipe is None else quantize(_model(arch), PRESETS[recipe])
    out = export_step(m, tmp_path / "m.onnx", TOKENIZER)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data", "m.prefill.onnx", "tokenizer.json"]
    step, prefill = _external_bytes(out), _external_bytes(out.with_suffix(".prefill.onnx"))
    assert sum(step.values()) > 0.9 * (tmp_path / "m.onnx.data").stat().st_size  # the file is the step graph's weights
    assert sum(n for off, n in prefill.items() if off not in step) < 0.05 * sum(step.values())  # the prefill adds < 5 %
    for graph in (out, out.with_suffix(".prefill.onnx")):
        g = onnx.load(graph, load_external_data=False).graph
        for t in g.initializer:
            assert t.data_location == onnx.TensorProto.EXTERNAL or len(t.raw_data) < WEIGHTS_MIN_BYTES
        assert all(len(a.t.raw_data) < WEIGHTS_MIN_BYTES for n in g.node if n.op_type == "Constant" for a in n.attribute)


def test_weights_file_aligns_large_tensors_without_padding_between_small_ones(tmp_path):
    """Graph order alternates small and 1 MiB+ tensors; the file holds them all, each large one at a
    64 KiB boundary, with under 64 KiB of padding in all (not up to 64 KiB per large tensor)."""
    from onnx import helper, numpy_helper

    from rnnquant.exporters.onnx_export import MAP_ALIGN_BYTES, MAP_MIN_BYTES, write_weights

    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(n).astype(np.float32) for n in (3000, 2**18, 700, 2**18 + 2**14, 1500, 2**19)]  # large: 64 KiB multiples, as weights are
    inits = [numpy_helper.from_array(a, f"t{i}") for i, a in enumerate(arrays)]
    proto = helper.make_model(helper.make_graph([], "g", [], [], initializer=inits))
    write_weights([proto], tmp_path / "w.data")
    data = (tmp_path / "w.data").read_bytes()
    assert len(data) - sum(a.nbytes for a in arrays) < MAP_ALIGN_BYTES
    for t, a in zip(proto.graph.initializer, arrays, strict=True):
        info = {e.key: int(e.value) for e in t.external_data if e.key != "location"}
        assert data[info["offset"] : info["offset"] + info["length"]] == a.tobytes()
        assert a.nbytes < MAP_MIN_BYTES or info["offset"] % MAP_ALIGN_BYTES == 0


@pytest.mark.parametrize("arch", ["mamba", "recurrent_gemma"])  # float states; an int64 position state
def test_bound_step_equals_step_bit_for_bit(tmp_path, arch):
    from rnnquant.exporters.runner import BoundStep

    lm = OrtLM(export_step(_model(arch), tmp_path / "m.onnx", TOKENIZER))
    state = lm.init_state(1)
    bound = BoundStep(lm, state)
    for t in IDS[:24].tolist():
        logits, state = lm.step(np.array([t]), state)
        assert np.array_equal(bound.step(t), logits)
    assert all(np.array_equal(a, b) for a, b in zip(bound.state, state, strict=True))
