"""The streaming estimator equals numpy on the full array."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rnnquant.calibrate import ChannelStats


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6000, 9, generator=g, dtype=torch.float64) * torch.tensor([1, 2, 0.1, 5, 1, 1, 1, 3, 1e-3], dtype=torch.float64)
    x[:, 4] = x[:, 4] ** 3  # heavy-tailed
    x[:, 5] = x[:, 5].abs() + 2  # all positive, offset
    x[5000:, 6] *= 40  # the range grows late: forces histogram rebinning
    return x


def test_matches_numpy(data):
    s = ChannelStats(9, bins=512)
    for chunk in data.split(257):
        s.update(chunk)
    a = data.numpy()
    np.testing.assert_allclose(s.absmax.numpy(), np.abs(a).max(0), rtol=0, atol=0)
    np.testing.assert_allclose(s.min.numpy(), a.min(0), rtol=0, atol=0)
    np.testing.assert_allclose(s.max.numpy(), a.max(0), rtol=0, atol=0)
    np.testing.assert_allclose(s.mean.numpy(), a.mean(0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(s.std.numpy(), a.std(0), rtol=1e-6, atol=1e-9)
    centred = a - a.mean(0)
    np.testing.assert_allclose(s.kurtosis.numpy(), (centred**4).mean(0) / a.var(0) ** 2 - 3, rtol=1e-5, atol=1e-6)
    bin_width = (s.range / s.bins).numpy()
    for q in (50, 99, 99.9, 99.99):
        ref = np.percentile(np.abs(a), q, axis=0, method="lower")
        err = np.abs(s.abs_percentile(q).numpy() - ref)
        assert (err <= bin_width + 1e-12).all(), (q, err, bin_width)


def _held_bytes(s: ChannelStats) -> int:
    return sum(v.numel() * v.element_size() for v in vars(s).values() if isinstance(v, torch.Tensor))


def test_memory_does_not_grow_with_samples():
    """What the estimator holds after 1,000 samples and after 200,000 (with a growing range that
    forces rebinning): the same bytes, O(channels x bins), no activation kept."""
    s = ChannelStats(4, bins=64)
    s.update(torch.randn(1000, 4))
    held = _held_bytes(s)
    for i in range(199):
        s.update(torch.randn(1000, 4) * (i + 2))
    assert _held_bytes(s) == held and s.count == 200_000


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_update_leaves_its_input_unchanged(dtype):
    x = torch.randn(300, 7, generator=torch.Generator().manual_seed(1), dtype=dtype)
    before = x.clone()
    ChannelStats(7).update(x)
    assert torch.equal(x, before)
