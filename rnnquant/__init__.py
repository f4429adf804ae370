"""rnnquant: outlier-aware quantization, pruning and O(1) step-mode ONNX export for recurrent LMs.

Imports are lazy so that the ONNX runtime path (``rnnquant run``) works where torch is absent.
"""
from .errors import RnnquantError

__version__ = "0.1.0"
__all__ = ["RecurrentLM", "RnnquantError", "__version__", "load"]


def __getattr__(name):
    if name in ("load", "RecurrentLM"):
        from . import models

        return getattr(models, name)
    raise AttributeError(name)
