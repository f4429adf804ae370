"""Shared fixtures: tiny random models of every architecture, saved in the on-disk layout."""
from __future__ import annotations

import pytest
import torch

from rnnquant.io import save_checkpoint
from rnnquant.models import build
from rnnquant.zoo import MODELS_DIR

TOKENIZER = MODELS_DIR / "tokenizer.json"
VOCAB = 4096

TINY = {
    "mamba": {"model_type": "mamba", "vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 2, "state_size": 8},
    "lstm": {"model_type": "lstm", "vocab_size": VOCAB, "embed_size": 24, "hidden_size": 32, "num_layers": 2},
    "gru": {"model_type": "gru", "vocab_size": VOCAB, "embed_size": 24, "hidden_size": 32, "num_layers": 2},
}
# the other adapters and the other layouts an adapter accepts (torch.nn.LSTM/GRU LMs as `rnnquant convert` writes them):
# the contract suite runs over these too; the loading/text tests stay on TINY
VARIANTS = {
    "lstm-untied": TINY["lstm"] | {"output_proj": False, "head_bias": True, "tie_word_embeddings": False},
    "lstmp": TINY["lstm"] | {"proj_size": 12, "output_proj": False, "head_bias": True, "tie_word_embeddings": False},
    "gru-tied-nobias": TINY["gru"] | {"embed_size": 32, "output_proj": False, "head_bias": True, "rnn_bias": False},
    "falcon_mamba": TINY["mamba"] | {"model_type": "falcon_mamba"},
    "mamba2": {"model_type": "mamba2", "vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 2, "state_size": 8,
               "num_heads": 8, "head_dim": 8, "n_groups": 1},
    "rwkv": {"model_type": "rwkv", "vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 2, "intermediate_size": 64,
             "rescale_every": 1},
    "rwkv-tied-wide": {"model_type": "rwkv", "vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 2, "attention_hidden_size": 64,
                       "intermediate_size": 96, "rescale_every": 0, "tie_word_embeddings": True},
    "rwkv7": {"model_type": "rwkv7", "vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 2, "head_dim": 8,
              "decay_low_rank_dim": 8, "gate_low_rank_dim": 16, "a_low_rank_dim": 8, "v_low_rank_dim": 8, "intermediate_size": 64},
    "mingru": {"model_type": "mingru", "vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 2, "intermediate_size": 64, "mlp_size": 96},
    "minlstm": {"model_type": "minlstm", "vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 2, "tie_word_embeddings": False},
    "xlstm": {"model_type": "xlstm", "vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 2, "num_heads": 2},
    # window 8 < the contract suite's sequences: step == forward across the window boundary; multi-query attention
    "recurrent_gemma": {"model_type": "recurrent_gemma", "vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 3,
                        "num_attention_heads": 2, "num_key_value_heads": 1, "lru_width": 32, "attention_window_size": 8,
                        "intermediate_size": 128},
    "mamba2-groups": {"model_type": "mamba2", "vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 2, "state_size": 4,
                      "num_heads": 16, "head_dim": 4, "n_groups": 4, "tie_word_embeddings": True},
}
CONTRACT = TINY | VARIANTS


def tiny_model(arch: str, seed: int = 0):
    """A tiny model with weights perturbed away from init, so every path (gates, dt, conv) matters."""
    torch.manual_seed(seed)
    model = build(CONTRACT[arch])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(params=sorted(TINY))
def arch(request):
    return request.param


@pytest.fixture(params=sorted(CONTRACT))
def any_arch(request):
    """Every adapter and layout variant: what the step/export contract tests run over."""
    return request.param


@pytest.fixture
def tiny_dir(tmp_path, arch):
    d = tmp_path / f"tiny-{arch}"
    save_checkpoint(tiny_model(arch), d, tokenizer_path=TOKENIZER)
    return d
