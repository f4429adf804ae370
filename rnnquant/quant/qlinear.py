"""QLinear: a quantized Linear holding the real integer form and computing its simulation.

    y = Wq[:, keep] @ fq(x' [keep]) + W_f[:, float] @ x' [float] + b,   x' = x @ Q (if rotated)

Wq is the dequantized integer weight (in the rotated space when Q is set; computed from the codes
when used, so a quantized model in memory is its codes, not a float copy), fq the activation
fake-quantizer (static per-tensor scale, dynamic per-token, or identity), W_f the float columns
of outlier channels (mixed precision). The exporter reads the same fields to build ONNX ops
(``rnnquant.exporters.qops``, swapped in for ``forward`` while it traces; this module knows nothing of it).
"""
from __future__ import annotations

import torch
from torch import nn

from .primitives import QuantizedWeight, fake_quant_dynamic, fake_quant_static, quantize_weight_rtn


CACHE_ELEMENTS = 1 << 20  # 4 MB of fp32: at mamba-130m shape x_proj and dt_proj (5 % of the weights), not in_proj/out_proj/the head


class QLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: torch.Tensor | None, qweight: QuantizedWeight | None,
                 w_float: torch.Tensor, quant_idx: torch.Tensor, float_idx: torch.Tensor, rotation: torch.Tensor | None,
                 a_bits: int | None, a_mode: str, a_scale: float | None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.qweight = qweight  # None: weight kept float (then w_float holds all columns)
        self.a_bits, self.a_mode = a_bits, a_mode
        self.register_buffer("bias", bias)
        self.register_buffer("rotation", rotation)  # [in, in] orthonormal or None
        self.register_buffer("quant_idx", quant_idx)  # input columns on the integer path
        self.register_buffer("float_idx", float_idx)  # input columns kept float
        self.register_buffer("w_float", w_float)  # [out, len(float_idx)]
        self.register_buffer("a_scale", torch.tensor(a_scale) if a_scale is not None else None)
        self.mixed = len(float_idx) > 0 and qweight is not None

    @property
    def w_deq(self) -> torch.Tensor:
        """The dequantized integer weight [out, len(quant_idx)], computed when used: a quantized model
        holds its codes (what it is), not a float copy beside them. Small weights (at most
        CACHE_ELEMENTS) keep theirs once made: an RNN's recurrent Linear runs once per time step, and
        redoing its dequantization each step made the PyTorch simulation of an LSTM 2.5x slower."""
        if self.qweight is None:
            return torch.zeros(self.out_features, 0)
        cached = self.__dict__.get("_w_deq_cache")
        if cached is not None:
            return cached
        w = self.qweight.dequantize()
        if w.numel() <= CACHE_ELEMENTS:
            self.__dict__["_w_deq_cache"] = w
        return w

    @property
    def weight(self) -> torch.Tensor:
        """The effective float weight in the original (unrotated) input space."""
        w = torch.zeros(self.out_features, self.in_features)
        w[:, self.quant_idx] = self.w_deq
        w[:, self.float_idx] = self.w_float
        return w @ self.rotation.T if self.rotation is not None else w

    def _act(self, x):
        if self.a_bits is None:
            return x
        if self.a_mode == "dynamic":
            return fake_quant_dynamic(x, self.a_bits)
        return fake_quant_static(x, self.a_scale, self.a_bits)

    def forward(self, x):
        if self._triton_gemv_ok(x):
            return self._triton_gemv(x)
        if self.rotation is not None:
            x = x @ self.rotation
        if self.qweight is None:
            y = x @ self.w_float.T
        elif self.mixed:
            y = self._act(x[..., self.quant_idx]) @ self.w_deq.T + x[..., self.float_idx] @ self.w_float.T
        else:
            y = self._act(x) @ self.w_deq.T
        return y + self.bias if self.bias is not None else y

    def _triton_gemv_ok(self, x) -> bool:
        """Decode-time (batch <= 8) float-activation matmuls go through the fused dequant-GEMV kernels."""
        from rnnquant.kernels import use_triton

        qw = self.qweight
        plain = qw is not None and self.a_bits is None and self.rotation is None and not len(self.float_idx) and x.dim() == 2 and x.shape[0] <= 8
        return plain and use_triton(x) and ((qw.bits == 8 and qw.symmetric and qw.group_size >= self.in_features) or
                                            (qw.bits == 4 and self.in_features % qw.group_size == 0 and qw.group_size & (qw.group_size - 1) == 0))

    def _triton_gemv(self, x):
        from rnnquant.kernels.gemv import w4_gemv, w8_gemv
        from rnnquant.quant.serialize import pack_codes

        qw = self.qweight
        if not hasattr(self, "_gemv_w"):  # the integer form, laid out once for the kernels
            z = qw.zero if not qw.symmetric else torch.full_like(qw.zero, 8)
            self._gemv_w = (pack_codes(qw).to(x.device), qw.scale.to(x.device), z.to(torch.uint8).to(x.device)) if qw.bits == 4 else \
                (qw.q.to(x.device), qw.scale[:, 0].to(x.device))
        y = w4_gemv(x, *self._gemv_w, qw.group_size) if qw.bits == 4 else w8_gemv(x, *self._gemv_w)
        return y + self.bias if self.bias is not None else y

    def extra_repr(self) -> str:
        w = f"w{self.qweight.bits}/{self.qweight.group_size}" if self.qweight else "wfloat"
        a = f"a{self.a_bits}-{self.a_mode}" if self.a_bits else "afloat"
        return f"{self.in_features}->{self.out_features}, {w}, {a}, float_cols={len(self.float_idx)}, rotated={self.rotation is not None}"


class QEmbedding(nn.Module):
    """A token embedding as rows of 8-bit integer codes with per-row scales, held as a QLinear
    [D -> V] (``table``; its output channels are the embedding's rows): tied, the quantized
    lm_head itself (a reference, not a submodule: stored once); untied, a table of its own
    (``QEmbedding.own``, a submodule: stored, sized and exported as any QLinear's codes, and never
    multiplied by)."""

    def __init__(self, table: QLinear, owned: bool = False):
        super().__init__()
        if owned:
            self.table = table
        else:
            object.__setattr__(self, "table", table)
        self.owned = owned

    @classmethod
    def own(cls, weight: torch.Tensor, bits: int = 8) -> "QEmbedding":
        """An embedding table [V, D] of its own, round to nearest on a symmetric per-row grid."""
        v, d = weight.shape
        qw = quantize_weight_rtn(weight.detach(), bits, "channel", d, True)
        table = QLinear(d, v, None, qw, torch.zeros(v, 0), torch.arange(d), torch.zeros(0, dtype=torch.long), None, None, "dynamic", None)
        return cls(table, owned=True)

    @staticmethod
    def can_tie(lm_head) -> bool:
        return isinstance(lm_head, QLinear) and lm_head.qweight is not None and lm_head.rotation is None and not len(lm_head.float_idx)

    def forward(self, ids):
        return self.table.qweight.dequantize_rows(ids)
