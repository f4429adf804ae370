"""Golden checks: our Mamba, FalconMamba and Mamba-2 equal transformers' own classes on checkpoints it saved."""
from __future__ import annotations

import shutil

import pytest
import torch

from rnnquant.artifacts import load
from tests.conftest import TOKENIZER

transformers = pytest.importorskip("transformers")


def _saved(tmp_path, cls, config):
    torch.manual_seed(0)
    hf = cls(config).eval()
    with torch.no_grad():  # move away from init so dt, D, conv and gates all matter
        for p in hf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    hf.save_pretrained(tmp_path)
    shutil.copy(TOKENIZER, tmp_path / "tokenizer.json")
    return hf, load(tmp_path)


@torch.no_grad()
def test_falcon_mamba_matches_transformers(tmp_path):
    cfg = transformers.FalconMambaConfig(vocab_size=4096, hidden_size=32, num_hidden_layers=2, state_size=8, mixer_rms_eps=1e-5)
    hf, ours = _saved(tmp_path, transformers.FalconMambaForCausalLM, cfg)
    ids = torch.randint(0, 4096, (2, 48), generator=torch.Generator().manual_seed(3))
    assert ours.model_type == "falcon_mamba" and (hf(ids).logits - ours(ids)).abs().max() <= 1e-4


MAMBA2 = [dict(hidden_size=32, num_hidden_layers=2, state_size=8, num_heads=8, head_dim=8, n_groups=1, chunk_size=16),
          dict(hidden_size=48, num_hidden_layers=2, state_size=4, num_heads=12, head_dim=8, n_groups=3, conv_kernel=3, chunk_size=32,
               time_step_limit=(0.0, 0.3), tie_word_embeddings=True)]


@torch.no_grad()
@pytest.mark.parametrize("cfg", MAMBA2, ids=["groups1", "groups3-limit-tied"])
def test_mamba2_matches_transformers(tmp_path, cfg):
    """150 tokens: more than two of our 64-token SSD chunks, so the state crosses chunk boundaries."""
    hf, ours = _saved(tmp_path, transformers.Mamba2ForCausalLM, transformers.Mamba2Config(vocab_size=4096, **cfg))
    ids = torch.randint(0, 4096, (2, 150), generator=torch.Generator().manual_seed(3))
    assert (hf(ids).logits - ours(ids)).abs().max() <= 1e-4


@torch.no_grad()
def test_mamba2_step_matches_transformers_cache(tmp_path):
    """Our step against transformers' own recurrent path (its cache, one token at a time)."""
    hf, ours = _saved(tmp_path, transformers.Mamba2ForCausalLM, transformers.Mamba2Config(vocab_size=4096, **MAMBA2[0]))
    ids = torch.randint(0, 4096, (1, 20), generator=torch.Generator().manual_seed(4))
    out = hf(ids[:, :1], use_cache=True)
    cache, state = out.cache if hasattr(out, "cache") else out.cache_params, ours.step(ids[:, 0], ours.init_state(1))[1]
    for t in range(1, 20):
        out = hf(ids[:, t : t + 1], cache=cache, use_cache=True)
        cache = out.cache if hasattr(out, "cache") else out.cache_params
        logits, state = ours.step(ids[:, t], state)
        assert (out.logits[:, -1] - logits).abs().max() <= 1e-4


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
