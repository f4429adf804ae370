"""Calibration: run a model over text and record per-channel statistics at every point its
adapter declares (``ArchSpec``): the input of each quantizable Linear, each activation ``Tap``
and each recurrent state tensor. Nothing here is architecture-specific.

Points are named ``<module>.input`` (Linear inputs), ``<tap module>`` (taps) and
``state.<name>`` (states, sampled every ``state_every`` positions).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import partial

import torch
from .stats import ChannelStats, ChannelSummary

FLUSH_ROWS = 2048  # rows a point buffers before its statistics update: bounds the buffers (one block's points x this x channels)


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
    stats: ChannelStats | ChannelSummary


@dataclass
class CalibrationStats:
    points: dict[str, PointStats]
    weight_absmax: dict[str, torch.Tensor]  # Linear -> per-input-channel |W| max
    config: CalibConfig
    tokens: int = 0
    meta: dict = field(default_factory=dict)  # model/data fingerprints, model_type
    memory: dict = field(default_factory=dict)  # peak bytes held (rows pending + open histograms; the cached stream): not saved


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


class _Recorder:
    """Per-point statistics, fed in chunks of at least FLUSH_ROWS rows: recurrent Linears see one
    small batch per time step, and the histogram update has a fixed cost per call. Only the
    current block's points have rows pending (``flush`` at its end), so the buffered memory is
    one block's, whatever the depth."""

    def __init__(self, bins: int):
        self.bins = bins
        self.points: dict[str, PointStats] = {}
        self.pending: dict[str, list[torch.Tensor]] = {}
        self.pending_bytes = self.open_bytes = self.peak_bytes = 0  # rows buffered; histograms of unfinished points

    def record(self, name: str, kind: str, role: str, x: torch.Tensor) -> None:
        if name not in self.points:
            self.points[name] = PointStats(kind, role, ChannelStats(x.shape[-1], self.bins))
            self.pending[name] = []
            self.open_bytes += _hist_bytes(self.points[name].stats)
        self.pending[name].append(x.detach().clone())
        self.pending_bytes += x.numel() * x.element_size()
        self.peak_bytes = max(self.peak_bytes, self.pending_bytes + self.open_bytes)
        if sum(len(t) for t in self.pending[name]) >= FLUSH_ROWS:
            self.flush(name)

    def flush(self, name: str) -> None:
        rows = self.pending.get(name)
        if rows:
            self.points[name].stats.update(torch.cat(rows))
            self.pending_bytes -= sum(t.numel() * t.element_size() for t in rows)
            self.pending[name] = []

    def finish(self, name: str) -> None:
        """The point has seen all its rows: keep its summary, drop the histogram."""
        self.flush(name)
        if name in self.points:
            p = self.points[name]
            self.open_bytes -= _hist_bytes(p.stats)
            self.points[name] = PointStats(p.kind, p.role, ChannelSummary(p.stats))
            del self.pending[name]


def _hist_bytes(stats: ChannelStats) -> int:
    return stats.hist.numel() * stats.hist.element_size()


@torch.no_grad()
def collect(model, batches, config: CalibConfig | None = None, progress: bool = False) -> CalibrationStats:
    """Statistics at every declared point, one block at a time (``engine.Blockwise``): each
    block's points are complete and flushed before the next block runs."""
    from .engine import Blockwise

    config = config or CalibConfig()
    spec = model.arch_spec()
    rec = _Recorder(config.bins)
    engine = Blockwise(model, list(batches), segment=config.state_every)
    for stage in engine.stages("calibrate" if progress else None):
        hooks = {lin: partial(_linear_input, rec, f"{lin}.input", spec.linears[lin]) for lin in stage.select(spec.linears)}
        hooks |= {tap: partial(_tap, rec, tap, spec.taps[tap]) for tap in stage.select(spec.taps)}
        states = spec.states[stage.states]

        def on_state(state, states=states):
            for s, st in zip(states, state, strict=True):
                if s.dtype.is_floating_point:  # a counter (RecurrentGemma's position) is no quantization point
                    rec.record(f"state.{s.name}", "state", "state", _state_channels(st, s.channel_dim))

        engine.run(stage, hooks, on_state if states else None, advance=True)
        floats = [s for s in states if s.dtype.is_floating_point]
        for name in [*(f"{lin}.input" for lin in stage.select(spec.linears)), *stage.select(spec.taps), *(f"state.{s.name}" for s in floats)]:
            rec.finish(name)
    modules = dict(model.named_modules())
    weight_absmax = {lin: modules[lin].weight.detach().abs().amax(0).float() for lin in spec.linears}
    memory = {"peak_buffer_bytes": rec.peak_bytes, "peak_cache_bytes": engine.peak_cache_bytes}
    return CalibrationStats(rec.points, weight_absmax, config, sum(b.numel() for b in batches), memory=memory)


def _linear_input(rec: _Recorder, name: str, role: str, x: torch.Tensor) -> None:
    rec.record(name, "linear_input", role, _channel_last(x))


def _tap(rec: _Recorder, name: str, role: str, x: torch.Tensor) -> None:
    rec.record(name, "tap", role, _channel_last(x))


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
