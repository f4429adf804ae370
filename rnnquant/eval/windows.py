"""Evaluation windows and position buckets, shared by the PyTorch evaluator and the ONNX runner
(no torch import)."""
from __future__ import annotations

import math

import numpy as np

from ..errors import RnnquantError


def windows(n_tokens: int, window: int) -> list[tuple[int, int]]:
    """[start, end) spans of length <= window + 1 covering 0..n_tokens, overlapping by one token,
    so every token but the first is predicted exactly once."""
    if window < 1:
        raise RnnquantError(f"window must be >= 1, got {window}")
    return [(s, min(s + window + 1, n_tokens)) for s in range(0, n_tokens - 1, window)]


POSITION_EDGES = (0, 256, 1024, 4096, 16384)


def perplexity_of(nll: float, count: int) -> float:
    """exp(mean NLL); exp(709) is near float's max: beyond it, inf."""
    return math.exp(nll / count) if nll / count < 709 else math.inf


class PositionBuckets:
    """Summed NLL and token counts per position bucket [a, b) of one long stream (the last bucket
    open-ended), fed a chunk of token NLLs at a time: what ``ppl --by-position`` and compare's
    by-position columns report, for the PyTorch and the ONNX Runtime paths alike."""

    def __init__(self, edges=POSITION_EDGES):
        self.edges = tuple(edges)
        self.nll = np.zeros(len(self.edges), dtype=np.float64)
        self.count = np.zeros(len(self.edges), dtype=np.int64)

    def add(self, first_position: int, token_nll: np.ndarray) -> None:
        """token_nll [n]: the NLLs of the tokens at positions first_position .. first_position+n-1."""
        positions = np.arange(first_position, first_position + len(token_nll))
        bucket = np.searchsorted(np.asarray(self.edges[1:]), positions, side="right")  # index into edges
        np.add.at(self.nll, bucket, np.asarray(token_nll, dtype=np.float64))
        np.add.at(self.count, bucket, 1)

    def result(self) -> list[dict]:
        """One entry per bucket the text reached: {from, to (None: open-ended), tokens, ppl}."""
        bounds = [*self.edges, math.inf]
        return [{"from": a, "to": None if b == math.inf else b, "tokens": int(n), "ppl": perplexity_of(l, n)}
                for a, b, l, n in zip(bounds, bounds[1:], self.nll.tolist(), self.count.tolist()) if n]
