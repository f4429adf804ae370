"""Fused dequantize + GEMV: y[b, n] = sum_k x[b, k] * (q[n, k] - z[n, g(k)]) * s[n, g(k)].

Weights stay in their integer form in memory (int8 per output channel, or 4-bit group-wise packed
two per byte, low nibble first, unsigned with zero points: ONNX Runtime's MatMulNBits layout, the
one the exporter writes); each program dequantizes a [BLOCK_N, BLOCK_K] tile in registers, so a
decode step reads 1 or 0.5 bytes per weight instead of 4.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


def w8_gemv_ref(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x [B, K] float; q [N, K] int8; scale [N] -> [B, N]."""
    return x.float() @ (q.float() * scale[:, None].float()).T


def w4_gemv_ref(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int) -> torch.Tensor:
    """x [B, K]; packed uint8 [N, K/2]; scales [N, K/group]; zeros uint8 [N, K/group] (8 for symmetric) -> [B, N]."""
    codes = torch.stack([packed & 0xF, packed >> 4], -1).reshape(packed.shape[0], -1).float()  # [N, K]
    w = (codes - zeros.float().repeat_interleave(group_size, 1)) * scales.float().repeat_interleave(group_size, 1)
    return x.float() @ w.T


@triton.jit
def _w8_kernel(x_ptr, q_ptr, s_ptr, y_ptr, B, N, K, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    rn = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    rb = tl.arange(0, BLOCK_B)
    acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + rb[:, None] * K + rk[None, :], mask=(rb[:, None] < B) & (rk[None, :] < K), other=0.0).to(tl.float32)
        q = tl.load(q_ptr + rn[:, None] * K + rk[None, :], mask=(rn[:, None] < N) & (rk[None, :] < K), other=0).to(tl.float32)
        acc += tl.sum(x[:, None, :] * q[None, :, :], axis=2)
    s = tl.load(s_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)
    tl.store(y_ptr + rb[:, None] * N + rn[None, :], acc * s[None, :], mask=(rb[:, None] < B) & (rn[None, :] < N))


@triton.jit
def _w4_kernel(x_ptr, p_ptr, s_ptr, z_ptr, y_ptr, B, N, K, G, GROUP: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)
    rn = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    rb = tl.arange(0, BLOCK_B)
    nmask = rn < N
    acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
    for g in range(0, G):  # one group per iteration: one scale and zero point per row
        rk = g * GROUP + tl.arange(0, GROUP)
        x = tl.load(x_ptr + rb[:, None] * K + rk[None, :], mask=(rb[:, None] < B) & (rk[None, :] < K), other=0.0).to(tl.float32)
        byte = tl.load(p_ptr + rn[:, None] * (K // 2) + (rk[None, :] // 2), mask=nmask[:, None] & (rk[None, :] < K), other=0).to(tl.int32)
        code = (byte >> ((rk[None, :] % 2) * 4)) & 0xF
        s = tl.load(s_ptr + rn * G + g, mask=nmask, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + rn * G + g, mask=nmask, other=0).to(tl.float32)
        w = (code.to(tl.float32) - z[:, None]) * s[:, None]
        acc += tl.sum(x[:, None, :] * w[None, :, :], axis=2)
    tl.store(y_ptr + rb[:, None] * N + rn[None, :], acc, mask=(rb[:, None] < B) & nmask[None, :])


def _block_b(B: int) -> int:
    if not 1 <= B <= 8:
        raise ValueError(f"the GEMV kernels serve decode batches of 1 to 8, got {B}")
    return triton.next_power_of_2(B)


def w8_gemv(x, q, scale, block_n: int = 32, block_k: int = 64):
    B, K = x.shape
    N = q.shape[0]
    y = torch.empty(B, N, device=x.device, dtype=torch.float32)
    _w8_kernel[(triton.cdiv(N, block_n),)](x.contiguous(), q.contiguous(), scale.contiguous(), y, B, N, K, BLOCK_B=_block_b(B), BLOCK_N=block_n, BLOCK_K=block_k)
    return y


def w4_gemv(x, packed, scales, zeros, group_size: int, block_n: int = 32):
    B, K = x.shape
    N = packed.shape[0]
    if K % group_size or group_size & (group_size - 1):
        raise ValueError(f"group_size {group_size} must be a power of two dividing K={K}")
    y = torch.empty(B, N, device=x.device, dtype=torch.float32)
    _w4_kernel[(triton.cdiv(N, block_n),)](x.contiguous(), packed.contiguous(), scales.contiguous(), zeros.contiguous(), y, B, N, K, K // group_size,
                                           GROUP=group_size, BLOCK_B=_block_b(B), BLOCK_N=block_n)
    return y
