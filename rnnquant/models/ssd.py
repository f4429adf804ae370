"""Mamba-2's SSD (state space duality) scan: the chunked parallel form and the one-step recurrence.

Glossary (Dao & Gu 2024, "Transformers are SSMs", section 6 and Listing 1):
    x   [B, T, H, P]  SSM input per head (x after conv + SiLU), H heads of P = head_dim channels
    dt  [B, T, H]     step size Delta per head, after softplus (+ dt_bias) and the time-step limit
    A   [H]           scalar state decay per head (negative): a_t = exp(dt_t A) in (0, 1]
    Bm  [B, T, G, N]  input matrix, one per group of H / G heads (n_groups G, state size N)
    Cm  [B, T, G, N]  output matrix, grouped like Bm
    D   [H]           skip connection per head
    h   [B, H, N, P]  the recurrent state (P last: every step op runs over contiguous rows of P)
Recurrence:  h_t = a_t h_{t-1} + dt_t B_t x_t^T;   y_t = C_t^T h_t + D x_t

Chunked form (no loop over time, exact): cut time into chunks of Q tokens, acum = cumsum of dt A
inside a chunk (<= 0 and decreasing). Then
  1. inside a chunk, from a zero entry state: y_diag[l] = sum_{s<=l} exp(acum_l - acum_s) (C_l . B_s) dt_s x_s
     (the masked "attention" form: a Q x Q decay matrix per head);
  2. each chunk's own final state S = sum_s exp(acum_last - acum_s) dt_s B_s x_s^T and its decay exp(acum_last);
  3. a doubling (Hillis-Steele) scan over the chunks' (decay, S) pairs gives the state entering every chunk;
  4. y_off[l] = exp(acum_l) C_l . h_entry;   y = y_diag + y_off + D x.
Work O(T Q H (N + P)) + O((T / Q) H N P log C). Exact up to SSD_MAX_TOKENS per call.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .ssm import _linear_scan

SSD_CHUNK = 64  # tokens per chunk: the Q x Q decay matrix per head stays small
SSD_DOUBLINGS = 12  # chunks composed by the doubling scan: 2**12 chunks = 262,144 tokens per call
SSD_MAX_TOKENS = SSD_CHUNK * 2**SSD_DOUBLINGS


def _pad_time(t: torch.Tensor, pad: int) -> torch.Tensor:
    """Pad axis 1 (time) with zeros; with dt = 0 a padded step is the identity (a = 1, no input)."""
    return F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad))


def _across_chunks(decay, S, h0):
    """State after each chunk: h_c = decay_c h_{c-1} + S_c from h0. In a traced graph, a doubling
    scan with a fixed number of doublings (no loop over time, any length up to SSD_MAX_TOKENS);
    in eager PyTorch, a loop over the T / Q chunks (the doublings' work and memory are wasted on a
    few chunks, and training keeps every one of them for backward)."""
    if torch.onnx.is_in_onnx_export():
        carry, chunk_h = _linear_scan(decay, S, 1, SSD_DOUBLINGS)
        return carry * h0 + chunk_h
    h, out = h0[:, 0], []
    for a, s in zip(decay.unbind(1), S.unbind(1)):
        h = a * h + s
        out.append(h)
    return torch.stack(out, 1)


def ssd_scan(x, dt, A, Bm, Cm, D, h0):
    """The chunked SSD scan. Returns (y [B,T,H,P], h_T [B,H,N,P]).

    Shapes are reshaped with sizes read from tensors that came straight from a graph op (never
    ``unflatten``: torch.onnx bakes the traced sizes of its other axes into the graph)."""
    Bsz, T, H = dt.shape
    G, N, P = Bm.shape[2], Bm.shape[3], x.shape[3]
    R, Q = H // G, SSD_CHUNK  # heads per group, chunk length
    pad = (-T) % Q
    xs, dts, Bs, Cs = (_pad_time(t, pad) for t in (x, dt, Bm, Cm))
    xc = xs.reshape(Bsz, -1, Q, G, R, P)  # [B,C,Q,G,R,P], C chunks
    dtc = dts.reshape(Bsz, -1, Q, G, R)  # [B,C,Q,G,R]
    Bc, Cc = Bs.reshape(Bsz, -1, Q, G, N), Cs.reshape(Bsz, -1, Q, G, N)  # [B,C,Q,G,N]
    acum = torch.cumsum(dtc * A.reshape(G, R), 2)  # [B,C,Q,G,R]
    u = dtc.unsqueeze(-1) * xc  # dt_s x_s  [B,C,Q,G,R,P]
    # 1. within the chunk: decay from s to l (masked above the diagonal before exp: no overflow)
    causal = torch.ones(Q, Q, dtype=torch.bool).tril().reshape(Q, Q, 1, 1)
    seg = acum.unsqueeze(3) - acum.unsqueeze(2)  # [B,C,Ql,Qs,G,R]: acum_l - acum_s
    decay_ls = torch.exp(seg.masked_fill(~causal, float("-inf")))
    cb = torch.einsum("bclgn,bcsgn->bclsg", Cc, Bc)  # [B,C,Ql,Qs,G]
    y_diag = torch.einsum("bclsgr,bcsgrp->bclgrp", decay_ls * cb.unsqueeze(-1), u)
    # 2. each chunk's final state from a zero entry state
    to_end = torch.exp(acum[:, :, -1:] - acum)  # [B,C,Q,G,R]
    S = torch.einsum("bcsgn,bcsgrp->bcgrnp", Bc, to_end.unsqueeze(-1) * u)  # [B,C,G,R,N,P]
    # 3. across chunks
    chunk_decay = torch.exp(acum[:, :, -1]).unsqueeze(-1).unsqueeze(-1)  # [B,C,G,R,1,1]
    h0c = h0.reshape(Bsz, 1, G, R, N, P)
    h_out = _across_chunks(chunk_decay, S, h0c)  # [B,C,G,R,N,P] state after each chunk
    h_in = torch.cat([h0c, h_out[:, :-1]], 1)  # state entering each chunk
    # 4. the entry state's contribution, decayed to each position
    y_off = torch.einsum("bclgn,bcgrnp->bclgrp", Cc, h_in) * torch.exp(acum).unsqueeze(-1)
    y = (y_diag + y_off).reshape(Bsz, -1, H, P)[:, :T] + x * D.unsqueeze(-1)  # [B,T,H,P]
    return y, h_out[:, -1].reshape(Bsz, H, N, P)


def ssd_step(x, dt, A, Bm, Cm, D, h, sizes: tuple[int, int, int, int]):
    """One step. x [B,H,P], dt [B,H], Bm/Cm [B,G,N], h [B,H,N,P] -> (y [B,H,P], h').

    ``sizes`` = (H, P, G, N) as Python ints from the config, and -1 for the batch: every reshape
    is then one ONNX Reshape with a constant shape (sizes read from tensors trace into
    Shape/Gather/Concat chains, 36 % of the step graph's nodes when they were). Under
    ``export --fused`` one custom op (``rnnquant.kernels.fused.SSDStep``), this its twin."""
    from rnnquant.kernels.fused import SSDStep, fusing

    if fusing():
        return SSDStep.apply(x, dt, A, Bm, Cm, D, h)
    H, P, G, N = sizes
    R = H // G
    hg = h.reshape(-1, G, R, N, P)  # a group's heads share B and C: broadcast, no repeat
    a = torch.exp(dt * A).reshape(-1, G, R, 1, 1)
    u = (dt.unsqueeze(-1) * x).reshape(-1, G, R, 1, P)
    hg = a * hg + u * Bm.reshape(-1, G, 1, N, 1)
    y = (hg * Cm.reshape(-1, G, 1, N, 1)).sum(3).reshape(-1, H, P) + x * D.unsqueeze(-1)
    return y, hg.reshape(-1, H, N, P)
