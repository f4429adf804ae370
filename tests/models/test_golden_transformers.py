"""Golden check: our Mamba equals transformers' MambaForCausalLM on a checkpoint it saved."""
from __future__ import annotations

import shutil

import pytest
import torch

from rnnquant.models import load
from tests.conftest import TOKENIZER

transformers = pytest.importorskip("transformers")


@torch.no_grad()
@pytest.mark.parametrize("cfg", [dict(hidden_size=32, num_hidden_layers=2, state_size=8), dict(hidden_size=48, num_hidden_layers=3, state_size=4, conv_kernel=3, expand=3)])
def test_mamba_matches_transformers(tmp_path, cfg):
    torch.manual_seed(0)
    hf = transformers.MambaForCausalLM(transformers.MambaConfig(vocab_size=4096, **cfg)).eval()
    with torch.no_grad():  # move away from init so dt, D, conv and gates all matter
        for p in hf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    hf.save_pretrained(tmp_path)
    shutil.copy(TOKENIZER, tmp_path / "tokenizer.json")
    ours = load(tmp_path)
    ids = torch.randint(0, 4096, (2, 48), generator=torch.Generator().manual_seed(3))
    assert (hf(ids).logits - ours(ids)).abs().max() <= 1e-4
