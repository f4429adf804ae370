"""Golden check for RWKV-7: our adapter against flash-linear-attention's own ``RWKV7ForCausalLM``.

fla runs only in a separate environment (its Triton kernels under TRITON_INTERPRET=1, and a triton
older than rnnquant's), so its logits are recorded in tests/data/rwkv7_fla/ by the ``make.py`` beside
them: two tiny random checkpoints in fla's layout (fuse_norm off and on, untied and tied), their
logits for 48 tokens in one call, and 16 steps through fla's cache after a 32-token prefill."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rnnquant.models import check_and_assign, open_model_dir

DATA = Path(__file__).parent.parent / "data" / "rwkv7_fla"


def _ours(name):
    model, state = open_model_dir(DATA / name)
    check_and_assign(model, state, DATA / name)  # every fla tensor finds its place, none is left over
    return model.eval(), load_file(str(DATA / name / "golden.st"))


@torch.no_grad()
@pytest.mark.parametrize("name", ["plain", "fused-tied"])
def test_rwkv7_forward_matches_fla(name):
    model, golden = _ours(name)
    assert model.model_type == "rwkv7"
    assert (model(golden["ids"]) - golden["forward"]).abs().max() <= 1e-4


@torch.no_grad()
@pytest.mark.parametrize("name", ["plain", "fused-tied"])
def test_rwkv7_steps_match_fla_cache(name):
    model, golden = _ours(name)
    ids = golden["ids"]
    _, state = model.forward_with_state(ids[:, :32], model.init_state(1))
    for j, t in enumerate(range(32, 48)):
        logits, state = model.step(ids[:, t], state)
        assert (logits - golden["steps"][:, j]).abs().max() <= 1e-4, t
