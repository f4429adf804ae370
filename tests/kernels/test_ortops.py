"""rnnquant's ONNX Runtime custom ops (``export --fused``) against their PyTorch twins and the stock graph."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from rnnquant.exporters.onnx_export import export_step
from rnnquant.exporters.runner import OrtLM
from rnnquant.kernels import ortops
from rnnquant.calibrate import CalibConfig, calibrate, calibration_batches
from rnnquant.kernels.fused import ConvSiluStep, GatedSelectiveStep, Int4Linear, pack_int8, pack_nbits, packed_rows, unpack_int8, unpack_nbits
from rnnquant.models import fingerprint
from rnnquant.models.rwkv7 import attention
from rnnquant.models.ssd import ssd_step
from rnnquant.models.ssm import causal_conv_silu_step, selective_state_update, softplus
from rnnquant.exporters.qops import _int8_matmul, static_w8_reference
from rnnquant.quant import PRESETS, quantize
from tests.conftest import CONTRACT, TOKENIZER, tiny_model
from tests.helpers import assert_one_line_error

IDS = torch.randint(0, 4096, (2, 48), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def library():
    return ortops.build()


def _op_session(library, op: str, inputs: dict[str, np.ndarray], n_out: int = 2, **attrs):
    """A one-node graph of ``op`` (inputs of their arrays' types, float outputs) in a session with the library."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    outs = [f"out{i}" for i in range(n_out)]
    graph = helper.make_graph([helper.make_node(op, list(inputs), outs, domain=ortops.DOMAIN, **attrs)], op,
                              [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for k, v in inputs.items()],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(ortops.DOMAIN, 1)])
    opts = ort.SessionOptions()
    ortops.register(opts)
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, inputs)


@pytest.mark.parametrize("K", [2, 4])
def test_conv_silu_step_op_is_its_twin(library, K):
    g = torch.Generator().manual_seed(K)
    state, x, w, b = torch.randn(3, K - 1, 40, generator=g), torch.randn(3, 40, generator=g), torch.randn(K, 40, generator=g), torch.randn(40, generator=g)
    y, new_state = _op_session(library, "ConvSiluStep", {k: v.numpy() for k, v in zip(("state", "x", "w", "b"), (state, x, w, b))})
    y_ref, state_ref = causal_conv_silu_step(state, x, w, b)
    np.testing.assert_allclose(y, y_ref.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(new_state, state_ref.numpy())  # a shift: exact


@pytest.mark.parametrize("E,N", [(40, 16), (600, 16), (40, 5), (40, 1)])  # the op's tasks: slices of the N state rows, one uneven, one row
def test_gated_selective_step_op_is_its_twin(library, E, N):
    g = torch.Generator().manual_seed(0)
    B = 3
    u, z = torch.randn(B, E, generator=g), torch.randn(B, E, generator=g)
    dt_raw = torch.randn(B, E, generator=g) * 4  # both softplus branches, far from 0 too
    A = -torch.exp(torch.randn(E, N, generator=g))
    Bm, Cm, D, h = torch.randn(B, N, generator=g), torch.randn(B, N, generator=g), torch.randn(E, generator=g), torch.randn(B, N, E, generator=g)
    feeds = dict(zip(("u", "dt_raw", "At", "Bm", "Cm", "D", "z", "h"), (u, dt_raw, A.T.contiguous(), Bm, Cm, D, z, h)))
    y, h_new = _op_session(library, "GatedSelectiveStep", {k: v.numpy() for k, v in feeds.items()})
    y_ref, h_ref = selective_state_update(u, softplus(dt_raw), A, Bm, Cm, D, h)
    np.testing.assert_allclose(h_new, h_ref.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y, (y_ref * torch.nn.functional.silu(z)).numpy(), rtol=1e-5, atol=1e-5)


def test_the_functions_trace_values_are_the_twins(library):
    """Outside a session the autograd Functions compute their twins' values (what the trace sees)."""
    g = torch.Generator().manual_seed(1)
    state, x, w, b = torch.randn(2, 3, 8, generator=g), torch.randn(2, 8, generator=g), torch.randn(4, 8, generator=g), torch.randn(8, generator=g)
    for a, r in zip(ConvSiluStep.apply(state, x, w, b), causal_conv_silu_step(state, x, w, b)):
        assert torch.equal(a, r)
    u, dt, z, A = torch.randn(2, 8, generator=g), torch.randn(2, 8, generator=g), torch.randn(2, 8, generator=g), -torch.rand(8, 5, generator=g)
    Bm, Cm, D, h = torch.randn(2, 5, generator=g), torch.randn(2, 5, generator=g), torch.randn(8, generator=g), torch.randn(2, 5, 8, generator=g)
    y, h1 = GatedSelectiveStep.apply(u, dt, A.T, Bm, Cm, D, z, h)
    y_ref, h_ref = selective_state_update(u, softplus(dt), A, Bm, Cm, D, h)
    assert torch.equal(h1, h_ref) and torch.equal(y, y_ref * torch.nn.functional.silu(z))


def _model(arch):
    m = tiny_model(arch)
    m.provenance = m.provenance.derive(fingerprint=fingerprint(m))
    return m


@pytest.mark.parametrize("residual", [False, True])  # layer 0 (no value residual); a later layer
def test_rwkv7_attention_step_op_is_its_twin(library, residual):
    g = torch.Generator().manual_seed(2)
    B, H, N = 2, 3, 16
    S = torch.randn(B, H, N, N, generator=g)
    rows = [torch.randn(B, H * N, generator=g) * 2 for _ in range(8)]  # r, w_l, k, v, a_l, g, v_first, v_l
    rows[7][0, :N] = torch.linspace(-3, 3, N)  # v_l across 0, so lerp's weight takes both of its branches
    params = [torch.randn(H * N, generator=g) for _ in range(2)] + [torch.randn(H, N, generator=g)] + [torch.randn(H * N, generator=g) for _ in range(2)]
    inputs = [S, *rows[:6], *params] + (rows[6:] if residual else [])
    names = ["S", "r", "w_l", "k", "v", "a_l", "g", "k_k", "k_a", "r_k", "gn_w", "gn_b", "v_first", "v_l"]
    y, S_new = _op_session(library, "Rwkv7AttentionStep", {n: t.numpy() for n, t in zip(names, inputs)}, eps=0.64)
    y_ref, S_ref = attention(*inputs[:12], 0.64, *(rows[6:] if residual else (None, None)))
    np.testing.assert_allclose(S_new, S_ref.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y, y_ref.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("G", [1, 2])  # one group of B, C for every head; two, each shared by 2 heads
def test_ssd_step_op_is_its_twin(library, G):
    g = torch.Generator().manual_seed(3)
    B, H, P, N = 2, 4, 24, 16
    x, dt = torch.randn(B, H, P, generator=g), torch.rand(B, H, generator=g)
    A, D = -torch.rand(H, generator=g) * 4, torch.randn(H, generator=g)
    Bm, Cm, h = torch.randn(B, G, N, generator=g), torch.randn(B, G, N, generator=g), torch.randn(B, H, N, P, generator=g)
    y, h_new = _op_session(library, "SSDStep", {n: t.numpy() for n, t in zip(("x", "dt", "A", "Bm", "Cm", "D", "h"), (x, dt, A, Bm, Cm, D, h))})
    y_ref, h_ref = ssd_step(x, dt, A, Bm, Cm, D, h, (H, P, G, N))
    np.testing.assert_allclose(h_new, h_ref.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y, y_ref.numpy(), rtol=1e-5, atol=1e-4)


# the ops each architecture's fused step has per layer, and how many stock nodes a layer at least saves
FUSED = {"mamba": ({"ConvSiluStep", "GatedSelectiveStep"}, 30), "falcon_mamba": ({"ConvSiluStep", "GatedSelectiveStep"}, 30),
         "mamba2": ({"ConvSiluStep", "SSDStep"}, 30), "rwkv7": ({"Rwkv7AttentionStep"}, 60)}


@pytest.mark.parametrize("arch", sorted(FUSED))
def test_fused_step_graph_equals_the_stock_one(library, tmp_path, arch):
    """48 steps from the initial state, batch 2: the same logits and states as the stock-op graph."""
    m = _model(arch)
    stock = OrtLM(export_step(m, tmp_path / "stock.onnx", TOKENIZER, prefill=False))
    fused = OrtLM(export_step(m, tmp_path / "fused.onnx", TOKENIZER, prefill=False, fused=True))
    nodes = {k: [n.op_type for n in onnx.load(tmp_path / f"{k}.onnx", load_external_data=False).graph.node] for k in ("stock", "fused")}
    ops, saved = FUSED[arch]
    layers = m.config["num_hidden_layers"]
    assert all(nodes["fused"].count(op) == layers for op in ops)
    assert len(nodes["stock"]) - len(nodes["fused"]) >= saved * layers
    s_state, f_state = stock.init_state(2), fused.init_state(2)
    for t in range(IDS.shape[1]):
        s_logits, s_state = stock.step(IDS[:, t].numpy(), s_state)
        f_logits, f_state = fused.step(IDS[:, t].numpy(), f_state)
        np.testing.assert_allclose(f_logits, s_logits, rtol=1e-4, atol=1e-4)
    for a, b in zip(f_state, s_state, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_fused_graph_says_it_needs_the_library(tmp_path):
    path = export_step(_model("mamba"), tmp_path / "f.onnx", TOKENIZER, fused=True)
    meta = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
    assert meta["custom_ops"] == ortops.DOMAIN
    prefill = onnx.load(tmp_path / "f.prefill.onnx", load_external_data=False)
    assert all(n.domain != ortops.DOMAIN for n in prefill.graph.node)  # the prefill graph stays stock ops


def test_export_fused_refuses_a_model_without_fused_ops(capsys, tmp_path):
    from rnnquant.io import save_checkpoint

    save_checkpoint(tiny_model("lstm"), tmp_path / "lstm", tokenizer_path=TOKENIZER)
    assert_one_line_error(capsys, "export", tmp_path / "lstm", "--fused", "--out", tmp_path / "o" / "a.onnx", match="has no fused op")
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


def test_a_refused_export_leaves_no_directory_it_made(capsys, tmp_path):
    """The output's parent directories that the export created go again when it fails; one that was there stays."""
    from rnnquant.io import save_checkpoint

    save_checkpoint(tiny_model("lstm"), tmp_path / "lstm", tokenizer_path=TOKENIZER)
    assert_one_line_error(capsys, "export", tmp_path / "lstm", "--fused", "--out", tmp_path / "new" / "deeper" / "a.onnx", match="has no fused op")
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()
    assert_one_line_error(capsys, "export", tmp_path / "lstm", "--fused", "--out", tmp_path / "kept" / "a.onnx", match="has no fused op")
    assert (tmp_path / "kept").is_dir() and not list((tmp_path / "kept").iterdir())


def test_export_fused_refusal_is_one_line_on_the_process_stderr(tmp_path):
    """The exporter's own C++ warnings count too (capsys does not see them): nothing but the error line."""
    import os
    import subprocess
    import sys

    from rnnquant.io import save_checkpoint

    save_checkpoint(tiny_model("lstm"), tmp_path / "lstm", tokenizer_path=TOKENIZER)
    res = subprocess.run([sys.executable, "-m", "rnnquant.cli", "export", str(tmp_path / "lstm"), "--fused", "--out", str(tmp_path / "a.onnx")],
                         capture_output=True, text=True, env=os.environ | {"PYTHONPATH": os.getcwd()}, timeout=300)
    assert res.returncode == 2 and res.stderr.startswith("error: --fused") and res.stderr.count("\n") == 1, res.stderr


@pytest.mark.parametrize("other", [["--web"], ["--ort"], ["--format", "qoperator"]])
def test_export_fused_refuses_runtimes_without_the_library(capsys, tmp_path, other):
    assert_one_line_error(capsys, "export", "mamba-pydoc", "--fused", *other, "--out", tmp_path / "a.onnx", match="--fused")
    assert not list(tmp_path.glob("a*"))


def test_a_library_that_cannot_be_built_is_one_line(capsys, tmp_path, monkeypatch, library):
    """No compiler that works: one line, exit 2, before any export work, and no library left behind."""
    cache = tmp_path / "cache"
    (cache / "ortops").mkdir(parents=True)
    (cache / "ortops" / "include").symlink_to(library.parent.parent / "include")  # the headers, not the built library
    monkeypatch.setenv("RNNQUANT_CACHE", str(cache))
    monkeypatch.setenv("CXX", "false")
    assert_one_line_error(capsys, "export", "mamba-pydoc", "--fused", "--out", tmp_path / "a.onnx", match="cannot build the fused-op library")
    assert not ortops.library_path().exists() and not list(tmp_path.glob("a*"))


def test_loading_the_library_keeps_subnormals(library):
    """The library must not set flush-to-zero for the process (GCC's crtfastmath.o does, when a
    -ffast-math shared object is linked with -ffast-math): torch and numpy would lose subnormals."""
    _op_session(library, "ConvSiluStep", {"state": np.ones((1, 1, 4), np.float32), "x": np.ones((1, 4), np.float32),
                                          "w": np.ones((2, 4), np.float32), "b": np.zeros(4, np.float32)})
    tiny = np.finfo(np.float32).tiny
    assert np.float32(tiny) / np.float32(4) > 0 and torch.tensor(tiny) / 4 > 0


def test_run_loads_the_library_without_torch(tmp_path, library):
    """`rnnquant run` on a fused graph where torch cannot be imported: the runner builds nothing new
    and loads the library itself (its metadata says so)."""
    import os
    import subprocess
    import sys

    path = export_step(_model("mamba"), tmp_path / "f.onnx", TOKENIZER, fused=True)
    code = "import sys; sys.modules['torch'] = None; from rnnquant.cli import main; main(sys.argv[1:])"
    res = subprocess.run([sys.executable, "-c", code, "run", str(path), "--prompt", "def f(x):", "--max-new-tokens", "8"],
                         capture_output=True, text=True, env=os.environ | {"PYTHONPATH": os.getcwd()}, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("def f(x):") and "decode 8 tokens" in res.stderr


def test_runner_refuses_custom_ops_of_another_domain(capsys, tmp_path):
    path = export_step(_model("mamba"), tmp_path / "f.onnx", TOKENIZER, fused=True, prefill=False)
    proto = onnx.load(path, load_external_data=False)
    next(p for p in proto.metadata_props if p.key == "custom_ops").value = "x.other"
    onnx.save(proto, path)
    assert_one_line_error(capsys, "run", path, "--prompt", "def", "--max-new-tokens", "2", match="custom ops of domain 'x.other'")


# ---- Int8Linear: every static int8 Linear of a `--fused --cpu vnni` step graph ----------------

def test_packed_codes_unpack_to_the_codes():
    codes = torch.randint(-127, 128, (45, 37), dtype=torch.int8, generator=torch.Generator().manual_seed(4))  # N, K: both padded
    packed, colsum = pack_int8(codes)
    assert packed.shape == (3, 10, 16, 4) and torch.equal(colsum, codes.sum(1, dtype=torch.int32))
    assert torch.equal(unpack_int8(packed, 37, 45), codes.T)
    ids = torch.tensor([0, 17, 44, 17])
    assert torch.equal(packed_rows(packed, ids, 37), codes[ids])  # a tied embedding's rows


@pytest.mark.parametrize("dynamic,bias", [(False, False), (False, True), (True, False)])
@pytest.mark.parametrize("K,N", [(37, 45), (64, 80), (48, 200)])  # padded K and N; one full task of 4 tiles and a partial one
def test_int8_linear_op_is_its_twin(library, K, N, dynamic, bias):
    """Bit for bit: the same int32 sums and the same float roundings as the stock chains (static:
    the activations' saturation included, x up to 300 scales, the bias added last; dynamic: each row's own scale)."""
    g = torch.Generator().manual_seed(K + N)
    codes = torch.randint(-127, 128, (N, K), dtype=torch.int8, generator=g)
    x = torch.randn(3, 2, K, generator=g) * torch.tensor([1.0, 300.0]).reshape(1, 2, 1)
    a_scale, w_scale = torch.tensor(0.02), torch.rand(N, generator=g) * 1e-2
    packed, colsum = pack_int8(codes)
    b = torch.randn(N, generator=g)
    feeds = {"x": x.numpy(), "W": packed.numpy(), "colsum": colsum.numpy(), "w_scale": w_scale.numpy()} | ({} if dynamic else {"a_scale": a_scale.numpy()})
    feeds |= {"bias": b.numpy()} if bias else {}
    (y,) = _op_session(library, "Int8Linear", feeds, n_out=1)
    if dynamic:  # the stock graph's scale: Max(amax, 127e-12) / 127 (the simulation clamps after the division)
        s = torch.maximum(x.abs().amax(-1, keepdim=True), torch.tensor(1e-12 * 127)) / 127
        ref = _int8_matmul(torch.round(x / s), codes.T) * s * w_scale
    else:
        ref = static_w8_reference(x, w_scale, a_scale, codes.T) + (b if bias else 0)
    np.testing.assert_array_equal(y, ref.numpy())


def _static_int8(arch):
    m = _model(arch)
    ids = IDS.reshape(-1)
    return quantize(m, PRESETS["w8a8-outlier"], calibrate(m, ids, CalibConfig(samples=4, seq_len=24)), calibration_batches(ids, 4, 24, 2))


@pytest.mark.parametrize("arch", ["mamba", "lstm"])  # with fused step ops, and an architecture with none
def test_fused_static_int8_linears_are_the_stock_integers(library, tmp_path, arch):
    """`--fused --cpu vnni`: every static int8 Linear is one Int8Linear (the tied head's lookup reads
    its packed codes) and the logits are the U8U8 stock graph's, step by step and through the
    prefill graph, which reads the same packed initializers: the weights are stored once."""
    q = _static_int8(arch)
    stock = OrtLM(export_step(q, tmp_path / "stock.onnx", TOKENIZER))
    fused = OrtLM(export_step(q, tmp_path / "fused.onnx", TOKENIZER, int8_weights="int8", fused=True))
    step = [n.op_type for n in onnx.load(tmp_path / "fused.onnx", load_external_data=False).graph.node]
    assert "MatMulInteger" not in step and step.count("Int8Linear") == sum(1 for m in q.modules() if type(m).__name__ == "QLinear")
    s_state, f_state = stock.init_state(2), fused.init_state(2)
    for t in range(24):
        s_logits, s_state = stock.step(IDS[:, t].numpy(), s_state)
        f_logits, f_state = fused.step(IDS[:, t].numpy(), f_state)
        np.testing.assert_allclose(f_logits, s_logits, rtol=1e-4, atol=1e-4)
    s_logits, _ = stock.prefill(IDS[:, :24].numpy(), stock.init_state(2))
    f_logits, _ = fused.prefill(IDS[:, :24].numpy(), fused.init_state(2))
    np.testing.assert_allclose(f_logits, s_logits, rtol=1e-4, atol=1e-4)
    data = {k: (tmp_path / f"{k}.onnx.data").stat().st_size for k in ("stock", "fused")}
    assert data["fused"] <= 1.3 * data["stock"]  # tiny shapes: tiles' padding and column sums, not a second copy


def test_fused_dynamic_int8_linears_are_the_stock_integers(library, tmp_path):
    """w8a8-dynamic (and every 4-bit preset's int8 head): each row's own scale, in the op."""
    q = quantize(_model("mamba"), PRESETS["w8a8-dynamic"])
    stock = OrtLM(export_step(q, tmp_path / "stock.onnx", TOKENIZER, prefill=False))
    fused = OrtLM(export_step(q, tmp_path / "fused.onnx", TOKENIZER, int8_weights="int8", fused=True, prefill=False))
    assert "MatMulInteger" not in [n.op_type for n in onnx.load(tmp_path / "fused.onnx", load_external_data=False).graph.node]
    s_state, f_state = stock.init_state(2), fused.init_state(2)
    for t in range(24):
        s_logits, s_state = stock.step(IDS[:, t].numpy(), s_state)
        f_logits, f_state = fused.step(IDS[:, t].numpy(), f_state)
        np.testing.assert_allclose(f_logits, s_logits, rtol=1e-4, atol=1e-4)


# ---- Int4Linear: every 4-bit A8 Linear of a `--fused` step graph ----------------------------

def test_packed_nbits_unpack_to_matmulnbits_inputs():
    g = torch.Generator().manual_seed(5)
    N, blocks, block = 45, 3, 16
    b = torch.randint(0, 256, (N, blocks, block // 2), dtype=torch.uint8, generator=g)
    scales, zeros = torch.rand(N * blocks, generator=g), torch.randint(0, 256, (N * 2,), dtype=torch.uint8, generator=g)
    B, S, Z = pack_nbits(b, scales, zeros, block)
    assert B.shape == (3, 6, 16, 4) and S.shape == (3, 3, 16) and Z.shape == (3, 2, 16)
    assert B[1, 2, 3, 1] == b.reshape(N, -1)[19, 9] and S[2, 1, 5] == scales.reshape(N, blocks)[37, 1]  # [t, o, c, j]: byte 4o + j of row 16t + c
    for mine, theirs in zip(unpack_nbits(B, S, Z, N, block), (b, scales, zeros)):
        assert torch.equal(mine, theirs)


@pytest.mark.parametrize("zeros", [True, False])
@pytest.mark.parametrize("K,N,block", [(48, 45, 16), (64, 80, 32), (256, 200, 128)])  # an odd number of groups; 4-tile tasks and a partial one
def test_int4_linear_op_is_its_twin(library, K, N, block, zeros):
    """The simulation's values: per-token int8 activations, each group's codes less its zero point (8
    without zero points) times its scale; exact integer sums, so only float rounding differs."""
    g = torch.Generator().manual_seed(K + N)
    blocks = K // block
    b = torch.randint(0, 256, (N, blocks, block // 2), dtype=torch.uint8, generator=g)
    scales = torch.rand(N * blocks, generator=g) * 1e-2
    z = torch.randint(0, 256, (N * -(-blocks // 2),), dtype=torch.uint8, generator=g) if zeros else None
    B, S, Z = pack_nbits(b, scales, z, block)
    x = torch.randn(3, 2, K, generator=g) * torch.tensor([1.0, 300.0]).reshape(1, 2, 1)
    feeds = {"x": x.numpy(), "B": B.numpy(), "S": S.numpy()} | ({"Z": Z.numpy()} if zeros else {})
    (y,) = _op_session(library, "Int4Linear", feeds, n_out=1, group=block, N=N)
    ref = Int4Linear.apply(x, B, S, Z, N, block)
    np.testing.assert_allclose(y, ref.numpy(), rtol=1e-5, atol=1e-5 * ref.abs().max().item())


def test_fused_int4_linears_are_the_simulation(library, tmp_path):
    """w4a8 with `--fused`: every 4-bit Linear whose width its group divides is one Int4Linear, and
    the step follows the PyTorch model's own step to 1e-4 (ONNX Runtime's MatMulNBits quantizes the
    activations per 32-input block instead, 0.2 off here); the prefill graph reads the same bytes."""
    from dataclasses import replace

    from rnnquant.models import build

    recipe = replace(PRESETS["w4a8"], hadamard=False, rules=[replace(r, w_method="rtn") for r in PRESETS["w4a8"].rules])
    torch.manual_seed(0)
    wide = build(CONTRACT["mamba"] | {"hidden_size": 64}).eval()  # two or more groups per row in every Linear (the zoo's case)
    wide.provenance = wide.provenance.derive(fingerprint=fingerprint(wide))
    q = quantize(wide, recipe)
    stock = OrtLM(export_step(q, tmp_path / "stock.onnx", TOKENIZER))
    fused = OrtLM(export_step(q, tmp_path / "fused.onnx", TOKENIZER, fused=True))
    step = [n.op_type for n in onnx.load(tmp_path / "fused.onnx", load_external_data=False).graph.node]
    assert step.count("Int4Linear") == 3 * q.config["num_hidden_layers"]  # in_proj, x_proj, out_proj (dt_proj's 2 inputs: stock)
    state, f_state = q.init_state(1), fused.init_state(1)
    with torch.no_grad():
        for t in range(24):
            logits, state = q.step(IDS[:1, t], state)
            f_logits, f_state = fused.step(IDS[:1, t].numpy(), f_state)
            np.testing.assert_allclose(f_logits, logits.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(fused.prefill(IDS[:1, :24].numpy(), fused.init_state(1))[0], stock.prefill(IDS[:1, :24].numpy(), stock.init_state(1))[0])
    assert (tmp_path / "fused.onnx.data").stat().st_size <= 1.3 * (tmp_path / "stock.onnx.data").stat().st_size


@pytest.mark.skipif(__import__("platform").machine() not in ("x86_64", "AMD64"), reason="an x86 build without VNNI")
def test_the_portable_loops_compute_the_same_linears(library, monkeypatch):
    """Built for AVX2 only (no AVX-512, no VNNI: many users' CPUs), Int8Linear's and Int4Linear's C
    loops give the VNNI kernels' values: Int8Linear's bit for bit (every rounding written out)."""
    portable = ortops.build(march="x86-64-v3")
    monkeypatch.setattr(ortops, "register", lambda opts: opts.register_custom_ops_library(str(portable)))
    for dynamic, bias in ((False, False), (False, True), (True, False)):
        test_int8_linear_op_is_its_twin(portable, 37, 45, dynamic, bias)
    for zeros in (True, False):
        test_int4_linear_op_is_its_twin(portable, 48, 45, 16, zeros)
