"""xLSTM's chunkwise-parallel mLSTM against its own one-position recurrence (transformers' step)."""
from __future__ import annotations

import pytest
import torch

from rnnquant.models.xlstm import CHUNK, mlstm_chunked, mlstm_step


@pytest.mark.parametrize("gates", ["open", "saturating", "state-dominates"])
def test_chunked_mlstm_equals_the_recurrence(gates):
    """Two chunks and a short one, from a non-zero state with its own stabiliser; "saturating" uses
    gate pre-activations near the soft cap, where the stabiliser does all the work; "state-dominates"
    starts from a large stabiliser, so the carried state, not the chunk's own inputs, sets m."""
    g = torch.Generator().manual_seed(0)
    B, T, H, dqk, dv = 2, 2 * CHUNK + 21, 3, 8, 6
    q, k = torch.randn(B, T, H, dqk, generator=g), torch.randn(B, T, H, dqk, generator=g)
    v = torch.randn(B, T, H, dv, generator=g)
    spread = 14.0 if gates == "saturating" else 2.0
    i_pre, f_pre = spread * torch.randn(B, T, H, generator=g).tanh(), spread * torch.randn(B, T, H, generator=g).tanh() + 2
    C, n, m = torch.randn(B, H, dqk, dv, generator=g), torch.randn(B, H, dqk, generator=g), torch.randn(B, H, generator=g)
    m = m + (12.0 if gates == "state-dominates" else 0.0)
    h, C1, n1, m1 = mlstm_chunked(q, k, v, i_pre, f_pre, C, n, m, 1e-6)
    hs, (Cr, nr, mr) = [], (C, n, m)
    for t in range(T):
        ht, Cr, nr, mr = mlstm_step(q[:, t], k[:, t], v[:, t], i_pre[:, t], f_pre[:, t], Cr, nr, mr, 1e-6)
        hs.append(ht)
    ref = torch.stack(hs, 1)
    assert (h - ref).abs().max() <= 1e-4 * ref.abs().max()
    assert (m1 - mr).abs().max() <= 1e-4 and (C1 - Cr).abs().max() <= 1e-4 * Cr.abs().max() and (n1 - nr).abs().max() <= 1e-4 * nr.abs().max()
