"""A graph's recurrent state from its ``states`` metadata, in numpy (no torch: the runner uses it)."""
from __future__ import annotations

import math

import numpy as np


def initial_state(states: list[dict], batch: int) -> list[np.ndarray]:
    """The initial state the adapter declared: each tensor's dtype and fill value (graphs exported
    before ``init`` was recorded start at zeros, which is what they declared then)."""
    return [np.full((batch, *s["shape"]), s.get("init", 0.0), dtype=np.dtype(s.get("dtype", "float32"))) for s in states]


def state_bytes(states: list[dict]) -> int:
    """Bytes of one sequence's state."""
    return sum(np.dtype(s.get("dtype", "float32")).itemsize * math.prod(s["shape"]) for s in states)
