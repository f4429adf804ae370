"""Quantization arithmetic: integer grids, weight quantizers, activation fake-quant.

Glossary:
    b       bit width (8 or 4)
    qmax    largest integer of the grid: 2^(b-1)-1 symmetric, 2^b-1 asymmetric
    s       scale (float), one per tensor / output channel / (output channel, input group)
    z       zero point (integer), 0 for symmetric grids
    q       integer code: q = clamp(round(w / s) + z),  w_hat = (q - z) * s
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class QuantizedWeight:
    """The real integer form of a Linear weight [out, in]."""

    q: torch.Tensor  # codes [out, in]: int8 on a symmetric grid, uint8 on an asymmetric one (code_dtype)
    scale: torch.Tensor  # float32 [out, groups]
    zero: torch.Tensor  # int16 [out, groups] (wider than the codes, so q - zero cannot wrap)
    bits: int
    group_size: int  # columns per group; == in for per-channel; per-tensor has one shared scale
    symmetric: bool

    def dequantize(self) -> torch.Tensor:
        """(q - z) * s as float32 [out, in], in one float allocation (per-element scale and zero
        copies made a vocabulary head's dequantization 4x its size in temporaries)."""
        return _dequantize(self.q, self.scale, self.zero, self.group_size)

    def dequantize_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """``dequantize()[rows]`` without dequantizing the other rows (a tied embedding's lookup)."""
        return _dequantize(self.q[rows], self.scale[rows], self.zero[rows], self.group_size)

    def nbytes(self) -> int:
        """Bytes of the packed integer form: codes at ``bits`` each, fp32 scales, packed zero points."""
        codes = self.q.numel() * self.bits // 8
        zeros = 0 if self.symmetric else self.zero.numel() * self.bits // 8
        return codes + self.scale.numel() * 4 + zeros


def grid(bits: int, symmetric: bool) -> tuple[int, int]:
    """(qmin, qmax) of the integer grid."""
    return (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if symmetric else (0, 2**bits - 1)


def _dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int) -> torch.Tensor:
    """q [..., cols] codes, scale / zero [..., groups] -> (q - z) * s, float32, group by group in place.
    Codes and zero points are small integers, exact in float32: the same values as (q - z).float() * s."""
    w = q.float()  # [..., cols]
    for g in range(scale.shape[-1]):
        cols = w[..., g * group_size : (g + 1) * group_size]
        cols.sub_(zero[..., g : g + 1]).mul_(scale[..., g : g + 1])
    return w


def code_dtype(symmetric: bool) -> torch.dtype:
    """The narrowest integer type holding every code of a grid of up to 8 bits: codes are the bulk of a
    quantized model in memory (int16 codes were 2x the int8 bytes at every stage)."""
    return torch.int8 if symmetric else torch.uint8


def scale_zero(w: torch.Tensor, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Min-max scale and zero point over the last dim of ``w`` (keepdim)."""
    qmin, qmax = grid(bits, symmetric)
    if symmetric:
        s = w.abs().amax(-1, keepdim=True) / qmax
        return s.clamp(min=1e-12), torch.zeros_like(s, dtype=torch.int16)
    lo, hi = w.amin(-1, keepdim=True).clamp(max=0), w.amax(-1, keepdim=True).clamp(min=0)
    s = ((hi - lo) / qmax).clamp(min=1e-12)
    return s, torch.round(-lo / s).clamp(qmin, qmax).to(torch.int16)


def quantize_codes(w, s, z, bits: int, symmetric: bool) -> torch.Tensor:
    qmin, qmax = grid(bits, symmetric)
    return (torch.round(w / s) + z).clamp(qmin, qmax).to(code_dtype(symmetric))


def quantize_weight_rtn(w: torch.Tensor, bits: int, granularity: str, group_size: int, symmetric: bool) -> QuantizedWeight:
    """Round-to-nearest weight quantization at tensor, channel or group granularity."""
    out, cols = w.shape
    if granularity == "tensor":
        s, z = scale_zero(w.reshape(1, -1), bits, symmetric)
        s, z = s.expand(out, 1).contiguous(), z.expand(out, 1).contiguous()
        return QuantizedWeight(quantize_codes(w, s, z, bits, symmetric), s.float(), z, bits, cols, symmetric)
    gs = cols if granularity == "channel" else group_size
    wg = w.reshape(out, -(-cols // gs), min(gs, cols))  # a Linear narrower than a group: one partial group
    s, z = scale_zero(wg, bits, symmetric)  # [out, G, 1]
    rows = 4096  # rows are independent: in chunks, a vocabulary head's temporaries stay small
    q = torch.cat([quantize_codes(wg[i : i + rows], s[i : i + rows], z[i : i + rows], bits, symmetric) for i in range(0, out, rows)]).reshape(out, cols)
    return QuantizedWeight(q, s.squeeze(-1).float(), z.squeeze(-1), bits, gs, symmetric)


def fake_quant_dynamic(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Symmetric per-token (last dim) activation quantization, scale from each token's absmax."""
    qmax = 2 ** (bits - 1) - 1
    s = (x.abs().amax(-1, keepdim=True) / qmax).clamp(min=1e-12)
    return torch.round(x / s).clamp(-qmax, qmax) * s


def fake_quant_static(x: torch.Tensor, scale: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Symmetric activation quantization with a calibrated scale; values beyond the clip saturate to
    the full int8 range [-128, 127], exactly as ONNX QuantizeLinear does."""
    qmax = 2 ** (bits - 1) - 1
    return torch.round(x / scale).clamp(-qmax - 1, qmax) * scale
