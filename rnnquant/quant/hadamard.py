"""Orthonormal Hadamard rotations (QuaRot / Quamba): y = W x = (W Q)(Q^T x) for Q^T Q = I.

Rotating spreads an outlier channel's energy over all channels, so a per-tensor activation
scale no longer has to cover one huge channel. Q = H_n / sqrt(n) with H_n Sylvester's ±1
Hadamard for n a power of two; for n = 2^k * m (m odd) we use the block-diagonal
I_m ⊗ H_{2^k} / sqrt(2^k), still orthonormal but mixing only within blocks of 2^k channels.
"""
from __future__ import annotations

import functools

import torch


def sylvester(n: int) -> torch.Tensor:
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


@functools.lru_cache(maxsize=8)
def hadamard_matrix(n: int) -> torch.Tensor:
    """Orthonormal, symmetric [n, n] rotation; one shared tensor per size (every rotated Linear of a
    width holds the same one: 24 private [1536, 1536] copies were 226 MB at mamba-130m). Read-only."""
    p = n & -n  # largest power-of-two factor
    block = sylvester(p) / p**0.5
    return torch.block_diag(*[block] * (n // p)) if n != p else block
