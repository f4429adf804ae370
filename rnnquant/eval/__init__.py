"""Perplexity: one evaluator for float and simulated-quantized models (``windows`` is shared
with the torch-free ONNX runner). Imports are lazy so ``rnnquant.eval.windows`` needs no torch."""
from .windows import windows

__all__ = ["PerplexityResult", "perplexity", "perplexity_by_position", "perplexity_ids", "tokenize", "windows"]


def __getattr__(name):
    if name in ("PerplexityResult", "perplexity", "perplexity_by_position", "perplexity_ids", "tokenize"):
        from . import ppl as _p

        return getattr(_p, name)
    raise AttributeError(name)
