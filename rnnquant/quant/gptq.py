"""GPTQ (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative
Pre-trained Transformers", Algorithm 1): quantize a weight column by column, pushing each
column's rounding error onto the columns not yet quantized through the inverse Hessian.

    H = 2 X^T X / n            [in, in], X the Linear's calibration inputs
    U = chol(H^-1)^T           upper Cholesky factor of the inverse (dampened) Hessian
    for column j:  q_j = quant(w_j);  e = (w_j - q_j) / U_jj;  w_{j+1:} -= e U_{j, j+1:}
"""
from __future__ import annotations

import torch

from .primitives import QuantizedWeight, code_dtype, quantize_codes, scale_zero


class HessianAccumulator:
    """Running H = 2/n sum x x^T over the rows of every input batch."""

    def __init__(self, cols: int):
        self.H = torch.zeros(cols, cols, dtype=torch.float64)
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).double()
        self.H += 2 * x.T @ x
        self.n += x.shape[0]

    def hessian(self) -> torch.Tensor:
        return (self.H / max(self.n, 1)).float()


def inverse_hessian_factor(H: torch.Tensor, W: torch.Tensor, percdamp: float = 0.01) -> torch.Tensor:
    """U = chol((H + damp I)^-1)^T, the upper factor GPTQ and SparseGPT walk column by column.
    Dead inputs (never active: H_jj = 0) get H_jj = 1 and their weight columns are zeroed in place."""
    H = H.clone().double()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += percdamp * torch.diag(H).mean() * torch.eye(H.shape[0], dtype=H.dtype)
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True).float()


@torch.no_grad()
def gptq_quantize(w: torch.Tensor, H: torch.Tensor, bits: int, granularity: str, group_size: int, symmetric: bool,
                  block_size: int = 128, percdamp: float = 0.01, keep: torch.Tensor | None = None) -> QuantizedWeight:
    """GPTQ. ``keep`` [out, in] bool fixes a pruning mask: weights outside it are quantized to exactly
    0 and their error is pushed onto the later columns like any other (SparseGPT's joint
    prune + quantize); without it, the updates would refill a pruned weight's zeros."""
    W = w.detach().clone().float()  # [out, in]
    if keep is None:
        keep = torch.ones_like(W, dtype=torch.bool)
    out, cols = W.shape
    U = inverse_hessian_factor(H, W, percdamp)

    gs = group_size if granularity == "group" else cols
    block_size = max(block_size, gs) if granularity == "group" else block_size
    if granularity == "tensor":
        s_all, z_all = scale_zero(W.reshape(1, -1), bits, symmetric)
        s_all, z_all = s_all.expand(out, 1), z_all.expand(out, 1)
    elif granularity == "channel":
        s_all, z_all = scale_zero(W, bits, symmetric)
    Q = torch.zeros(out, cols, dtype=code_dtype(symmetric))
    scales, zeros = [], []
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1, U1 = W[:, i1:i2].clone(), U[i1:i2, i1:i2]
        Err = torch.zeros_like(W1)
        for i in range(i2 - i1):
            if granularity == "group" and (i1 + i) % gs == 0:  # group params from the error-updated kept weights
                s, z = scale_zero(W1[:, i : i + gs] * keep[:, i1 + i : i1 + i + gs], bits, symmetric)
                scales.append(s)
                zeros.append(z)
            elif granularity != "group":
                s, z = s_all, z_all
            q = torch.where(keep[:, i1 + i : i1 + i + 1], quantize_codes(W1[:, i : i + 1], s, z, bits, symmetric), z)  # z codes 0.0
            Q[:, i1 + i] = q[:, 0]
            err = (W1[:, i] - ((q[:, 0] - z[:, 0]).float() * s[:, 0])) / U1[i, i]
            W1[:, i:] -= err[:, None] * U1[i, i:][None, :]
            Err[:, i] = err
        W[:, i2:] -= Err @ U[i1:i2, i2:]
    if granularity == "group":
        s, z = torch.cat(scales, 1), torch.cat(zeros, 1)
    else:
        s, z = s_all.contiguous(), z_all.contiguous()
    return QuantizedWeight(Q, s.float(), z, bits, gs, symmetric)
