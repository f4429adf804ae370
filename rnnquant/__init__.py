"""rnnquant: outlier-aware quantization, pruning and O(1) step-mode ONNX export for recurrent LMs."""
from .errors import RnnquantError
from .models import RecurrentLM, load

__version__ = "0.1.0"
__all__ = ["RecurrentLM", "RnnquantError", "__version__", "load"]
