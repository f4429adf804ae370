"""ONNX lowering of QLinear / QEmbedding: integer operators ONNX Runtime's CPU EP runs natively.

Each quantized matmul is a ``torch.autograd.Function`` whose ``forward`` is the simulation
(so tracing sees the right shapes and values) and whose ``symbolic`` emits the ONNX ops:

    W8, A8 dynamic per-token: amax = ReduceMax|x|; s = amax/127; xq = Cast<uint8>(Round(x/s) + 128)
                              y = Cast<float>(MatMulInteger(xq, Wt, a_zp=128)) * s * w_scale
    W8, A8 static:            xq = QuantizeLinear(x, a_scale, 128:uint8); y = Cast(MatMulInteger(xq, Wt, 128)) * (a_scale * w_scale)
Activations go in as uint8 with zero point 128 (exactly the symmetric int8 grid shifted): ONNX
Runtime's fast x86 kernels are U8S8; S8S8 MatMulInteger runs a much slower path (measured:
docs/RESULTS.md). On AVX2 machines without VNNI, U8S8 can saturate int16 pair sums with
full-range weights (ORT's `reduce_range` caveat); AVX512-VNNI and ARM dot-product kernels do not.
    W8, A float:              y = MatMul(x, DequantizeLinear(Wt, w_scale, axis=1))  (faithful but slow: ORT re-runs
                              the DequantizeLinear every step, and 8-bit MatMulNBits without int8 activations
                              takes a reference path; presets therefore give W8 Linears int8 activations)
    group-wise (4 or 8 bit):  y = com.microsoft.MatMulNBits(x, B, scales[, zero_points]); accuracy_level 4
                              (int8 activations, per block) when the recipe quantizes activations
Wt is the int8 code matrix [in, out]; w_scale is per output column. Rotations and float
outlier columns stay ordinary traced ops (MatMul with the ±1/sqrt(n) matrix, Gather + MatMul).
"""
from __future__ import annotations

import torch

from rnnquant.quant.primitives import fake_quant_dynamic, fake_quant_static

MS = "com.microsoft"


def _c(g, t: torch.Tensor):
    return g.op("Constant", value_t=t)


class _DynamicW8(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, wt, w_scale):
        return fake_quant_dynamic(x, 8) @ (wt.float() * w_scale)

    @staticmethod
    def symbolic(g, x, wt, w_scale):
        amax = g.op("ReduceMax", g.op("Abs", x), axes_i=[-1], keepdims_i=1)
        s = g.op("Div", g.op("Max", amax, _c(g, torch.tensor(1e-12 * 127))), _c(g, torch.tensor(127.0)))
        q = g.op("Round", g.op("Div", x, s))  # |x / s| <= 127 by construction: the simulation's clamp is a no-op, not emitted
        qu = g.op("Cast", g.op("Add", q, _c(g, torch.tensor(128.0))), to_i=2)  # to 2 = UINT8: q + 128
        acc = g.op("MatMulInteger", qu, wt, _c(g, torch.tensor(128, dtype=torch.uint8)))  # U8S8, a_zero_point 128
        return g.op("Mul", g.op("Mul", g.op("Cast", acc, to_i=1), s), w_scale)


class _StaticW8(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, wt, w_scale, a_scale):
        return fake_quant_static(x, a_scale, 8) @ (wt.float() * w_scale)

    @staticmethod
    def symbolic(g, x, wt, w_scale, a_scale):
        zp = _c(g, torch.tensor(128, dtype=torch.uint8))  # uint8 with zero point 128: the same grid as int8
        q = g.op("QuantizeLinear", x, a_scale, zp)
        acc = g.op("MatMulInteger", q, wt, zp)
        return g.op("Mul", g.op("Cast", acc, to_i=1), g.op("Mul", a_scale, w_scale))


class _FloatActW8(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, wt, w_scale):
        return x @ (wt.float() * w_scale)

    @staticmethod
    def symbolic(g, x, wt, w_scale):
        return g.op("MatMul", x, g.op("DequantizeLinear", wt, w_scale, _c(g, torch.zeros(wt.type().sizes()[1], dtype=torch.int8)), axis_i=1))


class _MatMulNBits(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, b, scales, zeros, w_deq_t, K, N, bits, block_size, accuracy_level, has_zeros):
        return (fake_quant_dynamic(x, 8) if accuracy_level == 4 else x) @ w_deq_t

    @staticmethod
    def symbolic(g, x, b, scales, zeros, w_deq_t, K, N, bits, block_size, accuracy_level, has_zeros):
        inputs = [x, b, scales] + ([zeros] if has_zeros else [])
        y = g.op(f"{MS}::MatMulNBits", *inputs, K_i=K, N_i=N, bits_i=bits, block_size_i=block_size, accuracy_level_i=accuracy_level)
        rank = x.type().dim()
        if rank is not None:  # tell the exporter's shape inference what a custom op returns
            y.setType(x.type().with_sizes([None] * (rank - 1) + [N]))
        return y


def nbits_tensors(qw, K: int):
    """MatMulNBits inputs from a QuantizedWeight: B uint8 [N, blocks, block*bits/8], scales [N*blocks],
    zero points packed like B (two 4-bit or one 8-bit per byte) [N * ceil(blocks*bits/8)]."""
    N, bs, bits = qw.q.shape[0], qw.group_size, qw.bits
    blocks = -(-K // bs)
    u = (qw.q.to(torch.int16) + (2 ** (bits - 1) if qw.symmetric else 0)).to(torch.uint8)  # unsigned codes (int8 + 128 would wrap)
    u = torch.nn.functional.pad(u, (0, blocks * bs - K))
    if bits == 4:
        u = u[:, 0::2] | (u[:, 1::2] << 4)
    b = u.reshape(N, blocks, bs * bits // 8).contiguous()
    scales = qw.scale.reshape(-1).float().contiguous()
    zeros = None
    if not qw.symmetric:
        z = qw.zero.to(torch.uint8)
        if bits == 4:
            z = torch.nn.functional.pad(z, (0, blocks % 2))
            z = z[:, 0::2] | (z[:, 1::2] << 4)
        zeros = z.reshape(-1).contiguous()
    return b, scales, zeros


def prepare(qlinear) -> None:
    """Attach the export-form buffers of a QLinear (integer codes laid out for the chosen op)."""
    qw = qlinear.qweight
    if qw is None or hasattr(qlinear, "_export"):
        return
    K = len(qlinear.quant_idx)
    if qw.group_size < K or qw.bits == 4:
        b, scales, zeros = nbits_tensors(qw, K)
        qlinear._export = ("nbits", b, scales, zeros if zeros is not None else torch.zeros(0, dtype=torch.uint8), qw.dequantize().T.contiguous(),
                           zeros is not None, qw.bits, qw.group_size)
        return
    if not qw.symmetric:  # int8 asymmetric: stored codes are 0..255 with zero points; re-center is exact only if zero == 128
        raise NotImplementedError("asymmetric 8-bit per-channel weights: use a symmetric grid or group-wise (MatMulNBits)")
    qlinear._export = ("w8", qw.q.T.contiguous(), qw.scale[:, 0].float().contiguous())


def qlinear_forward(m, x):
    """Export-mode forward of a QLinear (same math as QLinear.forward, ONNX-friendly ops)."""
    if m.rotation is not None:
        x = x @ m.rotation
    if m.qweight is None:
        y = x @ m.w_float.T
    else:
        xq = torch.index_select(x, -1, m.quant_idx) if m.mixed else x
        kind, *t = m._export
        if kind == "nbits":
            b, scales, zeros, w_deq_t, has_zeros, bits, block = t
            acc = 4 if m.a_bits else 0
            y = _MatMulNBits.apply(xq, b, scales, zeros, w_deq_t, len(m.quant_idx), m.out_features, bits, block, acc, has_zeros)
        elif m.a_bits is None:
            y = _FloatActW8.apply(xq, *t)
        elif m.a_mode == "dynamic":
            y = _DynamicW8.apply(xq, *t)
        else:
            y = _StaticW8.apply(xq, *t, m.a_scale)
        if m.mixed:
            y = y + torch.index_select(x, -1, m.float_idx) @ m.w_float.T
    return y + m.bias if m.bias is not None else y


def qembedding_forward(e, ids):
    """Gather rows of the lm_head's int8 codes (one shared initializer) and scale them."""
    m = e.lm_head
    kind, *t = getattr(m, "_export", (None,))
    if ids.dim() > 1:  # the prefill graph's [B, T] ids (a trace-time branch on rank, not on data)
        return qembedding_forward(e, ids.reshape(-1)).reshape(*ids.shape, -1)
    if kind == "w8":
        wt, w_scale = t
        return torch.index_select(wt, 1, ids).T.float() * torch.index_select(w_scale, 0, ids).unsqueeze(-1)
    if kind == "nbits" and t[5] == 8 and t[0].shape[1] == 1 and not t[4]:  # one 8-bit block per row, symmetric
        b, scales = t[0], t[1]
        rows = torch.index_select(b, 0, ids).reshape(ids.shape[0], -1)  # [B, K] uint8 codes + 128
        return (rows.float() - 128) * torch.index_select(scales, 0, ids).unsqueeze(-1)
    return torch.nn.functional.embedding(ids, e._table)  # the dequantized table, made before tracing: an initializer
