"""The calibration directory: ``calib.safetensors`` + ``calib.json`` + ``report.md`` + plots.

Later stages read it through ``load_calibration(dir, model)``, which refuses a directory made
for another model (fingerprint mismatch) or a damaged one, with a one-line error.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import RnnquantError
from ..io import atomic_path
from .collect import CalibrationStats, find_outliers

SCHEMA_VERSION = 1
TENSORS, META = "calib.safetensors", "calib.json"


@dataclass
class Calibration:
    """What a later stage sees: per-point summary tensors and the JSON metadata."""

    meta: dict
    tensors: dict[str, torch.Tensor]

    @property
    def points(self) -> dict[str, dict]:
        return self.meta["points"]

    def stat(self, point: str, name: str) -> torch.Tensor:
        return self.tensors[f"{point}/{name}"]

    def outlier_channels(self, point: str) -> list[int]:
        return [c for c, *_ in self.points[point]["outliers"]["absmax"]]


def to_calibration(stats: CalibrationStats) -> Calibration:
    cfg = stats.config
    tensors, points = {}, {}
    for name, p in stats.points.items():
        for k, v in p.stats.summary().items():
            tensors[f"{name}/{k}"] = v.contiguous()
        points[name] = {"kind": p.kind, "role": p.role, "channels": p.stats.channels, "samples": p.stats.count,
                        "outliers": find_outliers(p.stats, cfg.outlier_k, cfg.kurtosis_k)}
    for lin, w in stats.weight_absmax.items():
        tensors[f"weight/{lin}/absmax"] = w.contiguous()
    meta = {"schema_version": SCHEMA_VERSION, "tokens": stats.tokens, "settings": cfg.to_dict(), "points": points} | stats.meta
    return Calibration(meta, tensors)


def save_calibration(calib: Calibration, out_dir, force: bool = True, report: bool = True) -> None:
    from safetensors.torch import save_file

    with atomic_path(out_dir, directory=True, force=force) as tmp:
        save_file(calib.tensors, str(tmp / TENSORS))
        (tmp / META).write_text(json.dumps(calib.meta, indent=1, sort_keys=True) + "\n")
        if report:
            from .report import write_report

            write_report(calib, tmp)


def load_calibration(path, model=None) -> Calibration:
    """Read a calibration directory; with ``model``, check it was made for that model."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    d = Path(path)
    if not d.is_dir():
        raise RnnquantError(f"{d}: no such calibration directory")
    try:
        meta = json.loads((d / META).read_text("utf-8"))
        if not isinstance(meta, dict) or "points" not in meta or "model_fingerprint" not in meta:
            raise ValueError("missing fields")
    except FileNotFoundError:
        raise RnnquantError(f"{d / META}: missing") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise RnnquantError(f"{d / META}: corrupt calibration metadata ({e})") from None
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise RnnquantError(f"{d / META}: schema_version {meta.get('schema_version')!r}, expected {SCHEMA_VERSION}")
    try:
        tensors = load_file(str(d / TENSORS))
    except FileNotFoundError:
        raise RnnquantError(f"{d / TENSORS}: missing") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise RnnquantError(f"{d / TENSORS}: corrupt safetensors file ({str(e).splitlines()[0]})") from None
    missing = [p for p in meta["points"] if f"{p}/absmax" not in tensors]
    if missing:
        raise RnnquantError(f"{d / TENSORS}: no statistics for point {missing[0]!r}")
    if model is not None and meta["model_fingerprint"] != model.provenance.fingerprint:
        raise RnnquantError(
            f"{d}: calibration was made for another model (fingerprint {meta['model_fingerprint'][:12]}, this model {(model.provenance.fingerprint or '')[:12]})"
        )
    return Calibration(meta, tensors)
