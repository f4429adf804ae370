"""Selective scan (Mamba's S6), the parallel form used by ``forward``.

Glossary (Gu & Dao 2023, "Mamba", Algorithm 2):
    u   [B, T, E]  input to the SSM (x after conv + SiLU), E = d_inner
    dt  [B, T, E]  step size Delta after softplus
    A   [E, N]     state matrix (diagonal, negative), N = d_state
    Bm  [B, T, N]  input matrix B_t (input dependent)
    Cm  [B, T, N]  output matrix C_t (input dependent)
    D   [E]        skip connection
    h   [B, E, N]  the recurrent state
Discretisation (zero-order hold on A, Euler on B):  dA = exp(dt * A),  dB u = dt * B * u
Recurrence:  h_t = dA_t * h_{t-1} + dB_t u_t;   y_t = <h_t, C_t> + D * u_t
"""
from __future__ import annotations

import torch


def selective_scan(u, dt, A, Bm, Cm, D, h0, chunk_size: int = 64):
    """Returns (y [B,T,E], h_T [B,E,N]).

    Chunked over time so memory is O(B * chunk * E * N) whatever T is: the discretisation
    and the C readout are batched over a chunk, and inside it the recurrence is two
    elementwise ops per step (on CPU at these sizes that beats a log-depth parallel scan,
    which does log2(chunk) times the arithmetic). On CUDA (or RNNQUANT_KERNELS=triton) the Triton
    scan of ``rnnquant.kernels`` runs instead.
    """
    from rnnquant.kernels import use_triton

    if use_triton(u) and not torch.onnx.is_in_onnx_export():
        from rnnquant.kernels.selective_scan import selective_scan as triton_scan

        return triton_scan(u, dt, A, Bm, Cm, D, None, h0)
    h = h0
    ys = []
    for s in range(0, u.shape[1], chunk_size):
        dt_c = dt[:, s : s + chunk_size].transpose(0, 1).unsqueeze(-1)  # [L,B,E,1], time-major so steps are contiguous
        dA = torch.exp(dt_c * A)  # [L,B,E,N]
        dBu = (dt_c * u[:, s : s + chunk_size].transpose(0, 1).unsqueeze(-1)) * Bm[:, s : s + chunk_size].transpose(0, 1).unsqueeze(2)
        hs = []
        for a, b in zip(dA.unbind(0), dBu.unbind(0)):  # unbind: one stack in backward, not L zero-fills
            h = a * h + b
            hs.append(h)
        ys.append(torch.einsum("lben,bln->ble", torch.stack(hs), Cm[:, s : s + chunk_size]))
    y = torch.cat(ys, 1) + u * D
    return y, h


def selective_state_update(u, dt, A, Bm, Cm, D, h):
    """One step of the recurrence. u, dt [B,E]; Bm, Cm [B,N]; h [B,E,N] -> (y [B,E], h')."""
    from rnnquant.kernels import use_triton

    if use_triton(u) and not torch.onnx.is_in_onnx_export():
        from rnnquant.kernels.selective_scan import selective_state_update as triton_step

        return triton_step(u, dt, A, Bm, Cm, D, None, h)
    h = torch.exp(dt.unsqueeze(-1) * A) * h + (dt * u).unsqueeze(-1) * Bm.unsqueeze(1)
    y = (h * Cm.unsqueeze(1)).sum(-1) + u * D
    return y, h
