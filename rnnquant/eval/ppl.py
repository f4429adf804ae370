"""Token-level perplexity over non-overlapping windows, and by position in one long stream.

The token stream is cut into windows of ``window + 1`` tokens that overlap by one, so every
token but the first is predicted exactly once; each window starts from a fresh state.
PPL = exp(sum of NLL / number of predicted tokens).

``perplexity_by_position`` instead reads the whole text as one stream, the state carried from
the first token to the last (how a recurrent LM is deployed), and reports the perplexity of the
tokens in each position bucket: quantization error that accumulates in the state shows as a
bucket that degrades more than the first.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..text import token_ids
from .windows import POSITION_EDGES, PositionBuckets, perplexity_of, windows


@dataclass(frozen=True)
class PerplexityResult:
    ppl: float
    nll: float  # summed negative log-likelihood, nats
    tokens: int  # predicted tokens

    def __float__(self) -> float:
        return self.ppl


def tokenize(tokenizer, text: str) -> torch.Tensor:
    """All token ids of an in-memory text (files go through ``rnnquant.text.token_ids``)."""
    ids, _ = token_ids(tokenizer, text, max_tokens=sys.maxsize)
    return torch.from_numpy(ids)


HEAD_POSITIONS = 64  # positions per tail (head) call: the logits of a whole batch at once are [B, T, vocab] (823 MB at mamba-130m shape, batch 8 x 512)


def _nll_forward(model, batch):
    x, _ = model.stream_with_state(batch[:, :-1], model.init_state(batch.shape[0]))  # [B,T,D]
    nll = torch.zeros((), dtype=torch.float64)
    for s in range(0, x.shape[1], HEAD_POSITIONS):
        logits = model.tail(x[:, s : s + HEAD_POSITIONS])  # [B,P,V]
        nll += F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch[:, s + 1 : s + 1 + HEAD_POSITIONS].reshape(-1), reduction="sum").double()
    return nll


def _nll_step(model, batch):
    state = model.init_state(batch.shape[0])
    nll = torch.zeros(())
    for t in range(batch.shape[1] - 1):
        logits, state = model.step(batch[:, t], state)
        nll = nll + F.cross_entropy(logits.float(), batch[:, t + 1], reduction="sum")
    return nll


@torch.no_grad()
def perplexity_ids(model, ids: torch.Tensor, window: int = 512, batch_size: int = 8, mode: str = "forward", progress: bool = False) -> PerplexityResult:
    """Perplexity of a 1-D id tensor; ``mode="step"`` runs the O(1) step form instead of ``forward``."""
    nll_fn = {"forward": _nll_forward, "step": _nll_step}[mode]
    spans = windows(len(ids), window)
    groups: dict[int, list] = {}
    for s, e in spans:  # batch windows of equal length (all but possibly the last)
        groups.setdefault(e - s, []).append(ids[s:e])
    total, count = 0.0, 0
    bar = tqdm(total=len(spans), desc=f"ppl ({mode})", unit="win", disable=not progress, leave=False)
    for seqs in groups.values():
        for i in range(0, len(seqs), batch_size):
            batch = torch.stack(seqs[i : i + batch_size])
            total += float(nll_fn(model, batch))
            count += batch.numel() - batch.shape[0]
            bar.update(batch.shape[0])
    bar.close()
    return PerplexityResult(perplexity_of(total, count), total, count)


@torch.no_grad()
def perplexity_by_position(model, ids: torch.Tensor, edges=POSITION_EDGES, chunk: int = 1024, progress: bool = False) -> list[dict]:
    """One stream, batch 1, the state carried across the whole text through ``forward_with_state``
    (the prefill path) ``chunk`` positions at a time. Bucket [a, b) holds the predictions of the
    tokens at positions a..b-1 (position 0 is never predicted); the last bucket is open-ended.
    Buckets the text does not reach are left out."""
    chunk = min(chunk, model.prefill_max_tokens or chunk)
    buckets = PositionBuckets(edges)
    state = model.init_state(1)
    for s in tqdm(range(0, len(ids) - 1, chunk), desc="ppl by position", unit="chunk", disable=not progress, leave=False):
        x, y = ids[s : min(s + chunk, len(ids) - 1)], ids[s + 1 : s + chunk + 1]
        logits, state = model.forward_with_state(x[None], state)
        buckets.add(s + 1, F.cross_entropy(logits[0].float(), y, reduction="none").double().numpy())  # [len(x)]
    return buckets.result()


def perplexity(model, text: str, window: int = 512, **kw) -> PerplexityResult:
    """Perplexity of ``text`` under ``model`` with the model's own tokenizer."""
    return perplexity_ids(model, tokenize(model.tokenizer, text), window=window, **kw)
