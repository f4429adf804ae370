"""rnnquant.kernels: Triton kernels for the PyTorch side, each beside a ``_ref`` PyTorch twin with the
same signature (parity-tested under ``TRITON_INTERPRET=1`` on CPU).

    w8_gemv / w4_gemv              fused dequantize + GEMV for batch 1-8 decode
    selective_state_update         Mamba's step: state update, C readout, D skip, SiLU(z) gate
    selective_scan                 Mamba's recurrence over a sequence (chunk of time per program)

``use_triton(t)`` decides: ``RNNQUANT_KERNELS=ref|triton`` overrides; otherwise Triton when the
tensor is on CUDA, the ref otherwise.
"""
from __future__ import annotations

import os


def use_triton(t) -> bool:
    mode = os.environ.get("RNNQUANT_KERNELS", "")
    if mode == "ref":
        return False
    if mode == "triton":
        return True
    return getattr(t, "is_cuda", False)
