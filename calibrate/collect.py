"""Calibration: run a model over text and record per-channel statistics at every point its
adapter declares (``ArchSpec``): the input of each quantizable Linear, each activation ``Tap``
and each recurrent state tensor. Nothing here is architecture-specific.

Points are named ``<module>.input`` (Linear inputs), ``<tap module>`` (taps) and
``state.<name>`` (states, sampled every ``state_every`` positions).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from tqdm import tqdm

from .stats import ChannelStats

FLUSH_ROWS = 8192


@dataclass
class CalibConfig:
    samples: int = 128  # sequences
    seq_len: int = 512  # tokens per sequence
    batch_size: int = 8
    state_every: int = 64  # record the state every this many positions
    outlier_k: float = 6.0  # absmax > k * median absmax of the point -> outlier
    kurtosis_k: float = 10.0  # kurtosis > k * median kurtosis of the point (and > 10) -> outlier
    bins: int = 1024

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PointStats:
    kind: str  # "linear_input" | "tap" | "state"
    role: str
    stats: ChannelStats


@dataclass
class CalibrationStats:
    points: dict[str, PointStats]
    weight_absmax: dict[str, torch.Tensor]  # Linear -> per-input-channel |W| max
    config: CalibConfig
    tokens: int = 0
    meta: dict = field(default_factory=dict)  # model/data fingerprints, model_type


def calibration_batches(ids: torch.Tensor, samples: int, seq_len: int, batch_size: int) -> list[torch.Tensor]:
    """``samples`` windows of ``seq_len`` tokens spread evenly over the stream (deterministic)."""
    if len(ids) < seq_len:
        from ..errors import RnnquantError

        raise RnnquantError(f"calibration text has {len(ids)} tokens, fewer than one sequence of --seq-len {seq_len}")
    starts = torch.linspace(0, len(ids) - seq_len, samples).long().unique()
    seqs = torch.stack([ids[s : s + seq_len] for s in starts.tolist()])
    return list(seqs.split(batch_size))


def _channel_last(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


def _state_channels(x: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """State [B, ...] -> [samples, C]: channels on axis 1 + channel_dim, every other axis is samples."""
    return x.movedim(1 + channel_dim, -1).reshape(-1, x.shape[1 + channel_dim])


@torch.no_grad()
def collect(model, batches, config: CalibConfig | None = None, progress: bool = False) -> CalibrationStats:
    config = config or CalibConfig()
    spec = model.arch_spec()
    modules = dict(model.named_modules())
    points: dict[str, PointStats] = {}

    pending: dict[str, list[torch.Tensor]] = {}

    def record(name, kind, role, x):
        """Buffer rows and update the statistics in chunks: recurrent Linears see one small
        batch per time step, and the histogram update has a fixed cost per call."""
        if name not in points:
            points[name] = PointStats(kind, role, ChannelStats(x.shape[-1], config.bins))
            pending[name] = []
        pending[name].append(x.detach().clone())
        if sum(len(t) for t in pending[name]) >= FLUSH_ROWS:
            flush(name)

    def flush(name):
        if pending[name]:
            points[name].stats.update(torch.cat(pending[name]))
            pending[name] = []

    handles = []
    for lin, role in spec.linears.items():
        handles.append(modules[lin].register_forward_pre_hook(lambda m, a, n=f"{lin}.input", r=role: record(n, "linear_input", r, _channel_last(a[0]))))
    for tap, role in spec.taps.items():
        handles.append(modules[tap].register_forward_hook(lambda m, a, out, n=tap, r=role: record(n, "tap", r, _channel_last(out))))
    tokens = 0
    try:
        for batch in tqdm(batches, desc="calibrate", unit="batch", disable=not progress):
            state = model.init_state(batch.shape[0])
            for seg in batch.split(config.state_every, dim=1):
                _, state = model.forward_with_state(seg, state)
                for s, st in zip(spec.states, state, strict=True):
                    record(f"state.{s.name}", "state", "state", _state_channels(st, s.channel_dim))
            tokens += batch.numel()
        for name in points:
            flush(name)
    finally:
        for h in handles:
            h.remove()
    weight_absmax = {lin: modules[lin].weight.detach().abs().amax(0).float() for lin in spec.linears}
    return CalibrationStats(points, weight_absmax, config, tokens)


def find_outliers(stats: ChannelStats, outlier_k: float, kurtosis_k: float) -> dict:
    """Outlier channels of one point by both criteria, ranked by severity (largest first)."""
    absmax, kurt = stats.absmax, stats.kurtosis
    med = absmax.median().clamp(min=1e-12)
    ratio = absmax / med
    by_absmax = torch.nonzero(ratio > outlier_k).flatten()
    by_absmax = by_absmax[ratio[by_absmax].argsort(descending=True)]
    kmed = kurt.median().clamp(min=1e-6)
    by_kurt = torch.nonzero((kurt > kurtosis_k * kmed) & (kurt > 10)).flatten()
    by_kurt = by_kurt[kurt[by_kurt].argsort(descending=True)]
    return {
        "max_median_ratio": float(ratio.max()),
        "median_absmax": float(med),
        "absmax": [[int(c), round(float(absmax[c]), 6), round(float(ratio[c]), 3)] for c in by_absmax],
        "kurtosis": [[int(c), round(float(kurt[c]), 3)] for c in by_kurt],
    }
