"""Perplexity: one evaluator for float, simulated-quantized and (through the same windows) ONNX models."""
from .perplexity import PerplexityResult, perplexity, perplexity_ids, tokenize, windows

__all__ = ["PerplexityResult", "perplexity", "perplexity_ids", "tokenize", "windows"]
