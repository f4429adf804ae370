"""Mamba's selective scan as Triton kernels (the state lives in registers; one program owns a
block of channels of one sequence and walks time).

Glossary (as ``rnnquant.models.ssm``): u, dt, z [B, T, E]; A [E, N]; Bm, Cm [B, T, N]; D [E];
h [B, N, E] (d_inner last, as the model's state).  h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t;  y_t = (<h_t, C_t> + D u_t) * silu(z_t)
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


def selective_state_update_ref(u, dt, A, Bm, Cm, D, z, h):
    """One step. u, dt, z [B, E] (z None: no gate); Bm, Cm [B, N]; h [B, N, E] -> (y [B, E], h')."""
    h = torch.exp(dt.unsqueeze(1) * A.T) * h + (dt * u).unsqueeze(1) * Bm.unsqueeze(-1)
    y = (h * Cm.unsqueeze(-1)).sum(1) + u * D
    return (y * torch.nn.functional.silu(z) if z is not None else y), h


def selective_scan_ref(u, dt, A, Bm, Cm, D, z, h):
    """A whole sequence, by stepping the ref. Returns (y [B, T, E], h_T)."""
    ys = []
    for t in range(u.shape[1]):
        y, h = selective_state_update_ref(u[:, t], dt[:, t], A, Bm[:, t], Cm[:, t], D, z[:, t] if z is not None else None, h)
        ys.append(y)
    return torch.stack(ys, 1), h


@triton.jit
def _scan_kernel(u_ptr, dt_ptr, a_ptr, b_ptr, c_ptr, d_ptr, z_ptr, h_ptr, y_ptr, hout_ptr, T, E, N: tl.constexpr, BLOCK_E: tl.constexpr, HAS_Z: tl.constexpr):
    pb = tl.program_id(0)  # sequence
    pe = tl.program_id(1)  # block of channels
    re = pe * BLOCK_E + tl.arange(0, BLOCK_E)
    rn = tl.arange(0, N)
    em = re < E
    A = tl.load(a_ptr + re[:, None] * N + rn[None, :], mask=em[:, None], other=0.0)
    D = tl.load(d_ptr + re, mask=em, other=0.0)
    h = tl.load(h_ptr + pb * E * N + rn[None, :] * E + re[:, None], mask=em[:, None], other=0.0)  # h [B,N,E]
    for t in range(0, T):
        off = pb * T * E + t * E + re
        u = tl.load(u_ptr + off, mask=em, other=0.0)
        dt = tl.load(dt_ptr + off, mask=em, other=0.0)
        Bt = tl.load(b_ptr + pb * T * N + t * N + rn)
        Ct = tl.load(c_ptr + pb * T * N + t * N + rn)
        h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * Bt[None, :]
        y = tl.sum(h * Ct[None, :], axis=1) + D * u
        if HAS_Z:
            z = tl.load(z_ptr + off, mask=em, other=0.0)
            y = y * z / (1 + tl.exp(-z))
        tl.store(y_ptr + off, y, mask=em)
    tl.store(hout_ptr + pb * E * N + rn[None, :] * E + re[:, None], h, mask=em[:, None])


def selective_scan(u, dt, A, Bm, Cm, D, z, h, block_e: int = 32):
    """Same contract as ``selective_scan_ref`` (fp32 math; N must be a power of two; z None: no gate)."""
    Bsz, T, E = u.shape
    N = A.shape[1]
    if N & (N - 1):
        raise ValueError(f"d_state must be a power of two for the Triton scan, got {N}")
    f = lambda t: t.float().contiguous()  # noqa: E731
    y = torch.empty(Bsz, T, E, device=u.device, dtype=torch.float32)
    h_out = torch.empty(Bsz, N, E, device=u.device, dtype=torch.float32)
    zz = f(z) if z is not None else u  # any pointer: never read without HAS_Z
    _scan_kernel[(Bsz, triton.cdiv(E, block_e))](f(u), f(dt), f(A), f(Bm), f(Cm), f(D), zz, f(h), y, h_out, T, E, N=N, BLOCK_E=block_e, HAS_Z=z is not None)
    return y.to(u.dtype), h_out


def selective_state_update(u, dt, A, Bm, Cm, D, z, h, block_e: int = 32):
    """Same contract as ``selective_state_update_ref``: the scan kernel over one time step."""
    y, h = selective_scan(u[:, None], dt[:, None], A, Bm[:, None], Cm[:, None], D, z[:, None] if z is not None else None, h, block_e)
    return y[:, 0], h
