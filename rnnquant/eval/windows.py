"""Evaluation windows, shared by the PyTorch evaluator and the ONNX runner (no torch import)."""
from __future__ import annotations

from ..errors import RnnquantError


def windows(n_tokens: int, window: int) -> list[tuple[int, int]]:
    """[start, end) spans of length <= window + 1 covering 0..n_tokens, overlapping by one token,
    so every token but the first is predicted exactly once."""
    if window < 1:
        raise RnnquantError(f"window must be >= 1, got {window}")
    return [(s, min(s + window + 1, n_tokens)) for s in range(0, n_tokens - 1, window)]
