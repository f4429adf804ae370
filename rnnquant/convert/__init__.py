"""``rnnquant convert``: foreign checkpoints -> rnnquant's model directory layout.

A converter is a module with ``NAME``, ``matches(tensors) -> bool`` and
``convert(tensors, **hints) -> Converted``; ``CONVERTERS`` is the registry the CLI tries in
order. Reading the source (safetensors or ``torch.load(weights_only=True)``) and writing the
directory (atomically, through the loader's own checks) exist once, here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import RnnquantError
from ..tokenizer import find_tokenizer
from . import rwkv7_pth, torch_rnn

CONVERTERS = [torch_rnn, rwkv7_pth]
TORCH_SUFFIXES = (".pt", ".pth", ".bin")


@dataclass
class Converted:
    """What a converter returns: a config (with ``model_type``), tensors named in the adapter's
    layout, and the mapping it used (source name -> our name, one line each, for the user)."""

    config: dict
    tensors: dict[str, torch.Tensor]
    mapping: list[str] = field(default_factory=list)


def read_tensors(src) -> dict[str, torch.Tensor]:
    """A flat name -> tensor dict from a weights file or a directory holding one kind of them."""
    src = Path(src)
    if src.is_dir():
        files = sorted(src.glob("*.safetensors")) or sorted(f for s in TORCH_SUFFIXES for f in src.glob(f"*{s}"))
        if not files:
            raise RnnquantError(f"{src}: no *.safetensors, *.pt, *.pth or *.bin weights file")
        if files[0].suffix != ".safetensors" and len(files) > 1:
            raise RnnquantError(f"{src}: several weights files ({', '.join(f.name for f in files)}); name one")
        out: dict[str, torch.Tensor] = {}
        for f in files:
            out |= read_tensors(f)
        return out
    if not src.is_file():
        raise RnnquantError(f"{src}: no such file or directory")
    if src.suffix == ".safetensors":
        from ..models import read_safetensors

        return read_safetensors(src)
    if src.suffix not in TORCH_SUFFIXES:
        raise RnnquantError(f"{src}: expected a .safetensors, .pt, .pth or .bin file")
    return _tensor_dict(_torch_load(src), src)


def _torch_load(src: Path):
    import pickle

    try:
        return torch.load(src, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" not in str(e):  # not a refused object: a damaged or foreign file
            raise RnnquantError(f"{src}: not a readable torch checkpoint (damaged, or not written by torch.save)") from None
        what = str(e).split("Unsupported global: GLOBAL ")[-1].split(" ")[0]
        raise RnnquantError(f"{src}: holds {what}, which needs pickle code to load; rnnquant reads only plain tensor dicts "
                            "(save model.state_dict(), not the model)") from None
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file is bad input, whatever torch raises
        raise RnnquantError(f"{src}: cannot load with torch.load(weights_only=True) ({type(e).__name__})") from None


def _tensor_dict(obj, src: Path) -> dict[str, torch.Tensor]:
    """A plain tensor dict, or a dict holding exactly one (``{"state_dict": {...}, "epoch": 3}``)."""
    def is_tensors(d):
        return isinstance(d, dict) and d and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())

    if is_tensors(obj):
        return dict(obj)
    inner = [k for k, v in obj.items() if is_tensors(v)] if isinstance(obj, dict) else []
    if len(inner) == 1:
        return dict(obj[inner[0]])
    if len(inner) > 1:
        raise RnnquantError(f"{src}: several tensor dicts inside ({', '.join(map(repr, inner))}); save the model's state_dict alone")
    raise RnnquantError(f"{src}: expected a dict of tensors (a state_dict), found {type(obj).__name__}")


def convert(src, out, tokenizer=None, force: bool = False, **hints) -> Converted:
    """Convert ``src`` into a model directory ``out``; returns what was converted. ``hints`` are the
    converter's overrides (torch_rnn: embedding, rnn, head, rnn_type)."""
    from ..io import save_checkpoint
    from ..models import build, check_and_assign
    from ..tokenizer import load_tokenizer

    if Path(out).exists() and not force:
        raise RnnquantError(f"{out} already exists (use --force to overwrite)")
    tensors = read_tensors(src)
    conv = next((c for c in CONVERTERS if c.matches(tensors)), None)
    if conv is None:
        names = ", ".join(sorted(tensors)[:4])
        raise RnnquantError(f"{src}: no converter recognises these {len(tensors)} tensors ({names}, ...); "
                            f"supported: {', '.join(c.DESCRIPTION for c in CONVERTERS)}")
    result = conv.convert(tensors, **hints)
    tok = _tokenizer_path(src, tokenizer)
    model = build(result.config, where=f"{src} (converted config)")
    check_and_assign(model, result.tensors, Path(src))
    load_tokenizer(tok, model.vocab_size)
    save_checkpoint(model, out, tok, force=force)
    return result


def _tokenizer_path(src, tokenizer) -> Path:
    if tokenizer is not None:
        if not Path(tokenizer).is_file():
            raise RnnquantError(f"{tokenizer}: no such tokenizer file")
        return Path(tokenizer)
    beside = find_tokenizer(Path(src) if Path(src).is_dir() else Path(src).parent)
    if beside is not None:
        return beside
    raise RnnquantError(f"{src}: no tokenizer.json beside the weights; pass --tokenizer FILE (a Hugging Face tokenizer.json)")
