"""Golden checks: our Mamba, FalconMamba and Mamba-2 equal transformers' own classes on checkpoints it saved."""
from __future__ import annotations

import shutil

import pytest
import torch

from rnnquant.artifacts import load
from tests.conftest import TOKENIZER

transformers = pytest.importorskip("transformers")


def _saved(tmp_path, cls, config, scale: float = 0.05):
    torch.manual_seed(0)
    hf = cls(config).eval()
    with torch.no_grad():  # move away from init so dt, D, conv and gates all matter
        for p in hf.parameters():
            p.add_(scale * torch.randn_like(p))
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


RWKV4 = [dict(rescale_every=0, tie_word_embeddings=False), dict(rescale_every=1, tie_word_embeddings=True),
         dict(rescale_every=2, tie_word_embeddings=False, intermediate_size=96)]  # transformers sizes its state by hidden_size: attention_hidden_size must equal it there


def _rwkv4(tmp_path, cfg):
    """perturbed by 0.1 (not 0.05): the time-mix, decay and bonus vectors must all matter"""
    config = transformers.RwkvConfig(**(dict(vocab_size=4096, hidden_size=32, num_hidden_layers=3, intermediate_size=64) | cfg))
    return _saved(tmp_path, transformers.RwkvForCausalLM, config, scale=0.1)


@torch.no_grad()
@pytest.mark.parametrize("cfg", RWKV4, ids=["plain-untied", "rescale1-tied", "rescale2-wide"])
def test_rwkv4_matches_transformers(tmp_path, cfg):
    """rescale_every 1 and 2 over 3 blocks: every block has its own output scale, and the stream halves in between."""
    hf, ours = _rwkv4(tmp_path, cfg)
    ids = torch.randint(0, 4096, (2, 40), generator=torch.Generator().manual_seed(3))
    assert ours.model_type == "rwkv" and (hf(ids).logits - ours(ids)).abs().max() <= 1e-4


@torch.no_grad()
@pytest.mark.parametrize("cfg", RWKV4[:2], ids=["plain-untied", "rescale1-tied"])
def test_rwkv4_step_matches_transformers_state(tmp_path, cfg):
    """Our step against transformers' own stateful path: its five state tensors, one token at a time.
    Batch 1: in transformers 5.24 a stateful call at batch > 1 returns a wrong state (the WKV
    denominator after one token from the initial state is ~2, not 1), so its own steps disagree
    with its own forward there."""
    hf, ours = _rwkv4(tmp_path, cfg)
    ids = torch.randint(0, 4096, (1, 20), generator=torch.Generator().manual_seed(4))
    out = hf(ids[:, :6], use_cache=True)  # a prefill, then steps
    _, state = ours.forward_with_state(ids[:, :6], ours.init_state(1))
    hf_state = out.state
    for t in range(6, 20):
        out = hf(ids[:, t : t + 1], state=hf_state, use_cache=True)
        hf_state = out.state
        logits, state = ours.step(ids[:, t], state)
        assert (out.logits[:, -1] - logits).abs().max() <= 1e-4
    ours_by_kind = [torch.stack(state[j::5], -1) for j in range(5)]  # ours is per layer; transformers' [B, D, layers] per kind
    assert all((a - b).abs().max() <= 1e-4 for a, b in zip(hf_state, ours_by_kind))


@torch.no_grad()
def test_rnnquant_ppl_on_a_transformers_rwkv4_reproduces_its_perplexity(capsys, tmp_path):
    """`rnnquant ppl` on a checkpoint transformers saved (rescale_every 2, so the inference rescale
    matters): the perplexity transformers' own logits give over the same windows, to 0.01 %."""
    import math
    import re

    from rnnquant.eval.windows import windows
    from tests.helpers import run_cli

    hf, model = _rwkv4(tmp_path / "m", RWKV4[2])
    text = tmp_path / "text.txt"
    text.write_text("def f(x):\n    return x * 2  # doubles\n" * 40)
    code, out, err = run_cli(capsys, "ppl", tmp_path / "m", "--data", text, "--window", 64)
    assert code == 0, err
    ours = float(re.search(r"perplexity ([0-9.]+)", out).group(1))
    ids = torch.tensor(model.tokenizer.encode(text.read_text()).ids)
    nll, count = 0.0, 0
    for s, e in windows(len(ids), 64):
        logits = hf(ids[s:e].view(1, -1)).logits[0, :-1]
        nll += torch.nn.functional.cross_entropy(logits, ids[s + 1 : e], reduction="sum").item()
        count += e - s - 1
    assert abs(ours / math.exp(nll / count) - 1) <= 1e-4


XLSTM = [dict(num_heads=2), dict(num_heads=4, gate_soft_cap=5.0, output_logit_soft_cap=8.0)]


def _xlstm(tmp_path, cfg):
    """hidden 128: transformers' own cache rounds the q/k width up to a multiple of 64, so its step
    works only where hidden_size x qk_dim_factor is one (ours has no such limit: the contract suite
    runs it at 32). float32 kernels: its default autocasts the chunkwise kernel to bfloat16."""
    config = transformers.xLSTMConfig(**(dict(vocab_size=4096, hidden_size=128, num_hidden_layers=2, chunk_size=16,
                                              autocast_kernel_dtype="float32") | cfg))
    return _saved(tmp_path, transformers.xLSTMForCausalLM, config, scale=0.1)


@torch.no_grad()
@pytest.mark.parametrize("cfg", XLSTM, ids=["2-heads", "4-heads-tight-caps"])
def test_xlstm_matches_transformers(tmp_path, cfg):
    """40 tokens: transformers runs its chunkwise-parallel kernel (16-token chunks) over them, ours the recurrence."""
    hf, ours = _xlstm(tmp_path, cfg)
    ids = torch.randint(0, 4096, (2, 40), generator=torch.Generator().manual_seed(3))
    assert ours.model_type == "xlstm" and (hf(ids, use_cache=False).logits - ours(ids)).abs().max() <= 1e-4


@torch.no_grad()
def test_xlstm_step_matches_transformers_cache(tmp_path):
    hf, ours = _xlstm(tmp_path, XLSTM[0])
    ids = torch.randint(0, 4096, (1, 20), generator=torch.Generator().manual_seed(4))
    out = hf(ids[:, :6], use_cache=True)
    _, state = ours.forward_with_state(ids[:, :6], ours.init_state(1))
    cache = out.cache
    for t in range(6, 20):
        out = hf(ids[:, t : t + 1], cache=cache, use_cache=True)
        cache = out.cache
        logits, state = ours.step(ids[:, t], state)
        assert (out.logits[:, -1] - logits).abs().max() <= 1e-4


RGEMMA = [dict(num_key_value_heads=1), dict(num_key_value_heads=2, num_hidden_layers=4, attention_window_size=5, lru_width=64,
                                              block_types=["attention", "recurrent"], tie_word_embeddings=False),
          dict(num_attention_heads=4, num_key_value_heads=2, block_types=["attention", "recurrent"])]  # query heads 0, 1 read kv head 0


def _rgemma(tmp_path, cfg):
    config = transformers.RecurrentGemmaConfig(**(dict(vocab_size=4096, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                                                       lru_width=32, attention_window_size=8, intermediate_size=64) | cfg))
    return _saved(tmp_path, transformers.RecurrentGemmaForCausalLM, config, scale=0.1)


@torch.no_grad()
@pytest.mark.parametrize("cfg", RGEMMA, ids=["mqa-window8", "mha-window5-attention-first-untied", "gqa-4-heads-on-2"])
def test_recurrent_gemma_matches_transformers(tmp_path, cfg):
    """30 tokens, several times the attention window: the local attention forgets, the RG-LRU carries."""
    hf, ours = _rgemma(tmp_path, cfg)
    ids = torch.randint(0, 4096, (2, 30), generator=torch.Generator().manual_seed(3))
    assert ours.model_type == "recurrent_gemma" and (hf(ids, use_cache=False).logits - ours(ids)).abs().max() <= 1e-4


@torch.no_grad()
def test_recurrent_gemma_step_matches_transformers_cache(tmp_path):
    """Our fixed-window state against transformers' sliding-window cache and its module-held recurrent states."""
    hf, ours = _rgemma(tmp_path, RGEMMA[0])
    ids = torch.randint(0, 4096, (1, 24), generator=torch.Generator().manual_seed(4))
    cache = transformers.DynamicCache(config=hf.config)
    hf(ids[:, :6], use_cache=True, cache=cache)
    _, state = ours.forward_with_state(ids[:, :6], ours.init_state(1))
    for t in range(6, 24):
        out = hf(ids[:, t : t + 1], use_cache=True, cache=cache)
        logits, state = ours.step(ids[:, t], state)
        assert (out.logits[:, -1] - logits).abs().max() <= 1e-4
