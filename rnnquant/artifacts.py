"""``load(path_or_name)``: every model directory rnnquant reads, whichever stage wrote it.

A float checkpoint (Hugging Face layout, from a hub download, ``rnnquant convert`` or
``rnnquant prune``) goes to ``rnnquant.models``; a directory written by ``rnnquant quantize``
(``quant.json`` beside the weights) to ``rnnquant.quant.serialize``. The models package knows
nothing of quantized formats; this module is the one place that knows both.
"""
from __future__ import annotations

from .models import load_checkpoint, resolve
from .quant.serialize import QUANT_META, load_quantized


def load(path_or_name, *, allow_pickle: bool = False):
    """Load a model directory or zoo entry; every failure is an ``RnnquantError`` naming the file."""
    d = resolve(path_or_name)
    return load_quantized(d, allow_pickle) if (d / QUANT_META).is_file() else load_checkpoint(d, allow_pickle)
