"""Function-preserving weight transforms shared by outlier injection and SmoothQuant.

A norm followed by Linears computes  W (g * n(x) + b) ; with a per-channel scale s,
(W / s) ((g * s) * n(x) + b * s)  is the same function. Scaling g up makes channel activations
larger (outlier injection); scaling it down and W up moves the range into the weights
(SmoothQuant's migration).
"""
from __future__ import annotations

import torch


@torch.no_grad()
def scale_norm_channels(model, norm: str, linears: list[str], s: torch.Tensor) -> None:
    """In place: norm.weight (and a LayerNorm's bias) *= s and every reader Linear's input columns /= s."""
    modules = dict(model.named_modules())
    modules[norm].weight.mul_(s)
    if getattr(modules[norm], "bias", None) is not None:  # g * n(x) + b: the bias scales with the channel
        modules[norm].bias.mul_(s)
    for name in linears:
        modules[name].weight.div_(s)
    if model.provenance.fingerprint is not None:  # the weights changed: so does the fingerprint
        from . import fingerprint

        model.provenance = model.provenance.derive(fingerprint=fingerprint(model))
