"""Each Triton kernel against its PyTorch ``_ref`` twin, at small and edge shapes.

On CPU these run under TRITON_INTERPRET=1 (set by conftest.py); fp32 tolerance 1e-4. The same
tests run on a GPU unchanged, where fp16/bf16 inputs are also checked with looser tolerances.
"""
from __future__ import annotations

import pytest
import torch

from rnnquant.kernels.gemv import w4_gemv, w4_gemv_ref, w8_gemv, w8_gemv_ref
from rnnquant.kernels.selective_scan import selective_scan, selective_scan_ref, selective_state_update, selective_state_update_ref
from rnnquant.quant.primitives import quantize_weight_rtn
from rnnquant.quant.serialize import pack_codes

DEV = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 1e-1}
DTYPES = [torch.float32] + ([torch.float16, torch.bfloat16] if DEV == "cuda" else [])


def _rand(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(DEV, dtype)


@pytest.mark.parametrize("B", [1, 3, 8])
@pytest.mark.parametrize("N, K", [(48, 64), (70, 100)])  # 70, 100: not multiples of the blocks
@pytest.mark.parametrize("dtype", DTYPES)
def test_w8_gemv(B, N, K, dtype):
    qw = quantize_weight_rtn(_rand(N, K, seed=1).float().cpu(), 8, "channel", 0, True)
    q, s = qw.q.to(torch.int8).to(DEV), qw.scale[:, 0].to(DEV)
    x = _rand(B, K, seed=2, dtype=dtype)
    ref = w8_gemv_ref(x, q, s)
    assert (w8_gemv(x, q, s) - ref).abs().max() <= TOL[dtype] * max(1.0, ref.abs().max().item())


@pytest.mark.parametrize("B", [1, 8])
@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("N", [40, 65])
@pytest.mark.parametrize("sym", [True, False])
def test_w4_gemv(B, group, N, sym):
    K = 256
    qw = quantize_weight_rtn(_rand(N, K, seed=3).cpu(), 4, "group", group, sym)
    packed = pack_codes(qw).to(DEV)
    zeros = (torch.full_like(qw.scale, 8) if sym else qw.zero.float()).to(torch.uint8).to(DEV)
    x = _rand(B, K, seed=4)
    ref = w4_gemv_ref(x, packed, qw.scale.to(DEV), zeros, group)
    assert torch.allclose(ref.cpu(), x.cpu() @ qw.dequantize().T, atol=1e-4)  # the ref reads the exporter's packing
    assert (w4_gemv(x, packed, qw.scale.to(DEV), zeros, group) - ref).abs().max() <= 1e-4 * max(1.0, ref.abs().max().item())


def _ssm_inputs(B, T, E, N, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    u, z = r(B, T, E), r(B, T, E)
    dt = torch.nn.functional.softplus(r(B, T, E) - 2)
    A = -torch.exp(r(E, N) * 0.5)
    return [t.to(DEV) for t in (u, dt, A, r(B, T, N), r(B, T, N), r(E), z, r(B, N, E))]


@pytest.mark.parametrize("B, T, E, N", [(1, 5, 32, 16), (2, 9, 40, 8), (8, 3, 17, 4)])
def test_selective_scan(B, T, E, N):
    args = _ssm_inputs(B, T, E, N)
    y_ref, h_ref = selective_scan_ref(*args)
    y, h = selective_scan(*args)
    assert (y - y_ref).abs().max() <= 1e-4 and (h - h_ref).abs().max() <= 1e-4


@pytest.mark.parametrize("B, E, N", [(1, 32, 16), (8, 50, 16)])
def test_selective_state_update(B, E, N):
    u, dt, A, Bm, Cm, D, z, h = _ssm_inputs(B, 1, E, N, seed=5)
    args = (u[:, 0], dt[:, 0], A, Bm[:, 0], Cm[:, 0], D, z[:, 0], h)
    y_ref, h_ref = selective_state_update_ref(*args)
    y, h2 = selective_state_update(*args)
    assert (y - y_ref).abs().max() <= 1e-4 and (h2 - h_ref).abs().max() <= 1e-4


def test_refs_match_the_model():
    """The kernel refs compute what the Mamba adapter computes (gating included)."""
    from rnnquant.models.ssm import selective_scan as model_scan

    u, dt, A, Bm, Cm, D, z, h = [t.cpu() for t in _ssm_inputs(2, 7, 16, 8, seed=6)]
    y_model, h_model = model_scan(u, dt, A, Bm, Cm, D, h)
    y_ref, h_ref = selective_scan_ref(u, dt, A, Bm, Cm, D, z, h)
    assert torch.allclose(y_model * torch.nn.functional.silu(z), y_ref, atol=1e-5) and torch.allclose(h_model, h_ref, atol=1e-5)


def test_batch_limits():
    with pytest.raises(ValueError, match="batches of 1 to 8"):
        w8_gemv(torch.zeros(9, 16, device=DEV), torch.zeros(4, 16, dtype=torch.int8, device=DEV), torch.ones(4, device=DEV))


@torch.no_grad()
def test_model_dispatch_to_triton(monkeypatch):
    """RNNQUANT_KERNELS=triton routes the Mamba adapter's scan and step through the kernels."""
    from tests.conftest import tiny_model

    m = tiny_model("mamba")
    ids = torch.randint(0, 4096, (2, 12), generator=torch.Generator().manual_seed(0))
    ref = m(ids)
    _, ref_state = m.forward_with_state(ids, m.init_state(2))
    monkeypatch.setenv("RNNQUANT_KERNELS", "triton")
    assert (m(ids) - ref).abs().max() <= 1e-4
    _, state = m.forward_with_state(ids, m.init_state(2))
    logits, step_state = m.step(ids[:, 0], m.init_state(2))
    monkeypatch.setenv("RNNQUANT_KERNELS", "ref")
    ref_logits, ref_step_state = m.step(ids[:, 0], m.init_state(2))
    assert (logits - ref_logits).abs().max() <= 1e-4
    for got, want in [*zip(state, ref_state, strict=True), *zip(step_state, ref_step_state, strict=True)]:
        assert (got - want).abs().max() <= 1e-4  # the kernels' final states, not only their outputs


@torch.no_grad()
def test_qlinear_dispatch_to_gemv(monkeypatch):
    from rnnquant.quant import PRESETS, quantize
    from tests.conftest import tiny_model

    q = quantize(tiny_model("lstm"), PRESETS["w4a16-rtn"])
    ids = torch.randint(0, 4096, (3,), generator=torch.Generator().manual_seed(0))
    state = q.init_state(3)
    ref, _ = q.step(ids, state)
    monkeypatch.setenv("RNNQUANT_KERNELS", "triton")
    out, _ = q.step(ids, state)
    assert hasattr(q.layers[0].hh, "_gemv_w")  # the W4 recurrent matmul ran through the kernel
    assert (out - ref).abs().max() <= 1e-4
