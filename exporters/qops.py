"""ONNX lowering of QLinear / QEmbedding: integer operators ONNX Runtime's CPU EP runs natively.

Each quantized matmul is a ``torch.autograd.Function`` whose ``forward`` is the simulation
(so tracing sees the right shapes and values) and whose ``symbolic`` emits the ONNX ops:

    W8, A8 dynamic per-token: amax = ReduceMax|x|; s = amax/127; xq = Cast<uint8>(Round(x/s) + 128)
                              y = Cast<float>(MatMulInteger(xq, Wt, a_zp=128, b_zp=128)) * s * w_scale
    W8, A8 static:            xq = QuantizeLinear(x, a_scale, 128:uint8); y = Cast(MatMulInteger(xq, Wt, 128, 128)) * (a_scale * w_scale)
    W8, A8, fused:            ``export --fused --cpu vnni``: y = ai.rnnquant::Int8Linear(x, packed codes, colsum, w_scale[, a_scale]),
                              the same integers and roundings in one op over codes packed for vpdpbusd
                              (``rnnquant.kernels.fused.pack_int8``); the prefill graph unpacks that one initializer in stock ops
    4-bit, A8, fused:         ``export --fused``: y = ai.rnnquant::Int4Linear(x, B, scales[, zero_points]), MatMulNBits'
                              inputs permuted to the op's tiles (``pack_nbits``); the prefill's MatMulNBits permutes them back
    W8 over W8_BLOCK_BYTES:   MatMulInteger per column block of Wt, the int32 sums concatenated, then one Cast and scale
Activations go in as uint8 with zero point 128 (exactly the symmetric int8 grid shifted). The
weights' form is the export's ``int8_weights`` choice (``rnnquant export --cpu``):
  "uint8" (``--cpu any``, the default): code + 128, zero point 128: U8U8, exact on every CPU.
  "int8" (``--cpu vnni``): the codes as they are, zero point 0: U8S8, which ONNX Runtime's x86 VNNI
      and AMX kernels run faster (the head's matmul 2.1x, the int8 step 14-36 % less at mamba-130m
      shape, docs/RESULTS.md §18), but which on
      x86 without AVX512-VNNI / AVX-VNNI / AMX (every AVX2-only CPU, AMD Zen 1-3, Skylake) sums pairs
      of u8 x s8 products in int16 (vpmaddubsw) and saturates with full-range weights: a
      [1, 768] x [768, 3072] product off by up to 1e5 in 3e5, perplexities off by 1-50 %. The
      runner refuses such a graph on such a CPU (``runner.check_int8_kernels``).
S8S8 runs a much slower path (~50x, docs/RESULTS.md §16).
    W8, A float:              y = com.microsoft.MatMulNBits(x, B, scales), bits 8, one block per row (block_size the
                              power of two >= K), accuracy_level 0. Not DequantizeLinear -> MatMul: ORT's default
                              optimizer fuses that pair into MatMulNBits with accuracy_level 4 (its session option
                              session.qdq_matmulnbits_accuracy_level), silently quantizing the activations
                              (2e-2 off in a logit). Slow either way: presets give W8 Linears int8 activations.
    group-wise (4 or 8 bit):  y = com.microsoft.MatMulNBits(x, B, scales[, zero_points]); accuracy_level 4
                              (int8 activations, per block) when the recipe quantizes activations
Wt is the code matrix [in, out] (uint8 code + 128, or int8); w_scale is per output column. Rotations and float
outlier columns stay ordinary traced ops (MatMul with the ±1/sqrt(n) matrix, Gather + MatMul).
"""
from __future__ import annotations

import torch

from rnnquant.kernels.fused import Int4Linear, Int8Linear, fusing, pack_int8, pack_nbits, packed_rows, unpack_int8, unpack_nbits, with_last_dim
from rnnquant.quant.primitives import fake_quant_dynamic

MS = "com.microsoft"


def _c(g, t: torch.Tensor):
    return g.op("Constant", value_t=t)


INT8_WEIGHTS = ("uint8", "int8")  # the W8 weights' storage in the graph: U8U8 (exact on every CPU) or U8S8 (VNNI / AMX)


def _int8_matmul(q: torch.Tensor, wt: torch.Tensor) -> torch.Tensor:
    """q (integer-valued float [..., K]) @ codes (wt [K, N]: uint8 code + 128, or int8 codes) in
    int32, as MatMulInteger computes it, returned as float. The trace-time forward of the W8 ops: no
    float copy of the weight (4 bytes per weight, held by the allocator through a trace: 5.5 GB at
    mamba-1.4b shape)."""
    w = wt if wt.dtype == torch.int8 else (wt ^ 0x80).to(torch.int8)  # u - 128: the XOR gives q mod 256, the cast wraps it to q
    return torch._int_mm(q.reshape(-1, q.shape[-1]).to(torch.int8), w).float().reshape(*q.shape[:-1], wt.shape[1])


def _zp128(g):
    return _c(g, torch.tensor(128, dtype=torch.uint8))


def _weight_zp(g, signed: bool):
    """The weights' zero point: 0 for int8 codes, 128 for uint8 code + 128 (the same grid)."""
    return _c(g, torch.tensor(0, dtype=torch.int8)) if signed else _zp128(g)


def _int8_blocks(q: torch.Tensor, blocks) -> torch.Tensor:
    """``_int8_matmul`` over the column blocks of one code matrix, concatenated."""
    return torch.cat([_int8_matmul(q, wt) for wt in blocks], -1)


def _matmul_integer(g, q, a_zero, blocks, signed: bool):
    """MatMulInteger of the quantized activation (zero point ``a_zero``) with each column block of
    the codes, the int32 sums concatenated: one activation quantization, one Cast and one scale
    for the whole matrix."""
    w_zero = _weight_zp(g, signed)
    acc = [g.op("MatMulInteger", q, wt, a_zero, w_zero) for wt in blocks]  # U8U8 or U8S8
    return g.op("Concat", *acc, axis_i=-1) if len(acc) > 1 else acc[0]


def dynamic_w8_reference(x, w_scale, *blocks):
    """The dynamic W8A8 product (the simulation's per-token grid, exact int32 sums, then * s * w_scale)."""
    s = (x.abs().amax(-1, keepdim=True) / 127).clamp(min=1e-12)  # fake_quant_dynamic's per-token scale
    return _int8_blocks(torch.round(x / s).clamp(-127, 127), blocks) * s * w_scale


class _DynamicW8(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w_scale, signed, *blocks):
        return dynamic_w8_reference(x, w_scale, *blocks)

    @staticmethod
    def symbolic(g, x, w_scale, signed, *blocks):
        amax = g.op("ReduceMax", g.op("Abs", x), axes_i=[-1], keepdims_i=1)
        s = g.op("Div", g.op("Max", amax, _c(g, torch.tensor(1e-12 * 127))), _c(g, torch.tensor(127.0)))
        q = g.op("Round", g.op("Div", x, s))  # |x / s| <= 127 by construction: the simulation's clamp is a no-op, not emitted
        qu = g.op("Cast", g.op("Add", q, _c(g, torch.tensor(128.0))), to_i=2)  # to 2 = UINT8: q + 128
        return g.op("Mul", g.op("Mul", g.op("Cast", _matmul_integer(g, qu, _zp128(g), blocks, signed), to_i=1), s), w_scale)


def static_w8_reference(x, w_scale, a_scale, *blocks):
    """The static W8A8 product as the graph computes it: fake_quant_static's grid, exact int32 sums, one scale."""
    return _int8_blocks(torch.round(x / a_scale).clamp(-128, 127), blocks) * (a_scale * w_scale)


class _StaticW8(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w_scale, a_scale, signed, *blocks):
        return static_w8_reference(x, w_scale, a_scale, *blocks)

    @staticmethod
    def symbolic(g, x, w_scale, a_scale, signed, *blocks):
        zp = _zp128(g)  # uint8 with zero point 128: the same grid as int8
        q = g.op("QuantizeLinear", x, a_scale, zp)
        return g.op("Mul", g.op("Cast", _matmul_integer(g, q, zp, blocks, signed), to_i=1), g.op("Mul", a_scale, w_scale))


def nbits_reference(x, b, scales, zeros, K: int, bits: int, int8_activations: bool, has_zeros: bool):
    """The group-wise product the simulation computes from MatMulNBits' inputs: per-token int8
    activations (``int8_activations``) or float ones, times the dequantized codes."""
    return (fake_quant_dynamic(x, 8) if int8_activations else x) @ nbits_weight(b, scales, zeros, K, bits, has_zeros).T


class _MatMulNBits(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, b, scales, zeros, K, N, bits, block_size, accuracy_level, has_zeros):
        return nbits_reference(x, b, scales, zeros, K, bits, accuracy_level == 4, has_zeros)

    @staticmethod
    def symbolic(g, x, b, scales, zeros, K, N, bits, block_size, accuracy_level, has_zeros):
        inputs = [x, b, scales] + ([zeros] if has_zeros else [])
        y = g.op(f"{MS}::MatMulNBits", *inputs, K_i=K, N_i=N, bits_i=bits, block_size_i=block_size, accuracy_level_i=accuracy_level)
        return with_last_dim(y, x, N)  # tell the exporter's shape inference what a custom op returns


def _unsigned(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric int8 codes -> uint8 code + 2^(bits-1), with no wider temporary (8 bits: flipping
    the sign bit adds 128 modulo 256)."""
    return q.view(torch.uint8) ^ 0x80 if bits == 8 else (q + 2 ** (bits - 1)).view(torch.uint8)


def nbits_tensors(qw, K: int, block_size: int | None = None):
    """MatMulNBits inputs from a QuantizedWeight: B uint8 [N, blocks, block*bits/8], scales [N*blocks],
    zero points packed like B (two 4-bit or one 8-bit per byte) [N * ceil(blocks*bits/8)].
    ``block_size``: the op's block when it is not the weight's group (one padded block per row)."""
    N, bs, bits = qw.q.shape[0], block_size or qw.group_size, qw.bits
    blocks = -(-K // bs)
    u = _unsigned(qw.q, bits) if qw.symmetric else qw.q  # asymmetric codes are uint8 already
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


def _unpack(packed: torch.Tensor, bits: int, width: int) -> torch.Tensor:
    """uint8 [N, bytes] holding ``bits``-bit codes low first -> codes [N, width] (float: exact)."""
    u = torch.stack([packed & 0xF, packed >> 4], -1).reshape(packed.shape[0], -1) if bits == 4 else packed
    return u[:, :width].float()


def nbits_weight(b: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, K: int, bits: int, has_zeros: bool) -> torch.Tensor:
    """The float weight [N, K] that MatMulNBits computes from its inputs, (code - zero) * scale: the
    same values as the QuantizedWeight's ``dequantize()`` (small integers are exact in float32), made
    per call while tracing instead of a float copy of every weight held through the export."""
    N, blocks, blob = b.shape
    block = blob * 8 // bits
    codes = _unpack(b.reshape(N, -1), bits, blocks * block).reshape(N, blocks, block)
    z = _unpack(zeros.reshape(N, -1), bits, blocks) if has_zeros else torch.full((N, blocks), 2.0 ** (bits - 1))
    return ((codes - z.unsqueeze(-1)) * scales.reshape(N, blocks, 1)).reshape(N, -1)[:, :K]


def prepare(qlinear, int8_weights: str = "uint8", fused: bool = False) -> None:
    """Attach the export-form buffers of a QLinear (integer codes laid out for the chosen op; a W8
    Linear's codes stored as ``int8_weights``, one of ``INT8_WEIGHTS``). ``fused`` (with int8
    weights): a W8A8 Linear's codes packed for rnnquant's ``Int8Linear`` op ("w8packed")."""
    qw = qlinear.qweight
    if qw is None or hasattr(qlinear, "_export"):
        return
    K = len(qlinear.quant_idx)
    whole_row = qw.group_size >= K and qw.bits == 8 and qlinear.a_bits is None  # W8 per channel, float activations
    if qw.group_size < K or qw.bits == 4 or whole_row:
        block = max(16, 1 << (K - 1).bit_length()) if whole_row else qw.group_size  # MatMulNBits blocks are powers of two >= 16
        b, scales, zeros = nbits_tensors(qw, K, block)
        if fused and qw.bits == 4 and qlinear.a_bits and K % block == 0:  # rnnquant's Int4Linear: the same bytes, permuted
            qlinear._export = ("nbits_packed", *pack_nbits(b, scales, zeros, block), block)
            return
        qlinear._export = ("nbits", b, scales, zeros if zeros is not None else torch.zeros(0, dtype=torch.uint8), zeros is not None, qw.bits, block)
        return
    if not qw.symmetric:  # int8 asymmetric: stored codes are 0..255 with zero points; re-center is exact only if zero == 128
        raise NotImplementedError("asymmetric 8-bit per-channel weights: use a symmetric grid or group-wise (MatMulNBits)")
    if fused and int8_weights == "int8":
        packed, colsum = pack_int8(qw.q)
        qlinear._export = ("w8packed", packed, qw.scale[:, 0].float().contiguous(), colsum)
        return
    codes = qw.q if int8_weights == "int8" else _unsigned(qw.q, 8)  # symmetric codes are stored as int8
    qlinear._export = ("w8", codes.T.contiguous(), qw.scale[:, 0].float().contiguous())


def qlinear_forward(m, x):
    """Export-mode forward of a QLinear (same math as QLinear.forward, ONNX-friendly ops)."""
    if m._rotation is not None:
        x = x @ m._rotation
    if m.qweight is None:
        y = x @ m._w_float_t
    else:
        xq = torch.index_select(x, -1, m.quant_idx) if m.mixed else x
        kind, *t = m._export
        if kind == "nbits":
            b, scales, zeros, has_zeros, bits, block = t
            acc = 4 if m.a_bits else 0
            y = _MatMulNBits.apply(xq, b, scales, zeros, len(m.quant_idx), m.out_features, bits, block, acc, has_zeros)
        elif kind == "nbits_packed":
            y = _nbits_packed_matmul(m, xq, *t)
        elif kind == "w8packed" and fusing() and not m.mixed and m.a_mode == "static":  # the op adds the bias too
            return Int8Linear.apply(xq, t[0], t[2], t[1], m.a_scale, m.bias)
        elif kind == "w8packed":
            y = _w8_packed_matmul(m, xq, *t)
        else:
            y = _w8_matmul(m, xq, *t)
        if m.mixed:
            y = y + torch.index_select(x, -1, m.float_idx) @ m._w_float_t
    return y + m.bias if m.bias is not None else y


W8_BLOCK_BYTES = 16 * 2**20  # a larger W8 code matrix is emitted as column blocks of at most this size (``w8_column_blocks``)


def w8_column_blocks(wt: torch.Tensor) -> list[torch.Tensor]:
    """Views ``codes[:, a:b]`` covering the N columns of ``wt`` [K, N] in blocks of at most
    ``W8_BLOCK_BYTES`` (multiples of 64 columns). ONNX Runtime packs each matmul weight at load and
    then releases the original, so a session's load peaks at its steady size plus the largest weight
    it is packing: one block instead of a whole vocabulary head."""
    K, N = wt.shape
    n = -(-K * N * wt.element_size() // W8_BLOCK_BYTES)
    width = -(-N // n // 64) * 64
    return [wt[:, a : a + width] for a in range(0, N, width)]


def _w8_matmul(m, xq, wt, w_scale):
    """The W8 product, over the column blocks the exporter split the codes into (``m._w8_blocks``) or the whole matrix."""
    blocks, signed = m.__dict__.get("_w8_blocks") or [wt], wt.dtype == torch.int8
    if m.a_mode == "dynamic":
        return _DynamicW8.apply(xq, w_scale, signed, *blocks)
    return _StaticW8.apply(xq, w_scale, m.a_scale, signed, *blocks)


def _w8_packed_matmul(m, xq, packed, w_scale, colsum):
    """The W8A8 product from packed codes: rnnquant's Int8Linear in a fused step graph, else (the
    prefill graph) the stock ops over the codes unpacked in the graph, stored once for both."""
    dynamic = m.a_mode == "dynamic"
    if fusing():
        return Int8Linear.apply(xq, packed, colsum, w_scale, None if dynamic else m.a_scale, None)
    codes = unpack_int8(packed, xq.shape[-1], w_scale.shape[0])
    return _DynamicW8.apply(xq, w_scale, True, codes) if dynamic else _StaticW8.apply(xq, w_scale, m.a_scale, True, codes)


def _nbits_packed_matmul(m, xq, B, S, Z, block):
    """The 4-bit A8 product from Int4Linear's inputs: the op in a fused step graph, else (the prefill
    graph) MatMulNBits over the same initializers, permuted back in the graph."""
    if fusing():
        return Int4Linear.apply(xq, B, S, Z, m.out_features, block)
    b, scales, zeros = unpack_nbits(B, S, Z, m.out_features, block)
    zeros = scales if zeros is None else zeros  # (unread without zero points: any traced tensor will do)
    return _MatMulNBits.apply(xq, b, scales, zeros, len(m.quant_idx), m.out_features, 4, block, 4, Z is not None)


def linear_forward(m, x):
    """Export-mode forward of a float nn.Linear: x @ W^T through ``m._weight_t`` (a transposed view,
    traced as a graph input), so the graph reads W^T [in, out] as the TorchScript exporter's folded
    transpose did, without the exporter holding a copy of it."""
    y = x @ m._weight_t
    return y + m.bias if m.bias is not None else y


def embedding_forward(e, ids):
    """Export-mode forward of a float nn.Embedding: rows of its table ``e._rows`` [V, D], or, tied to a
    float head, columns of the head's W^T [D, V] (``e._cols``): the graph then holds the table once."""
    if e._cols is None:
        return torch.nn.functional.embedding(ids, e._rows)
    return torch.index_select(e._cols, 1, ids.reshape(-1)).T.reshape(*ids.shape, -1)


def gathers_codes(head) -> bool:
    """Whether a tied embedding can gather rows of the (prepared) head's 8-bit codes; else the graph
    needs the dequantized float table (which the exporter then makes, and only then)."""
    kind, *t = getattr(head, "_export", (None,))
    return kind in ("w8", "w8packed") or (kind == "nbits" and t[4] == 8 and t[0].shape[1] == 1 and not t[3])  # one 8-bit block per row, symmetric


def own_code_rows(head) -> torch.Tensor:
    """The (prepared) head's 8-bit codes as the embedding's own [V, D] table, in the dtype the head
    stores them (uint8 code + 128, or int8): rows a Gather reads one page at a time, where the W8
    head's [D, V] layout scatters a row over D pages. ``gathers_codes(head)`` must hold."""
    kind, *t = head._export
    if kind == "w8":
        return t[0].T  # a view: laid out row-major only as its bytes are written
    if kind == "w8packed":
        return unpack_int8(t[0], head.in_features, head.out_features).T
    return t[0].reshape(t[0].shape[0], -1)[:, : head.in_features]  # MatMulNBits' rows: the same bytes where no block is padded


def qembedding_forward(e, ids):
    """Gather rows of 8-bit codes and scale them: the embedding's own row-major table (``e._rows``:
    an untied table's int8 codes, or a copy of the tied head's), else the tied head's own
    initializer (uint8 code + 128, or int8)."""
    m = e.table
    kind, *t = getattr(m, "_export", (None,))
    if ids.dim() > 1:  # the prefill graph's [B, T] ids (a trace-time branch on rank, not on data)
        return qembedding_forward(e, ids.reshape(-1)).reshape(*ids.shape, -1)
    if e.__dict__.get("_rows") is not None:
        rows = torch.index_select(e._rows, 0, ids)
    elif kind == "w8":
        rows = torch.index_select(t[0], 1, ids).T
    elif kind == "w8packed":
        rows = packed_rows(t[0], ids, m.in_features)
    elif gathers_codes(m):
        rows = torch.index_select(t[0], 0, ids).reshape(ids.shape[0], -1)[:, : m.in_features]  # [B, K] uint8 codes + 128 (the block may be padded)
    else:
        return torch.nn.functional.embedding(ids, e._table)  # the dequantized table, made before tracing: an initializer
    scales = e.__dict__.get("_row_scales")  # an untied table's own; a tied head's otherwise
    codes = rows.float() if rows.dtype == torch.int8 else rows.float() - 128
    return codes * torch.index_select(t[1] if scales is None else scales, 0, ids).unsqueeze(-1)
