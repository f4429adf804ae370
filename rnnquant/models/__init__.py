"""Adapters and the loader: ``load(path_or_zoo_name)`` dispatches on ``config.json``'s ``model_type``."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from ..errors import RnnquantError
from ..io import PRUNE_REPORT, read_mapping
from ..tokenizer import load_tokenizer, tokenizer_file
from .base import ArchSpec, RecurrentLM, State, StateSpec, Tap
from .provenance import Provenance
from .mamba import FalconMambaLM, MambaLM
from .mamba2 import Mamba2LM
from .minrnn import MinGRULM, MinLSTMLM
from .recurrent_gemma import RecurrentGemmaLM
from .rnn import GRULM, LSTMLM
from .rwkv import RwkvLM
from .rwkv7 import Rwkv7LM
from .xlstm import XLSTMLM

ADAPTERS: dict[str, type[RecurrentLM]] = {cls.model_type: cls for cls in (MambaLM, FalconMambaLM, Mamba2LM, LSTMLM, GRULM, RwkvLM, Rwkv7LM, MinGRULM, MinLSTMLM, XLSTMLM, RecurrentGemmaLM)}

__all__ = ["Provenance", "ADAPTERS", "ArchSpec", "RecurrentLM", "State", "StateSpec", "Tap", "build", "check_and_assign", "retie", "read_safetensors", "check_finite", "finish_load", "load_checkpoint", "load_tokenizer", "open_model_dir", "resolve"]


def known_roles() -> frozenset[str]:
    """Every role a registered adapter gives a Linear: what a recipe rule may name besides module patterns."""
    return frozenset().union(*(cls.roles for cls in ADAPTERS.values()))


def build(config: dict, where: str = "config", meta: bool = False) -> RecurrentLM:
    """A randomly initialised model for ``config`` (validated); ``meta``: parameters without storage,
    to be assigned from a checkpoint (no random init, no second copy of the weights in memory)."""
    mt = config.get("model_type")
    if mt is None:
        hint = next((why for keys, why in (cls.foreign_layout for cls in ADAPTERS.values()) if keys and all(k in config for k in keys)), "")
        raise RnnquantError(f"{where}: missing field 'model_type'" + (f": this is {hint}" if hint else f" (one of {', '.join(sorted(ADAPTERS))})"))
    if mt not in ADAPTERS:
        raise RnnquantError(f"{where}: unknown model_type {mt!r}; supported: {', '.join(sorted(ADAPTERS))}")
    cls = ADAPTERS[mt]
    for key in cls.required_config:
        v = config.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise RnnquantError(f"{where}: field {key!r} must be a positive integer, got {v!r}")
    cfg = {k: v for k, v in config.items() if k != "model_type"}
    try:
        if meta:
            with torch.device("meta"):
                return cls(cfg)
        return cls(cfg)
    except (ValueError, TypeError, KeyError, RuntimeError) as e:
        raise RnnquantError(f"{where}: invalid {mt} config: {e}") from None


def resolve(path_or_name) -> Path:
    """A model directory, or the directory of a built-in zoo entry."""
    from ..zoo import zoo_path

    p = Path(path_or_name)
    if p.is_dir():
        return p
    z = zoo_path(str(path_or_name))
    if z is not None:
        return z
    if p.exists():
        raise RnnquantError(f"{p}: expected a model directory (config.json + *.safetensors + tokenizer.json or an RWKV World vocabulary)")
    raise RnnquantError(f"{p}: no such model directory or zoo name (see `rnnquant zoo`)")


def _read_config(d: Path) -> dict:
    f = d / "config.json"
    if not f.is_file():
        raise RnnquantError(f"{f}: missing config.json")
    try:
        cfg = json.loads(f.read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RnnquantError(f"{f}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise RnnquantError(f"{f}: expected a JSON object")
    return cfg


def read_safetensors(f: Path) -> dict[str, torch.Tensor]:
    """One .safetensors file; a damaged one is a one-line error naming it.

    Read with ``pread``, each tensor its own allocation, not served from one mmap of the file: a
    mapping lives while any of its tensors does, so every float weight a stage replaces (quantize
    turns each Linear into one-byte codes) would stay resident to the end: 5.5 GB at mamba-1.4b shape."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(f), backend="pread")
    except (SafetensorError, OSError, ValueError) as e:
        raise RnnquantError(f"{f}: corrupt safetensors file ({str(e).splitlines()[0]})") from None


def _read_weights(d: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    files = sorted(d.glob("*.safetensors"))
    if not files:
        pkl = d / "pytorch_model.bin"
        if pkl.is_file() and allow_pickle:
            try:
                return torch.load(pkl, map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001 - any unpickling failure is bad input
                raise RnnquantError(f"{pkl}: cannot load with weights_only=True ({type(e).__name__})") from None
        if pkl.is_file():
            raise RnnquantError(f"{pkl}: pickle checkpoints are refused by default (convert to safetensors, or pass --allow-pickle)")
        raise RnnquantError(f"{d}: missing weights (no *.safetensors file)")
    state = {}
    for f in files:
        state |= read_safetensors(f)
    return state


def check_and_assign(model: RecurrentLM, state: dict, d: Path) -> None:
    """Load ``state`` into ``model``: every tensor expected, none extra, shapes and values checked."""
    expected = model.state_dict()
    tied = model.tied_head_key()
    if tied:
        expected.pop(tied, None)
        state = {k: v for k, v in state.items() if k != tied}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        raise RnnquantError(f"{d}: weights missing tensor {missing[0]!r}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    if unexpected:
        raise RnnquantError(f"{d}: unexpected tensor {unexpected[0]!r} for model_type {model.model_type!r}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise RnnquantError(f"{d}: tensor {k!r} has shape {list(v.shape)}, config implies {list(expected[k].shape)}")
        if not v.is_floating_point():
            raise RnnquantError(f"{d}: tensor {k!r} has dtype {v.dtype}, expected a float type")
    check_finite(state, d)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False, assign=True)
    retie(model)


def retie(model: RecurrentLM) -> None:
    """After ``load_state_dict(assign=True)``: a tied float head reads the embedding's new table."""
    spec = model.arch_spec()
    head = model.get_submodule(spec.head)
    if model.tied_head_key() and isinstance(head, torch.nn.Linear):
        head.weight = model.get_submodule(spec.embedding).weight


def check_finite(state: dict[str, torch.Tensor], d: Path) -> None:
    for k, v in state.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise RnnquantError(f"{d}: tensor {k!r} contains NaN or Inf")


def fingerprint(model: RecurrentLM) -> str:
    """sha256 of the config and every weight: identifies a model across stages."""
    h = hashlib.sha256(json.dumps({"model_type": model.model_type} | model.config, sort_keys=True).encode())
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().contiguous().numpy())  # the buffer itself: .tobytes() copied each tensor (412 MB for a 1.4b-shape embedding)
    return h.hexdigest()


def open_model_dir(d: Path, allow_pickle: bool = False) -> tuple[RecurrentLM, dict[str, torch.Tensor]]:
    """A model for ``d``'s config.json, its parameters on the meta device (no storage), and ``d``'s
    tensors, not yet checked or assigned (``check_and_assign`` or ``load_state_dict(assign=True)``)."""
    model = build(_read_config(d), where=str(d / "config.json"), meta=True)
    return model, _read_weights(d, allow_pickle)


def finish_load(model: RecurrentLM, d: Path) -> RecurrentLM:
    """The tokenizer beside the weights and the record of where the model came from."""
    model.tokenizer = load_tokenizer(tokenizer_file(d), model.vocab_size)
    model.provenance = model.provenance.derive(source=str(d), fingerprint=fingerprint(model))
    return model.eval()


def load_checkpoint(d: Path, allow_pickle: bool = False) -> RecurrentLM:
    """A float checkpoint directory (possibly written by `rnnquant prune`); ``rnnquant.artifacts.load``
    reads every kind of model directory."""
    model, state = open_model_dir(d, allow_pickle)
    check_and_assign(model, state, d)
    if (d / PRUNE_REPORT).is_file():  # written by `rnnquant prune`: where the model came from
        report = read_mapping(d / PRUNE_REPORT, "prune report")
        origin, origin_fp = (v if isinstance(v, str) else None for v in map(report.get, ("origin", "origin_fingerprint")))
        model.provenance = model.provenance.derive(prune_report=report, origin=origin, origin_fingerprint=origin_fp)
    return finish_load(model, d)
