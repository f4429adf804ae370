"""Atomic artifact writing and checkpoint saving with one-line errors (text reading: rnnquant.text)."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from safetensors.torch import save_file

from .errors import RnnquantError
from .tokenizer import stored_name

WEIGHTS = "model.safetensors"
PRUNE_REPORT = "prune_report.json"  # beside a pruned checkpoint: its config, savings and origin


@contextlib.contextmanager
def atomic_path(path, *, directory: bool = False, force: bool = True):
    """Yield a temporary sibling of ``path``; rename it onto ``path`` only if the block succeeds.

    A crash, Ctrl-C or full disk leaves nothing under the final name (the temporary is removed,
    or at worst left under a dot-name that no stage reads).
    """
    path = Path(path)
    if path.exists() and not force:
        raise RnnquantError(f"{path} already exists (use --force to overwrite)")
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=parent)) if directory else None
        if tmp is None:
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
            os.close(fd)
            tmp = Path(name)
    except OSError as e:
        raise RnnquantError(f"cannot write to {parent}: {e.strerror or e}") from None
    try:
        yield tmp
        _default_permissions(tmp)
        if directory and path.is_dir():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except OSError as e:  # disk full, permissions, ...: a one-line error, nothing under the final name
        _remove(tmp)
        raise RnnquantError(f"cannot write {path}: {e.strerror or e}") from None
    except BaseException:
        _remove(tmp)
        raise


def _remove(tmp: Path) -> None:
    shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)


def _default_permissions(path: Path) -> None:
    """mkstemp/mkdtemp create private files; give artifacts the usual umask-based modes."""
    umask = os.umask(0)
    os.umask(umask)
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        p.chmod((0o777 if p.is_dir() else 0o666) & ~umask)


def write_json(path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_checkpoint(model, out_dir, tokenizer_path=None, force: bool = True) -> None:
    """Write ``config.json`` + ``model.safetensors`` (+ ``tokenizer.json``) atomically.

    Tied weights are stored once, under the embedding's name, as Hugging Face does.
    """
    state = model.state_dict()
    state.pop(model.tied_head_key(), None)
    state = _unshared(state)
    with atomic_path(out_dir, directory=True, force=force) as tmp:
        (tmp / "config.json").write_text(json.dumps({"model_type": model.model_type} | model.config, indent=2, sort_keys=True) + "\n")
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
        if tokenizer_path is not None:
            shutil.copyfile(tokenizer_path, tmp / stored_name(tokenizer_path))
        if model.provenance.prune_report:
            (tmp / PRUNE_REPORT).write_text(json.dumps(model.provenance.prune_report, indent=1, sort_keys=True) + "\n")


def _unshared(state: dict) -> dict:
    """What safetensors will write: each tensor contiguous, and a copy only where one shares its
    storage with a tensor before it (safetensors refuses shared memory). Copying every tensor, as
    this did, held the model twice while saving: 11.5 GB for `prune` at mamba-1.4b shape
    (5.5 GB of weights, docs/RESULTS.md §21); safetensors writes from the tensors' own memory."""
    out, storages = {}, set()
    for k, v in state.items():
        v = v.detach().contiguous()
        ptr = v.untyped_storage().data_ptr()
        if ptr in storages or v.numel() == 0:
            v = v.clone()
        storages.add(ptr)
        out[k] = v
    return out


def read_mapping(path: Path, what: str) -> dict:
    """A .json or .yaml file's top-level mapping; any parse failure is one ``RnnquantError`` line."""
    try:
        text = Path(path).read_text("utf-8")
        if Path(path).suffix in (".yaml", ".yml"):
            import yaml

            d = yaml.safe_load(text)
        else:
            d = json.loads(text)
    except Exception as e:  # noqa: BLE001 - any read or parse failure is a bad file
        raise RnnquantError(f"{path}: cannot parse {what} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(d, dict):
        raise RnnquantError(f"{path}: expected a mapping")
    return d
