"""Named recipes. ``w8a8-outlier`` is the recommended default (see README and docs/RESULTS.md)."""
from __future__ import annotations

from pathlib import Path

from ..errors import RnnquantError
from ..io import read_mapping
from .recipe import Recipe, Rule

# The head stays at 8 bits in the 4-bit presets, with dynamic int8 activations: ONNX Runtime's CPU EP
# has no fast kernel for int8 weights with float activations (docs/RESULTS.md), and per-token A8
# costs the head almost nothing.
_LM_HEAD_W8 = Rule(match="lm_head", w_bits=8, w_granularity="channel", a_bits=8, a_mode="dynamic")


def _w4(method: str, a_bits=None, a_mode="dynamic") -> list[Rule]:
    """4-bit group-32 rules; Mamba's dt_proj (input = dt_rank, e.g. 48 in mamba-130m) gets groups
    of 16, the smallest block ONNX Runtime's MatMulNBits takes, so that every width divides."""
    kw = dict(w_bits=4, w_granularity="group", w_symmetric=False, w_method=method, a_bits=a_bits, a_mode=a_mode)
    return [_LM_HEAD_W8, Rule(match="dt_proj", group_size=16, **kw), Rule(group_size=32, **kw)]


def _presets() -> dict[str, Recipe]:
    p = [
        Recipe("w8a8-naive", [Rule(w_bits=8, w_granularity="tensor", a_bits=8, a_mode="static", a_clip="absmax")],
               description="W8 per-tensor + A8 static per-tensor min-max everywhere (the Mamba-PTQ baseline)"),
        Recipe("w8a8-dynamic", [Rule(w_bits=8, w_granularity="channel", a_bits=8, a_mode="dynamic")],
               description="W8 per-channel + A8 dynamic per-token"),
        Recipe("w8a8-smooth", [Rule(w_bits=8, w_granularity="channel", a_bits=8, a_mode="static")], smooth_alpha=0.5,
               description="SmoothQuant (alpha 0.5) into the norms, W8 per-channel, A8 static per-tensor"),
        Recipe("w8a8-hadamard", [Rule(w_bits=8, w_granularity="channel", a_bits=8, a_mode="static")], hadamard=True,
               description="online Hadamard rotation at the rotation points, W8 per-channel, A8 static per-tensor"),
        Recipe("w8a8-outlier", [Rule(w_bits=8, w_granularity="channel", a_bits=8, a_mode="static", a_clip="auto", outliers="float")],
               smooth_alpha=0.5, hadamard=True,
               description="SmoothQuant + Hadamard + per-layer percentile clipping + float outlier channels; W8 per-channel, A8 static"),
        Recipe("w4a16-rtn", _w4("rtn"),
               description="W4 group-32 asymmetric round-to-nearest, float activations (lm_head W8A8 dynamic)"),
        Recipe("w4a16-gptq", _w4("gptq"),
               description="W4 group-32 asymmetric GPTQ, float activations (lm_head W8A8 dynamic)"),
        Recipe("w4a8", _w4("gptq", a_bits=8),
               hadamard=True, description="W4 group-32 GPTQ + A8 dynamic per-token, Hadamard at rotation points (lm_head W8A8 dynamic)"),
    ]
    return {r.name: r for r in p}


PRESETS = _presets()
DEFAULT_PRESET = "w8a8-outlier"


def load_recipe(name_or_path: str) -> Recipe:
    """A preset name or a .json / .yaml file."""
    if name_or_path in PRESETS:
        return PRESETS[name_or_path]
    p = Path(name_or_path)
    if not p.is_file():
        raise RnnquantError(f"unknown recipe {name_or_path!r}: not a preset ({', '.join(PRESETS)}) nor a file")
    return Recipe.from_dict(read_mapping(p, "recipe"), where=str(p))
