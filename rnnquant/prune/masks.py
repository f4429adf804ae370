"""Unstructured and N:M weight pruning: magnitude, Wanda and SparseGPT (algorithm math only).

Glossary:
    W [out, in]   a Linear's weight;  X [n, in]  its calibration inputs
    Wanda (Sun et al. 2023):  score_ij = |W_ij| * ||X_j||_2, pruned per output row
    SparseGPT (Frantar & Alistarh 2023): OBS pruning column block by column block, with the
        error of each pruned weight pushed onto the unpruned columns through H^-1, H = 2 X^T X / n
    N:M: in every group of M consecutive input weights of a row, keep the N largest scores
    OWL (Yin et al. 2024): per layer l, D_l = share of its Wanda scores above M x their mean (the
        outlier ratio); layers with more outliers are pruned less: S_l = S - (D'_l - mean D'),
        D' = D rescaled to [0, 2 lambda]. We take the mean weighted by layer size, so the pruned
        share of all weights stays S (llm-compressor's OWL takes the plain mean).
"""
from __future__ import annotations

import torch

from ..quant.gptq import inverse_hessian_factor


def _keep_mask(score: torch.Tensor, sparsity: float, nm: tuple[int, int] | None) -> torch.Tensor:
    """True where a weight is kept: the top (1 - sparsity) scores of each row, or N of every M."""
    out, cols = score.shape
    if nm is not None:
        n, m = nm
        groups = score.reshape(out, cols // m, m)
        idx = groups.topk(m - n, dim=-1, largest=False).indices
        keep = torch.ones_like(groups, dtype=torch.bool).scatter_(-1, idx, False)
        return keep.reshape(out, cols)
    k = int(round(cols * sparsity))
    keep = torch.ones_like(score, dtype=torch.bool)
    if k:
        keep.scatter_(1, score.topk(k, dim=1, largest=False).indices, False)
    return keep


def magnitude_mask(w: torch.Tensor, sparsity: float, nm=None) -> torch.Tensor:
    return _keep_mask(w.abs(), sparsity, nm)


def wanda_scores(w: torch.Tensor, act_norm: torch.Tensor) -> torch.Tensor:
    """|W_ij| * ||X_j||_2; act_norm [in] may be any positive multiple of ||X_j||_2."""
    return w.abs() * act_norm.unsqueeze(0)


def wanda_mask(w: torch.Tensor, act_norm: torch.Tensor, sparsity: float, nm=None) -> torch.Tensor:
    """Only the order within a row matters, so act_norm may be any positive multiple of ||X_j||_2."""
    return _keep_mask(wanda_scores(w, act_norm), sparsity, nm)


@torch.no_grad()
def sparsegpt_prune(w: torch.Tensor, H: torch.Tensor, sparsity: float, nm=None, block_size: int = 128, percdamp: float = 0.01):
    """Returns (pruned weight, keep mask). Masks are chosen per block by w^2 / [H^-1]_jj^2."""
    W = w.detach().clone().float()
    out, cols = W.shape
    U = inverse_hessian_factor(H, W, percdamp)
    keep = torch.ones_like(W, dtype=torch.bool)
    if nm is not None:
        block_size = max(block_size // nm[1], 1) * nm[1]
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1, U1 = W[:, i1:i2].clone(), U[i1:i2, i1:i2]
        Err = torch.zeros_like(W1)
        score = W1**2 / torch.diag(U1).unsqueeze(0) ** 2
        keep1 = _keep_mask(score, sparsity, nm)
        for i in range(i2 - i1):
            q = torch.where(keep1[:, i], W1[:, i], torch.zeros_like(W1[:, i]))
            err = (W1[:, i] - q) / U1[i, i]
            W1[:, i:] -= err[:, None] * U1[i, i:][None, :]
            W1[:, i] = q
            Err[:, i] = err
        W[:, i1:i2] = W1
        keep[:, i1:i2] = keep1
        W[:, i2:] -= Err @ U[i1:i2, i2:]
    return W * keep, keep


def owl_sparsities(scores: dict[str, torch.Tensor], sparsity: float, m: float, lam: float) -> dict[str, float]:
    """scores: layer -> all its Wanda scores (flat). Returns layer -> sparsity (see OWL above)."""
    ratio = {k: float((v > m * v.mean()).float().mean()) for k, v in scores.items()}
    lo, hi = min(ratio.values()), max(ratio.values())
    scaled = {k: (r - lo) / (hi - lo) * 2 * lam if hi > lo else 0.0 for k, r in ratio.items()}
    size = {k: v.numel() for k, v in scores.items()}
    mean = sum(scaled[k] * size[k] for k in scores) / sum(size.values())
    return {k: sparsity - (scaled[k] - mean) for k in scores}
