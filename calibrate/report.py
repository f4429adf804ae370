"""report.md and PNG plots a person can read: where the outlier channels are and how bad they are."""
from __future__ import annotations

import math
import re
from collections import defaultdict
from pathlib import Path

import torch

_LAYER = re.compile(r"\.(\d+)\.")


def _layer(point: str) -> int | None:
    m = _LAYER.search(point)
    return int(m.group(1)) if m else None


def _by_role(calib) -> dict[tuple[str, str], list[str]]:
    groups = defaultdict(list)
    for name, p in calib.points.items():
        groups[(p["kind"], p["role"])].append(name)
    return groups


def write_report(calib, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _by_role(calib)
    lines = [
        "# Calibration report",
        "",
        f"Model fingerprint `{calib.meta['model_fingerprint'][:16]}` ({calib.meta.get('model_type', '?')}), "
        f"{calib.meta['tokens']} tokens, data fingerprint `{calib.meta.get('data_fingerprint', '?')[:16]}`.",
        f"Outlier rule: absmax > {calib.meta['settings']['outlier_k']} x the point's median channel absmax; "
        f"kurtosis > {calib.meta['settings']['kurtosis_k']} x the median kurtosis (and > 10).",
        "",
        "## Worst quantization points (by max / median channel absmax)",
        "",
        "| point | kind | channels | median absmax | max/median | outliers (absmax) | outliers (kurtosis) | top channels |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    ranked = sorted(calib.points.items(), key=lambda kv: -kv[1]["outliers"]["max_median_ratio"])
    for name, p in ranked:
        o = p["outliers"]
        top = ", ".join(f"{c} ({r:.0f}x)" for c, _, r in o["absmax"][:5]) or "-"
        lines.append(f"| `{name}` | {p['kind']} | {p['channels']} | {o['median_absmax']:.3g} | {o['max_median_ratio']:.1f} | "
                     f"{len(o['absmax'])} | {len(o['kurtosis'])} | {top} |")
    lines += ["", "## By role (worst layer)", "", "| kind | role | points | worst max/median | total outlier channels |", "|---|---|---:|---:|---:|"]
    for (kind, role), names in sorted(groups.items()):
        worst = max(calib.points[n]["outliers"]["max_median_ratio"] for n in names)
        total = sum(len(calib.points[n]["outliers"]["absmax"]) for n in names)
        lines.append(f"| {kind} | {role} | {len(names)} | {worst:.1f} | {total} |")
    lines += ["", "## Plots", ""]
    for (kind, role), names in sorted(groups.items()):
        if kind == "state" and len(names) > 1:
            names = sorted(names)
        fname = f"absmax_{kind}_{role}.png"
        _plot_absmax(plt, calib, names, out / fname, f"{kind} {role}")
        lines.append(f"![{kind} {role}]({fname})")
    _plot_heatmap(plt, calib, out / "heatmap.png")
    lines.append("![heatmap](heatmap.png)")
    (out / "report.md").write_text("\n".join(lines) + "\n")


MAX_LINE_PLOTS = 6  # more points (a deep model's layers) than this: one image of points x channels


def _plot_absmax(plt, calib, names, path, title):
    n = len(names)
    if n > MAX_LINE_PLOTS:
        return _plot_absmax_image(plt, calib, names, path, title)
    fig, axes = plt.subplots(n, 1, figsize=(9, 1.6 * n + 0.6), squeeze=False)
    for ax, name in zip(axes[:, 0], sorted(names, key=lambda s: (_layer(s) or 0, s))):
        a = calib.stat(name, "absmax")
        med = calib.points[name]["outliers"]["median_absmax"]
        ax.plot(a.numpy(), lw=0.7)
        out = calib.outlier_channels(name)
        if out:
            ax.scatter(out, a[out].numpy(), color="red", s=12, zorder=3, label="outlier")
        ax.axhline(med * calib.meta["settings"]["outlier_k"], color="gray", ls="--", lw=0.6)
        ax.set_ylabel("absmax", fontsize=7)
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=6)
    axes[-1, 0].set_xlabel("channel")
    fig.suptitle(f"per-channel absmax: {title} (red: outliers; dashed: threshold)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _plot_absmax_image(plt, calib, names, path, title):
    """Per-channel absmax / the point's median, one row per point: outlier channels are bright
    columns; the cost is one image whatever the depth (subplots per layer took minutes at 24)."""
    names = sorted(names, key=lambda s: (_layer(s) or 0, s))
    width = max(calib.points[n]["channels"] for n in names)
    rows = []
    for name in names:
        a = calib.stat(name, "absmax")
        r = a / a.median().clamp(min=1e-12)
        rows.append(torch.nn.functional.pad(r, (0, width - len(r)), value=float("nan")))
    data = torch.stack(rows).clamp(min=1e-3).log10().numpy()
    fig, ax = plt.subplots(figsize=(9, 0.12 * len(names) + 1.6))
    im = ax.imshow(data, aspect="auto", cmap="magma", interpolation="nearest")
    ax.set_yticks(range(len(names)), names, fontsize=4)
    ax.set_xlabel("channel")
    fig.colorbar(im, label="log10(absmax / median absmax)")
    ax.set_title(f"per-channel absmax: {title}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _plot_heatmap(plt, calib, path, top: int = 32):
    names = sorted(calib.points, key=lambda s: (_layer(s) if _layer(s) is not None else math.inf, s))
    rows = []
    for name in names:
        a = calib.stat(name, "absmax")
        r = torch.sort(a / a.median().clamp(min=1e-12), descending=True).values[:top]
        rows.append(torch.nn.functional.pad(r, (0, top - len(r)), value=float("nan")))
    data = torch.stack(rows).clamp(min=1e-3).log10().numpy()
    fig, ax = plt.subplots(figsize=(8, 0.2 * len(names) + 1.5))
    im = ax.imshow(data, aspect="auto", cmap="magma")
    ax.set_yticks(range(len(names)), names, fontsize=5)
    ax.set_xlabel(f"top-{top} channels of each point, sorted")
    fig.colorbar(im, label="log10(absmax / median absmax)")
    ax.set_title("outlier severity: points x top channels", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
