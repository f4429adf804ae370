"""Autoregressive generation through the O(1) step mode (PyTorch side)."""
from __future__ import annotations

import torch


def sample_next(logits: torch.Tensor, temperature: float, top_k: int, gen: torch.Generator) -> torch.Tensor:
    """logits [B,V] -> ids [B]. temperature 0 is greedy."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits, -1), 1, generator=gen).squeeze(-1)


@torch.no_grad()
def generate(model, prompt_ids: list[int], max_new_tokens: int, temperature: float = 0.0, top_k: int = 0, seed: int = 0):
    """Prefill the prompt with ``forward_with_state``, then step; yields new token ids one at a time."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.tensor([prompt_ids], dtype=torch.long)
    logits, state = model.forward_with_state(ids, model.init_state(1))
    logits = logits[:, -1]
    for _ in range(max_new_tokens):
        nxt = sample_next(logits, temperature, top_k, gen)
        yield int(nxt)
        logits, state = model.step(nxt, state)
