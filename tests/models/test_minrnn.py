"""minGRU / minLSTM: the log-space scan against the plain recurrence it replaces."""
from __future__ import annotations

import pytest
import torch

from rnnquant.models.minrnn import SCAN_CHUNK, MinGRUCell, MinLSTMCell, log_scan, scan_parallel
from rnnquant.models.ssm import RECURRENCE_MAX_TOKENS


def _recurrence(a, b, h0):
    """The plain loop: h_t = a_t h_{t-1} + b_t from h0 -> h [B,T,E]."""
    h, out = h0, []
    for t in range(a.shape[1]):
        h = a[:, t] * h + b[:, t]
        out.append(h)
    return torch.stack(out, 1)


def test_log_scan_equals_the_recurrence_across_chunks():
    """600 positions (three scan chunks), from a non-zero state and from zero."""
    g = torch.Generator().manual_seed(0)
    B, T, E = 2, 2 * SCAN_CHUNK + 88, 5
    a = torch.rand(B, T, E, generator=g) * 0.98 + 0.01
    b = torch.rand(B, T, E, generator=g) * 3
    for h0 in (torch.rand(B, E, generator=g), torch.zeros(B, E)):
        ref = _recurrence(a, b, h0)
        assert ((log_scan(a.log(), b.log(), h0) - ref).abs() / ref).max() <= 1e-4


@pytest.mark.parametrize("T", [1, 37, RECURRENCE_MAX_TOKENS])
def test_parallel_scan_equals_the_recurrence(T):
    """The prefill graph's doubling scan, up to the most positions one call takes; a near 1, so the
    first position still counts at the last."""
    g = torch.Generator().manual_seed(2)
    B, E = 2, 5
    a = 1 - 0.01 * torch.rand(B, T, E, generator=g)
    b = torch.rand(B, T, E, generator=g)
    h0 = torch.rand(B, E, generator=g) + 10
    ref = _recurrence(a, b, h0)
    assert ((scan_parallel(a.log(), b.log(), h0) - ref).abs() / ref).max() <= 1e-5


def test_cells_coefficients_are_their_updates():
    """(log a, log b) of each cell reproduce its one-step update exactly: h' = a h + b."""
    g = torch.Generator().manual_seed(1)
    for cell in (MinGRUCell(8, 6), MinLSTMCell(8, 6)):
        u = 3 * torch.randn(4, cell.parts * 6, generator=g)
        h = torch.rand(4, 6, generator=g)
        log_a, log_b = cell.coefficients(u)
        assert torch.allclose(log_a.exp() * h + log_b.exp(), cell.update(u, h), rtol=1e-5, atol=1e-6)
