"""The parallel selective scan (the ONNX prefill graph's) against the sequential one."""
from __future__ import annotations

import pytest
import torch

from rnnquant.models.ssm import SCAN_CHUNK, selective_scan, selective_scan_parallel


def _inputs(T, E=12, N=8, dt_scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = -torch.exp(torch.randn(E, N, generator=g)) * 4
    u, Bm, Cm = torch.randn(2, T, E, generator=g), torch.randn(2, T, N, generator=g), torch.randn(2, T, N, generator=g)
    dt = torch.rand(2, T, E, generator=g) * dt_scale
    return u, dt, A, Bm, Cm, torch.randn(E, generator=g), torch.randn(2, N, E, generator=g)


@pytest.mark.parametrize("T", [1, 2, SCAN_CHUNK - 1, SCAN_CHUNK, SCAN_CHUNK + 1, 5 * SCAN_CHUNK + 3, 300])
def test_parallel_scan_equals_sequential(T):
    args = _inputs(T)
    (y, h), (y_ref, h_ref) = selective_scan_parallel(*args), selective_scan(*args)
    assert y.shape == y_ref.shape and h.shape == h_ref.shape
    assert (y - y_ref).abs().max() <= 1e-4 and (h - h_ref).abs().max() <= 1e-5


def test_parallel_scan_is_stable_with_strong_decay():
    """dt * |A| in the hundreds per token: cumulative decays underflow to 0, never overflow."""
    args = _inputs(200, dt_scale=50.0)
    (y, h), (y_ref, h_ref) = selective_scan_parallel(*args), selective_scan(*args)
    assert torch.isfinite(y).all() and torch.isfinite(h).all()
    assert (y - y_ref).abs().max() <= 1e-4 and (h - h_ref).abs().max() <= 1e-5


def test_parallel_scan_in_pieces_carries_the_state():
    u, dt, A, Bm, Cm, D, h0 = _inputs(70)
    y_all, h_all = selective_scan_parallel(u, dt, A, Bm, Cm, D, h0)
    y1, h1 = selective_scan_parallel(u[:, :23], dt[:, :23], A, Bm[:, :23], Cm[:, :23], D, h0)
    y2, h2 = selective_scan_parallel(u[:, 23:], dt[:, 23:], A, Bm[:, 23:], Cm[:, 23:], D, h1)
    assert (torch.cat([y1, y2], 1) - y_all).abs().max() <= 1e-5 and (h2 - h_all).abs().max() <= 1e-6


@pytest.mark.parametrize("T", [1, 63, 64, 65, 200])
def test_inference_scan_is_the_training_scan_bit_for_bit(T):
    """Without autograd the scan runs in place (``_scan_in_place``): the zoo's perplexities and the
    GPTQ weights depend on it giving exactly the values of the autograd form the models trained with."""
    args = _inputs(T)
    with torch.no_grad():
        y, h = selective_scan(*args)
    y_grad, h_grad = selective_scan(*(a.clone().requires_grad_() for a in args))
    assert torch.equal(y, y_grad.detach()) and torch.equal(h, h_grad.detach())
    assert h.untyped_storage().nbytes() == h.numel() * h.element_size()  # the state owns its memory


def test_exported_softplus_is_softplus_without_the_scalar_kernel(tmp_path):
    """Under export ``softplus`` is max(x, 0) + log(1 + exp(-|x|)): ONNX Runtime gives F.softplus's
    values (no overflow at +-80) and the graph has no ``Softplus`` node (a scalar kernel, 3x slower)."""
    import warnings

    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch.nn.functional as F

    from rnnquant.models.ssm import softplus

    class Sp(torch.nn.Module):
        def forward(self, x):
            return softplus(x)

    x = torch.cat([torch.linspace(-80, 80, 1601), torch.tensor([0.0, 1e-7, -1e-7])]).view(1, -1)
    path = tmp_path / "sp.onnx"
    with warnings.catch_warnings():  # (the TorchScript exporter's deprecation notice: the project's exporter uses it too)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(Sp(), (x,), str(path), dynamo=False, opset_version=17)
    assert "Softplus" not in {n.op_type for n in onnx.load(path).graph.node}
    y = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    np.testing.assert_allclose(y, F.softplus(x).numpy(), rtol=1e-6, atol=1e-7)
    assert torch.equal(softplus(x), F.softplus(x))  # outside export, F.softplus itself
