"""RecurrentGemma's exported RG-LRU scan against its eager loop."""
from __future__ import annotations

import torch

from tests.conftest import tiny_model
from tests.helpers import assert_export_form_matches_forward


@torch.no_grad()
def test_export_scan_remembers_the_whole_call(monkeypatch):
    """With the recurrence gate's decay at ~1 (softplus(-20) ~ 2e-9), the first position of a
    longest call still counts at its last, so a doubling scan one doubling short is wrong."""
    model = tiny_model("recurrent_gemma")
    for layer in model.model.layers:
        if hasattr(layer.temporal_block, "rg_lru"):
            layer.temporal_block.rg_lru.recurrent_param.fill_(-20.0)
    ids = torch.randint(0, model.vocab_size, (2, model.prefill_max_tokens), generator=torch.Generator().manual_seed(5))
    state = tuple(s + 1 if s.is_floating_point() else s for s in model.init_state(2))
    assert_export_form_matches_forward(monkeypatch, model, ids, state)
