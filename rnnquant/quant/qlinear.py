"""QLinear: a quantized Linear holding the real integer form and computing its simulation.

    y = Wq[:, keep] @ fq(x' [keep]) + W_f[:, float] @ x' [float] + b,   x' = x @ Q (if rotated)

Wq is the dequantized integer weight (in the rotated space when Q is set), fq the activation
fake-quantizer (static per-tensor scale, dynamic per-token, or identity), W_f the float columns
of outlier channels (mixed precision). The exporter reads the same fields to build ONNX ops.
"""
from __future__ import annotations

import torch
from torch import nn

from .primitives import QuantizedWeight, fake_quant_dynamic, fake_quant_static


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
        self.register_buffer("w_deq", qweight.dequantize() if qweight is not None else torch.zeros(out_features, 0))
        self.register_buffer("a_scale", torch.tensor(a_scale) if a_scale is not None else None)
        self.mixed = len(float_idx) > 0 and qweight is not None

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
        if torch.onnx.is_in_onnx_export():
            from rnnquant.exporters.qops import qlinear_forward

            return qlinear_forward(self, x)
        if self.rotation is not None:
            x = x @ self.rotation
        if self.qweight is None:
            y = x @ self.w_float.T
        elif self.mixed:
            y = self._act(x[..., self.quant_idx]) @ self.w_deq.T + x[..., self.float_idx] @ self.w_float.T
        else:
            y = self._act(x) @ self.w_deq.T
        return y + self.bias if self.bias is not None else y

    def extra_repr(self) -> str:
        w = f"w{self.qweight.bits}/{self.qweight.group_size}" if self.qweight else "wfloat"
        a = f"a{self.a_bits}-{self.a_mode}" if self.a_bits else "afloat"
        return f"{self.in_features}->{self.out_features}, {w}, {a}, float_cols={len(self.float_idx)}, rotated={self.rotation is not None}"


class QEmbedding(nn.Module):
    """A token embedding tied to a quantized lm_head: rows of the same integer codes and scales
    (per-row scales, since the lm_head's output channels are the embedding's rows)."""

    def __init__(self, lm_head: QLinear):
        super().__init__()
        object.__setattr__(self, "lm_head", lm_head)  # a reference, not a submodule: stored once

    @staticmethod
    def can_tie(lm_head) -> bool:
        return isinstance(lm_head, QLinear) and lm_head.qweight is not None and lm_head.rotation is None and not len(lm_head.float_idx)

    def forward(self, ids):
        if torch.onnx.is_in_onnx_export():
            from rnnquant.exporters.qops import qembedding_forward

            return qembedding_forward(self, ids)
        return nn.functional.embedding(ids, self.lm_head.w_deq)
