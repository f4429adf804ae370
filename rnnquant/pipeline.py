"""The float model -> (prune) -> (recalibrate) -> quantize pipeline, as one library function.

``prepare(model, recipe=..., prune=..., calib=..., text=...)`` is what ``rnnquant quantize`` and
``rnnquant export --recipe/--prune`` run. After pruning the model has changed, so a calibration
it was given is redone on the pruned model with every setting of the original (``samples``,
``seq_len``, ``outlier_k``, ``state_every``, ``bins``, ...), on the same text.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable

import torch

from .calibrate import CalibConfig, calibrate, calibration_batches


@dataclass(frozen=True)
class TextSource:
    """Where the pipeline's activations come from: ``ids()`` reads the text (only when a stage needs
    it), cut into ``samples`` windows of ``seq_len`` tokens for static scales, GPTQ and SparseGPT."""

    ids: Callable[[], torch.Tensor]
    samples: int = 32
    seq_len: int = 256

    def batches(self) -> list[torch.Tensor]:
        return calibration_batches(self.ids(), self.samples, self.seq_len, 8)


def pruned(model, cfg, calib, text: TextSource, *, inplace: bool = False, progress: bool = False):
    from .prune import prune

    return prune(model, cfg, calib, text.batches() if cfg.method in ("sparsegpt", "layers") else None, inplace=inplace, progress=progress)


def recalibrated(model, calib, text: TextSource):
    """The same calibration, redone on ``model`` (a pruned copy of the one ``calib`` was made for)."""
    s = calib.meta["settings"]
    return calibrate(model, text.ids(), CalibConfig(**{f.name: s[f.name] for f in fields(CalibConfig) if f.name in s}))


def prepare(model, *, recipe=None, prune=None, calib=None, text: TextSource, on_pruned=None, inplace: bool = False, progress: bool = False):
    """Optionally prune (``prune``: a PruneConfig), then quantize with ``recipe`` (a Recipe, or None
    to stop after pruning). ``on_pruned(model)`` sees the pruned model (the CLI prints its report).
    ``inplace``: ``model`` is consumed (no second copy of the weights; what a real-size model needs)."""
    from .quant import quantize
    from .quant.apply import require_calibration

    if recipe is not None:
        require_calibration(recipe, calib)
    if prune is not None:
        model = pruned(model, prune, calib, text, inplace=inplace, progress=progress)
        if on_pruned is not None:
            on_pruned(model)
        if calib is not None and recipe is not None:
            calib = recalibrated(model, calib, text)
    if recipe is None:
        return model
    return quantize(model, recipe, calib, text.batches() if recipe.needs_data() else None, inplace=inplace or prune is not None, progress=progress)
