"""RWKV-7's chunked parallel form against its own one-position recurrence."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rnnquant.models.rwkv7 import LOG_DECAY_SCALE, PARALLEL_MAX_TOKENS, delta_rule_chunked, delta_rule_parallel, delta_rule_step


@pytest.mark.parametrize(("form", "T"), [(delta_rule_chunked, 37), (delta_rule_parallel, 37), (delta_rule_parallel, 1),
                                         (delta_rule_parallel, PARALLEL_MAX_TOKENS)])
@pytest.mark.parametrize("decay", ["strongest", "mixed", "weak"])
def test_chunked_delta_rule_equals_the_recurrence(decay, form, T):
    """37 positions: two whole chunks of 16 and a short one, from a non-zero state; the parallel form
    (the prefill graph's) also at one position and at the most one call takes. "strongest" puts
    every log decay at RWKV-7's bound -e^-0.5, where the factored pairwise decays are largest; "weak"
    near 0, so that the state remembers every chunk (with the others, chunks a hundred positions
    back have decayed below the tolerance)."""
    g = torch.Generator().manual_seed(0)
    B, H, N = 2, 3, 8
    r, k, v = (torch.randn(B, T, H, N, generator=g) for _ in range(3))
    kk = F.normalize(torch.randn(B, T, H, N, generator=g), dim=-1)
    a = torch.rand(B, T, H, N, generator=g)
    scale = {"strongest": torch.full((B, T, H, N), 1 - 1e-6), "mixed": torch.rand(B, T, H, N, generator=g),
             "weak": 1e-3 * torch.rand(B, T, H, N, generator=g)}[decay]
    w = LOG_DECAY_SCALE * scale
    S0 = torch.randn(B, H, N, N, generator=g)
    o, S = form(S0, r, w, k, v, kk, a)
    S_ref, outs = S0, []
    for t in range(T):
        o_t, S_ref = delta_rule_step(S_ref, r[:, t], w[:, t], k[:, t], v[:, t], kk[:, t], a[:, t])
        outs.append(o_t)
    ref = torch.stack(outs, 1)
    assert (o - ref).abs().max() <= 1e-4 * ref.abs().max() and (S - S_ref).abs().max() <= 1e-4 * S_ref.abs().max()


def test_every_lora_linear_is_quantized_by_a_catch_all_rule():
    """Both Linears of each LoRA (w, a, g, and v from layer 1) are declared: a "*" preset quantizes
    the rank-wide outputs too (they were float: 7 % of the 0.1B shape's int8 step bytes)."""
    from rnnquant.quant import PRESETS, quantize
    from rnnquant.quant.qlinear import QLinear
    from tests.conftest import tiny_model

    q = quantize(tiny_model("rwkv7"), PRESETS["w8a8-dynamic"])
    loras = {n: m for n, m in q.named_modules() if n.endswith(("lora.0", "lora.2"))}
    assert len(loras) == 2 * (4 * q.config["num_hidden_layers"] - 1)
    assert all(isinstance(m, QLinear) and m.qweight is not None for m in loras.values()), [n for n, m in loras.items() if not isinstance(m, QLinear)]
