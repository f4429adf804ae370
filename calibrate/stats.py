"""Streaming per-channel statistics with bounded memory.

For a stream of samples x[m, c] (m: samples, c: channels) it keeps, per channel, the count,
min, max, absmax, the first four raw moments (float64) and a histogram of |x| whose range
follows the running absmax (doubling, merging bin pairs, when a larger value arrives). No
activation is ever stored; memory is O(channels * bins).

Derived: mean, std, excess kurtosis (m4 / var^2 - 3), and |x| percentiles read from the
histogram (accurate to one bin width: range / bins).
"""
from __future__ import annotations

import torch


class ChannelStats:
    def __init__(self, channels: int, bins: int = 1024):
        if bins % 2:
            raise ValueError("bins must be even")
        self.bins = bins
        self.count = 0
        f64 = dict(dtype=torch.float64)
        self.min = torch.full((channels,), float("inf"), **f64)
        self.max = torch.full((channels,), float("-inf"), **f64)
        self.moments = torch.zeros(4, channels, **f64)  # sum x, x^2, x^3, x^4
        self.hist = torch.zeros(channels, bins, dtype=torch.int64)
        self.range = torch.zeros(channels, **f64)  # histogram covers |x| in [0, range)

    @property
    def channels(self) -> int:
        return self.hist.shape[0]

    def update(self, x: torch.Tensor) -> None:
        """x [M, C]: M samples of C channels.

        Written for speed without changing a bit of the result: min / max / absmax reduce the
        input's own dtype (exact; ``amin``/``amax`` carry no indices, ~8x faster than ``max(0)``),
        and the float64 passes run in place (each new [M, C] float64 tensor is a fresh mapping
        of pages to fault in)."""
        x = x.detach().reshape(-1, self.channels)
        self.count += x.shape[0]
        lo, hi = x.amin(0).double(), x.amax(0).double()
        self.min = torch.minimum(self.min, lo)
        self.max = torch.maximum(self.max, hi)
        xd = x.to(torch.float64, copy=True)  # [M,C]; a copy even of float64 input: the histogram overwrites it
        self.moments[0] += xd.sum(0)
        p = xd * xd  # x^2, then x^3, x^4 in place
        for k in range(1, 4):
            self.moments[k] += p.sum(0)
            if k < 3:
                p.mul_(xd)
        self._grow(torch.maximum(lo.abs(), hi.abs()))
        # Bin ids channel-major ([C,M]: one channel's counts stay in cache while bincount adds
        # them, ~2x faster than row-major) and int32 (channels x bins is far below 2^31).
        ax = xd.t().abs_().div_(self.range[:, None]).mul_(self.bins)  # [C,M] |x| / range * bins, in xd's storage
        offsets = torch.arange(self.channels, dtype=torch.int32)[:, None] * self.bins
        idx = ax.to(torch.int32).clamp_(0, self.bins - 1).add_(offsets)  # [C,M] flat bin ids
        self.hist += torch.bincount(idx.reshape(-1), minlength=self.channels * self.bins).view(self.channels, self.bins)

    def _grow(self, amax: torch.Tensor) -> None:
        """Double the range of channels whose new absmax falls outside it (merging bin pairs)."""
        fresh = self.range == 0
        self.range[fresh] = torch.where(amax[fresh] > 0, amax[fresh] * (1 + 1e-6), 1e-30)
        while (need := amax >= self.range).any():
            merged = self.hist[need].view(-1, self.bins // 2, 2).sum(-1)
            self.hist[need] = torch.cat([merged, torch.zeros_like(merged)], -1)
            self.range[need] *= 2

    # --- derived statistics -------------------------------------------------
    @property
    def absmax(self) -> torch.Tensor:
        return torch.maximum(self.max.abs(), self.min.abs())

    @property
    def mean(self) -> torch.Tensor:
        return self.moments[0] / self.count

    @property
    def std(self) -> torch.Tensor:
        return (self.moments[1] / self.count - self.mean**2).clamp(min=0).sqrt()

    @property
    def kurtosis(self) -> torch.Tensor:
        """Excess kurtosis: 0 for a Gaussian, large for a channel with rare huge values."""
        n, mu = self.count, self.mean
        m2 = self.moments[1] / n - mu**2
        m4 = self.moments[3] / n - 4 * mu * self.moments[2] / n + 6 * mu**2 * self.moments[1] / n - 3 * mu**4
        return torch.where(m2 > 0, m4 / m2.clamp(min=1e-300) ** 2 - 3, torch.zeros_like(m2))

    def abs_percentile(self, q: float) -> torch.Tensor:
        """Per-channel q-th percentile (0..100) of |x|, as numpy's ``method="lower"`` order statistic
        x_(k), k = floor(q/100 * (n-1)); returned as the upper edge of the bin that holds it."""
        cdf = self.hist.cumsum(-1)
        k = int(q / 100 * (self.count - 1) + 1e-9) + 1  # samples that must lie at or below
        idx = (cdf < k).sum(-1).clamp(max=self.bins - 1)
        return torch.minimum((idx + 1).double() / self.bins * self.range, self.absmax)

    def summary(self) -> dict[str, torch.Tensor]:
        """The tensors saved to calib.safetensors (float32)."""
        out = {"absmax": self.absmax, "min": self.min, "max": self.max, "mean": self.mean, "std": self.std, "kurtosis": self.kurtosis}
        out |= {f"p{q}".replace(".", "_"): self.abs_percentile(q) for q in (99, 99.9, 99.99)}
        return {k: v.float() for k, v in out.items()}


class ChannelSummary:
    """A finished ``ChannelStats`` without its histogram (channels x bins counts, the bulk of its
    memory): what the calibration artifact and outlier search read. Calibration keeps one block's
    histograms at a time and these for the rest."""

    def __init__(self, stats: ChannelStats):
        self.channels, self.count = stats.channels, stats.count
        self.absmax, self.kurtosis = stats.absmax, stats.kurtosis
        self._summary = stats.summary()

    def summary(self) -> dict[str, torch.Tensor]:
        return self._summary
