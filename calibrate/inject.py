"""Function-preserving outlier injection: a test fixture for calibration and quantization.

Multiplies channels of a smoothing pair's norm weight by ``scale`` and divides the matching
input columns of the Linears reading it, so the float model computes the same function but
those activation channels become ``scale`` times larger, like the outliers of real Mamba models.
"""
from __future__ import annotations

import torch

from ..errors import RnnquantError
from ..models.transforms import scale_norm_channels


def inject_outliers(model, channels: dict[str, list[int]], scale: float = 50.0):
    """``channels``: norm module name (from the adapter's smoothing pairs) -> channel indices.
    Returns the model (modified in place) and the injected points {"<linear>.input": channels}."""
    pairs = dict(model.arch_spec().smoothing_pairs)
    injected = {}
    for norm, chans in channels.items():
        if norm not in pairs:
            raise RnnquantError(f"{norm!r} is not a smoothing-pair norm of this {model.model_type} model")
        w = dict(model.named_modules())[norm].weight
        s = torch.ones_like(w)
        s[list(chans)] = scale
        scale_norm_channels(model, norm, pairs[norm], s)
        injected |= {f"{lin}.input": sorted(chans) for lin in pairs[norm]}
    return model, injected
