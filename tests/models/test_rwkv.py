"""RWKV-4's parallel WKV (the prefill graph's) against transformers' stabilised recurrence."""
from __future__ import annotations

import pytest
import torch

from rnnquant.models.rwkv import MAX_INIT, PARALLEL_MAX_TOKENS, wkv_parallel, wkv_step


@pytest.mark.parametrize("T", [1, 5, PARALLEL_MAX_TOKENS])
@pytest.mark.parametrize("entry", ["empty", "carried"])
def test_parallel_wkv_equals_the_recurrence(T, entry):
    """Outputs and the new state, in the representation stepping produces (the running max
    included), from the empty state (max -1e38) and from a carried one."""
    g = torch.Generator().manual_seed(0)
    B, A = 2, 6
    w, u = -torch.exp(torch.randn(A, generator=g)), torch.randn(A, generator=g)
    k, v = 3 * torch.randn(B, T, A, generator=g), torch.randn(B, T, A, generator=g)
    if entry == "empty":
        state = (torch.zeros(B, A), torch.zeros(B, A), torch.full((B, A), MAX_INIT))
    else:
        state = (torch.randn(B, A, generator=g), torch.rand(B, A, generator=g) + 0.1, 5 * torch.randn(B, A, generator=g))
    outs, s = [], state
    for t in range(T):
        o, *s = wkv_step(w, u, k[:, t], v[:, t], *s)
        outs.append(o)
    o, *s_par = wkv_parallel(w, u, k, v, *state)
    assert (o - torch.stack(outs, 1)).abs().max() <= 1e-5
    for a, b in zip(s_par, s, strict=True):
        assert (a - b).abs().max() <= 1e-5 * max(b.abs().max(), 1)
