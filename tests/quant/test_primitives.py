"""Round-trip error bounds, function-preserving transforms, GPTQ beating RTN."""
from __future__ import annotations

import pytest
import torch

from rnnquant.calibrate import CalibConfig, calibrate
from rnnquant.models import fingerprint
from rnnquant.quant.apply import smooth
from rnnquant.quant.gptq import HessianAccumulator, gptq_quantize
from rnnquant.quant.hadamard import hadamard_matrix
from rnnquant.quant.primitives import fake_quant_dynamic, fake_quant_static, quantize_weight_rtn
from tests.conftest import tiny_model


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("gran", ["tensor", "channel", "group"])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_weight_round_trip_bound(bits, gran, sym, group_size):
    """|w - w_hat| <= scale / 2 elementwise (round to nearest inside the clipping range)."""
    w = torch.randn(48, 256, generator=torch.Generator().manual_seed(bits + group_size))
    qw = quantize_weight_rtn(w, bits, gran, group_size, sym)
    err = (w - qw.dequantize()).abs()
    gs = qw.group_size
    s = qw.scale.repeat_interleave(gs, 1)[:, : w.shape[1]]
    assert (err <= s / 2 + 1e-6).all()
    lo, hi = (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if sym else (0, 2**bits - 1)
    assert qw.q.min() >= lo and qw.q.max() <= hi
    if gran == "group":
        assert qw.scale.shape == (48, 256 // group_size)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("sym", [True, False])
def test_codes_take_one_byte_each(bits, sym):
    """Codes are the bulk of a quantized model in memory: one byte each, from RTN and from GPTQ."""
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(bits))
    H = torch.eye(64) + 0.1
    for qw in (quantize_weight_rtn(w, bits, "group", 32, sym), gptq_quantize(w, H, bits, "channel", 32, sym)):
        assert qw.q.element_size() == 1


def test_activation_fake_quant_bounds():
    x = torch.randn(10, 64) * torch.linspace(0.1, 5, 64)
    d = fake_quant_dynamic(x, 8)
    assert ((d - x).abs() <= x.abs().amax(-1, keepdim=True) / 127 / 2 + 1e-6).all()
    s = torch.tensor(0.01)
    st = fake_quant_static(x, s, 8)
    inside = x.abs() <= 127 * 0.01
    assert ((st - x).abs()[inside] <= 0.005 + 1e-6).all()
    assert st.max() <= 1.27 + 1e-6 and st.min() >= -1.28 - 1e-6  # saturates like QuantizeLinear


@pytest.mark.parametrize("n", [16, 64, 512, 48, 96])
def test_hadamard_is_orthonormal(n):
    q = hadamard_matrix(n)
    assert torch.allclose(q @ q.T, torch.eye(n), atol=1e-5)


def test_hadamard_rotation_preserves_function():
    w, x = torch.randn(32, 64), torch.randn(5, 64)
    q = hadamard_matrix(64)
    assert torch.allclose((x @ q) @ (w @ q).T, x @ w.T, atol=1e-4)


@torch.no_grad()
def test_smoothquant_preserves_function():
    model = tiny_model("mamba")
    model.provenance = model.provenance.derive(fingerprint=fingerprint(model))
    ids = torch.randint(0, 4096, (3000,), generator=torch.Generator().manual_seed(0))
    calib = calibrate(model, ids, CalibConfig(samples=4, seq_len=64))
    x = ids[:96].view(2, 48)
    ref = model(x)
    smooth(model, calib, 0.5, {lin for _, lins in model.arch_spec().smoothing_pairs for lin in lins})
    assert (model(x) - ref).abs().max() <= 1e-4


def test_gptq_beats_rtn_on_correlated_inputs():
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(128, 128, generator=g) / 128**0.5
    x = torch.randn(4096, 128, generator=g) @ (torch.eye(128) + 2 * mix)  # correlated features
    x[:, :4] *= 8
    w = torch.randn(64, 128, generator=g)
    acc = HessianAccumulator(128)
    acc.add(x)
    for gran in ("channel", "group"):
        rtn = quantize_weight_rtn(w, 4, gran, 32, False).dequantize()
        gq = gptq_quantize(w, acc.hessian(), 4, gran, 32, False).dequantize()
        e_rtn = ((x @ (w - rtn).T) ** 2).mean()
        e_gptq = ((x @ (w - gq).T) ** 2).mean()
        assert e_gptq < 0.8 * e_rtn, (gran, e_gptq, e_rtn)


@pytest.mark.parametrize("gran, sym", [("channel", True), ("group", False)])
def test_gptq_keeps_a_pruning_mask(gran, sym):
    """Quantizing a pruned weight: GPTQ's updates would refill the zeros; with the mask fixed they
    stay exactly 0 and GPTQ still beats RTN on the layer error (SparseGPT's joint prune + quantize)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 128, generator=g) @ (torch.eye(128) + 2 * torch.randn(128, 128, generator=g) / 128**0.5)
    w = torch.randn(64, 128, generator=g)
    w = w * (torch.rand(64, 128, generator=g) > 0.5)  # 50 % pruned
    acc = HessianAccumulator(128)
    acc.add(x)
    free = gptq_quantize(w, acc.hessian(), 4, gran, 32, sym).dequantize()
    assert ((free != 0) & (w == 0)).any()  # the bug this guards against: zeros refilled
    kept = gptq_quantize(w, acc.hessian(), 4, gran, 32, sym, keep=w != 0).dequantize()
    assert (kept[w == 0] == 0).all()  # every pruned weight is still exactly 0
    rtn = quantize_weight_rtn(w, 4, gran, 32, sym).dequantize()
    err = lambda wq: float(((x @ (w - wq).T) ** 2).mean())  # noqa: E731
    assert err(kept) < 0.95 * err(rtn)  # half the weights are fixed at 0, so less room than unpruned GPTQ
