"""Pruning configs: a dataclass and the ``--prune SPEC`` string form.

    magnitude:0.5   wanda:0.5   sparsegpt:0.5   wanda:2:4   sparsegpt:4:8     (unstructured / N:M, masked)
    channels:0.25   (structured: a quarter of Mamba's d_inner or of LSTM/GRU hidden units, removed)
    state:0.25      (structured: a quarter of Mamba's SSM state dimension d_state, removed)
    layers:2        (structured: the 2 blocks with the lowest block influence, removed; only blocks that keep the width)
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import RnnquantError

UNSTRUCTURED = ("magnitude", "wanda", "sparsegpt")
STRUCTURED_GROUPS = {"channels": None, "state": "d_state"}  # method -> channel group (None: the adapter's first)
METHODS = (*UNSTRUCTURED, *STRUCTURED_GROUPS, "layers")


@dataclass(frozen=True)
class PruneConfig:
    method: str
    sparsity: float = 0.0  # unstructured / channels: fraction removed
    nm: tuple[int, int] | None = None  # N:M pattern (keep N of every M)
    layers: int = 0  # layers to remove
    include_lm_head: bool = False  # the head is usually left dense (it dominates accuracy at small sizes)

    def validate(self) -> None:
        if self.method not in METHODS:
            raise RnnquantError(f"unknown pruning method {self.method!r}; expected one of {', '.join(METHODS)}")
        if self.method == "layers":
            if self.layers < 1:
                raise RnnquantError(f"layers: must remove at least 1 layer, got {self.layers}")
        elif self.nm is not None:
            n, m = self.nm
            if not (0 < n < m) or self.method not in UNSTRUCTURED:
                raise RnnquantError(f"N:M pattern {n}:{m} needs 0 < N < M and an unstructured method")
        elif not 0 < self.sparsity < 1:
            raise RnnquantError(f"sparsity must be in (0, 1), got {self.sparsity}")

    @property
    def label(self) -> str:
        if self.method == "layers":
            return f"layers:{self.layers}"
        return f"{self.method}:{self.nm[0]}:{self.nm[1]}" if self.nm else f"{self.method}:{self.sparsity:g}"


def parse_spec(spec: str) -> PruneConfig:
    parts = spec.split(":")
    try:
        if parts[0] == "layers" and len(parts) == 2:
            cfg = PruneConfig("layers", layers=int(parts[1]))
        elif len(parts) == 3:
            cfg = PruneConfig(parts[0], nm=(int(parts[1]), int(parts[2])))
        elif len(parts) == 2:
            cfg = PruneConfig(parts[0], sparsity=float(parts[1]))
        else:
            raise ValueError
    except ValueError:
        raise RnnquantError(f"bad --prune spec {spec!r}: expected METHOD:SPARSITY, METHOD:N:M or layers:K (e.g. wanda:0.5, sparsegpt:2:4, channels:0.25)") from None
    cfg.validate()
    return cfg
