"""The trace side of rnnquant's custom ops (``rnnquant.kernels.ortops`` builds and loads them):
while a ``fused_export`` is traced, each twin emits its op instead of stock ops.

    ConvSiluStep         twin: rnnquant.models.ssm.causal_conv_silu_step (Mamba-1's conv step)
    GatedSelectiveStep   twin: softplus, selective_state_update and the SiLU(z) gate (Mamba-1's SSM step)
    Rwkv7AttentionStep   twin: rnnquant.models.rwkv7.attention (RWKV-7's step between its Linears and W_o)
    SSDStep              twin: rnnquant.models.ssd.ssd_step (Mamba-2's state update and read-out)
    Int8Linear           twin: rnnquant.exporters.qops' W8A8 matmuls (static: QuantizeLinear -> MatMulInteger -> Cast -> Mul;
                         dynamic: per-row scale), its int8 codes stored in the layout the op reads (``pack_int8``)
    Int4Linear           twin: a 4-bit group-wise Linear with dynamic int8 activations (MatMulNBits, accuracy_level 4,
                         in stock ops), its MatMulNBits inputs permuted to the layout the op reads (``pack_nbits``)
"""
from __future__ import annotations

import contextlib

import torch

from .ortops import DOMAIN

FUSED_STEPS = ("Mamba-1 / FalconMamba (conv, selective scan), Mamba-2 (conv, SSD), RWKV-7 (attention between its Linears), "
               "and every architecture's int8 Linears with --cpu vnni and 4-bit Linears with int8 activations")  # where the twins are called
_FUSING = False


@contextlib.contextmanager
def fused_export(on: bool = True):
    """While on, ``fusing()`` is true: the twins trace as their custom op instead of stock ops."""
    global _FUSING
    before, _FUSING = _FUSING, on
    try:
        yield
    finally:
        _FUSING = before


def fusing() -> bool:
    return _FUSING and torch.onnx.is_in_onnx_export()


def _typed(outputs, like):
    """Give a custom op's outputs the types (shapes) of ``like``: ONNX shape inference cannot know them."""
    for out, ref in zip(outputs, like):
        out.setType(ref.type())
    return outputs


class ConvSiluStep(torch.autograd.Function):
    """``ai.rnnquant::ConvSiluStep``: one step of a depthwise causal conv and SiLU.
    Twin: ``rnnquant.models.ssm.causal_conv_silu_step`` (its forward, the stock ops)."""

    @staticmethod
    def forward(ctx, conv_state, x, w, b):
        from rnnquant.models.ssm import causal_conv_silu_step

        with fused_export(False):  # the twin's stock ops, not this op again
            return causal_conv_silu_step(conv_state, x, w, b)

    @staticmethod
    def symbolic(g, conv_state, x, w, b):
        return _typed(g.op(f"{DOMAIN}::ConvSiluStep", conv_state, x, w, b, outputs=2), (x, conv_state))


class GatedSelectiveStep(torch.autograd.Function):
    """``ai.rnnquant::GatedSelectiveStep``: Mamba's step after x_proj / dt_proj, in one op:
    dt = softplus(dt_raw); h' = exp(dt A) h + (dt u) B_t; y = (C_t^T h' + D u) * SiLU(z).
    u, dt_raw, z [B,E]; At [N,E] (A transposed); Bm, Cm [B,N]; D [E]; h [B,N,E] -> (y [B,E], h').
    Twin: ``rnnquant.models.ssm.softplus``, ``selective_state_update`` and the gate (its forward)."""

    @staticmethod
    def forward(ctx, u, dt_raw, At, Bm, Cm, D, z, h):
        from rnnquant.models.ssm import selective_state_update, softplus

        y, h = selective_state_update(u, softplus(dt_raw), At.T, Bm, Cm, D, h)
        return y * torch.nn.functional.silu(z), h

    @staticmethod
    def symbolic(g, u, dt_raw, At, Bm, Cm, D, z, h):
        return _typed(g.op(f"{DOMAIN}::GatedSelectiveStep", u, dt_raw, At, Bm, Cm, D, z, h, outputs=2), (u, h))


class Rwkv7AttentionStep(torch.autograd.Function):
    """``ai.rnnquant::Rwkv7AttentionStep``: one position of RWKV-7's attention from its Linears'
    outputs to W_o's input: decay, value residual, in-context rate, key normalisation and update, the
    delta rule, group norm, bonus and gate. S [B,H,N,N]; r, w_l, k, v, a_l, g [B,H N]; k_k, k_a,
    gn_w, gn_b [H N]; r_k [H,N]; v_first, v_l [B,H N] or None (layer 0) -> (y [B,H N], S').
    Twin: ``rnnquant.models.rwkv7.attention`` with ``delta_rule_step``."""

    @staticmethod
    def forward(ctx, S, r, w_l, k, v, a_l, g_, k_k, k_a, r_k, gn_w, gn_b, eps, v_first, v_l):
        from rnnquant.models.rwkv7 import attention

        return attention(S, r, w_l, k, v, a_l, g_, k_k, k_a, r_k, gn_w, gn_b, eps, v_first, v_l)

    @staticmethod
    def symbolic(g, S, r, w_l, k, v, a_l, g_, k_k, k_a, r_k, gn_w, gn_b, eps, v_first, v_l):
        residual = [] if v_l is None else [v_first, v_l]
        return _typed(g.op(f"{DOMAIN}::Rwkv7AttentionStep", S, r, w_l, k, v, a_l, g_, k_k, k_a, r_k, gn_w, gn_b, *residual,
                           eps_f=eps, outputs=2), (r, S))


class SSDStep(torch.autograd.Function):
    """``ai.rnnquant::SSDStep``: one step of Mamba-2's SSD recurrence, x [B,H,P], dt [B,H] (after
    softplus), A, D [H], Bm, Cm [B,G,N], h [B,H,N,P] -> (y [B,H,P], h'). Twin: ``rnnquant.models.ssd.ssd_step``."""

    @staticmethod
    def forward(ctx, x, dt, A, Bm, Cm, D, h):
        from rnnquant.models.ssd import ssd_step

        (H, P), (G, N) = x.shape[1:], Bm.shape[1:]
        with fused_export(False):
            return ssd_step(x, dt, A, Bm, Cm, D, h, (H, P, G, N))

    @staticmethod
    def symbolic(g, x, dt, A, Bm, Cm, D, h):
        return _typed(g.op(f"{DOMAIN}::SSDStep", x, dt, A, Bm, Cm, D, h, outputs=2), (x, h))


TILE = 16  # the fused Linears' weight tile: 16 output columns side by side (64 bytes: 4 int8 or 8 int4 inputs each)


def _tiles_last(t: torch.Tensor, N: int) -> torch.Tensor:
    """[N, ...] rows -> [Np/16, ..., 16]: each 16-row tile's entries side by side (rows zero padded)."""
    Np = -(-N // TILE) * TILE
    t = torch.nn.functional.pad(t, (0, 0) * (t.dim() - 1) + (0, Np - N))
    return t.reshape(Np // TILE, TILE, *t.shape[1:]).movedim(1, -1 if t.dim() == 2 else 2).contiguous()


def _rows(t: torch.Tensor, N: int) -> torch.Tensor:
    """``_tiles_last``'s inverse, [Np/16, ..., 16] -> the N rows flattened [N, -1], in ops a trace records."""
    return t.movedim(2, 1).reshape(t.shape[0] * TILE, -1)[:N]  # [Np/16, 16, ...]: axis 2 is the tile axis of either layout


def pack_int8(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 codes W [N, K] -> (Int8Linear's weight [Np/16, Kp/4, 16, 4], element [t, q, c, j] =
    W[16t + c, 4q + j], zero padded; colsum [N] int32, sum_k W[n, k]: the zero point's correction)."""
    N, K = codes.shape
    quads = torch.nn.functional.pad(codes, (0, -K % 4)).reshape(N, -1, 4)
    return _tiles_last(quads, N), codes.sum(1, dtype=torch.int32)


def unpack_int8(packed: torch.Tensor, K: int, N: int) -> torch.Tensor:
    """``pack_int8``'s inverse as the codes' transpose [K, N], in ops a trace records (a graph that
    reads the packed weight with stock ops: ONNX Runtime folds them into a constant at load)."""
    return _rows(packed, N)[:, :K].T


def packed_rows(packed: torch.Tensor, ids: torch.Tensor, K: int) -> torch.Tensor:
    """Rows ``ids`` [B] of the codes W [N, K] from the packed weight: int8 [B, K] (a tied
    embedding's lookup into its head), a Gather of tiles and a GatherElements of the column."""
    tiles = torch.index_select(packed, 0, torch.div(ids, TILE, rounding_mode="floor"))  # [B, Kp/4, 16, 4]
    B, quads = tiles.shape[:2]
    cols = tiles.permute(0, 2, 1, 3).reshape(B, TILE, quads * 4)
    index = torch.remainder(ids, TILE).reshape(B, 1, 1).expand(B, 1, quads * 4)
    return torch.gather(cols, 1, index)[:, 0, :K]


def with_last_dim(y, x, N: int):
    """Give a custom op's output ``y`` the shape of its input ``x`` with the last axis N (ONNX shape
    inference cannot know it)."""
    rank = x.type().dim()
    if rank is not None:
        y.setType(x.type().with_sizes([None] * (rank - 1) + [N]))
    return y


class Int8Linear(torch.autograd.Function):
    """``ai.rnnquant::Int8Linear``: y [..., N] = (xq - 128) @ W^T * scales (+ bias), xq the uint8
    activation (zero point 128) on the static grid ``a_scale`` or, where it is None, each row's dynamic
    one; W's codes packed (``pack_int8``). Twin: the stock W8A8 paths of ``rnnquant.exporters.qops``."""

    @staticmethod
    def forward(ctx, x, packed, colsum, w_scale, a_scale, bias):
        from rnnquant.exporters.qops import dynamic_w8_reference, static_w8_reference

        codes = unpack_int8(packed, x.shape[-1], w_scale.shape[0])
        y = dynamic_w8_reference(x, w_scale, codes) if a_scale is None else static_w8_reference(x, w_scale, a_scale, codes)
        return y if bias is None else y + bias

    @staticmethod
    def symbolic(g, x, packed, colsum, w_scale, a_scale, bias):
        assert bias is None or a_scale is not None, "a bias rides only with a static scale (no empty input between)"
        optional = [t for t in (a_scale, bias) if t is not None]
        return with_last_dim(g.op(f"{DOMAIN}::Int8Linear", x, packed, colsum, w_scale, *optional), x, w_scale.type().sizes()[0])


def pack_nbits(b: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, block: int):
    """4-bit MatMulNBits inputs (B [N, blocks, block/2], scales [N*blocks], packed zero points
    [N*ceil(blocks/2)] or None) -> Int4Linear's: B [Np/16, K/8, 16, 4] (each tile's 16 rows' 4-byte
    words side by side), scales [Np/16, blocks, 16], zeros [Np/16, ceil(blocks/2), 16]: the same bytes, permuted."""
    N, blocks = b.shape[:2]
    B = _tiles_last(b.reshape(N, -1, 4), N)  # [Np/16, K/8, 16, 4]
    S = _tiles_last(scales.reshape(N, blocks), N)  # [Np/16, blocks, 16]
    Z = None if zeros is None else _tiles_last(zeros.reshape(N, -1), N)
    return B, S, Z


def unpack_nbits(B: torch.Tensor, S: torch.Tensor, Z: torch.Tensor | None, N: int, block: int):
    """``pack_nbits``' inverse, in ops a trace records (the prefill graph's MatMulNBits reads the step
    graph's initializers through them; ONNX Runtime folds them at load)."""
    return _rows(B, N).reshape(N, -1, block // 2), _rows(S, N).reshape(-1), None if Z is None else _rows(Z, N).reshape(-1)


class Int4Linear(torch.autograd.Function):
    """``ai.rnnquant::Int4Linear``: y [..., N] = fake_quant_dynamic(x, 8) @ W^T, W 4-bit group-wise
    ((code - zero) * scale per ``block`` inputs); inputs ``pack_nbits``' (zeros None: symmetric codes,
    zero point 8). Twin: the simulation MatMulNBits (accuracy_level 4) stands for in the stock graph."""

    @staticmethod
    def forward(ctx, x, B, S, Z, N, block):
        from rnnquant.exporters.qops import nbits_reference

        b, s, z = unpack_nbits(B, S, Z, N, block)
        return nbits_reference(x, b, s, z, x.shape[-1], 4, True, Z is not None)

    @staticmethod
    def symbolic(g, x, B, S, Z, N, block):
        return with_last_dim(g.op(f"{DOMAIN}::Int4Linear", x, B, S, *([] if Z is None else [Z]), group_i=block, N_i=N), x, N)


def uses_fused_ops(model_proto) -> bool:
    """Whether a graph (or a Loop prefill built from it) imports rnnquant's op domain: the exporter
    imports a custom domain only where a node of it was traced."""
    return any(o.domain == DOMAIN for o in model_proto.opset_import)
