"""rnnquant.quant: recipes (dataclasses + presets) and the one verb ``quantize``."""
from .apply import quantize
from .presets import DEFAULT_PRESET, PRESETS, load_recipe
from .recipe import Recipe, Rule

__all__ = ["DEFAULT_PRESET", "PRESETS", "Recipe", "Rule", "load_recipe", "quantize"]
from .serialize import save_quantized, size_bytes  # noqa: E402

__all__ += ["save_quantized", "size_bytes"]
