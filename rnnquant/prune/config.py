"""Pruning configs: a dataclass, its JSON/YAML form, and the ``--prune SPEC`` string form.

    magnitude:0.5   wanda:0.5   sparsegpt:0.5   wanda:2:4   sparsegpt:4:8     (unstructured / N:M, masked)
    wanda:0.5:owl   (unstructured, per-layer sparsity from each layer's outlier ratio (OWL), mean 0.5)
    channels:0.25   (structured: a quarter of Mamba's d_inner or of LSTM/GRU hidden units, removed)
    state:0.25      (structured: a quarter of Mamba's SSM state dimension d_state, removed)
    heads:0.25      (structured: a quarter of the attention heads of Mamba-2 or RWKV-7, removed; RWKV-7: the same heads in every layer)
    layers:2        (structured: the 2 blocks with the lowest block influence, removed; only blocks that keep the width)
    prune.yaml      (a file: the PruneConfig fields, e.g. layer_sparsity: {"proj": 0.3, "layers.1.*": 0.6})
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import RnnquantError
from ..io import read_mapping
from ..quant.recipe import check_keys

UNSTRUCTURED = ("magnitude", "wanda", "sparsegpt")
STRUCTURED_GROUPS = {"channels": None, "state": "d_state", "heads": "heads"}  # method -> channel group (None: the adapter's first)
METHODS = (*UNSTRUCTURED, *STRUCTURED_GROUPS, "layers")
PROFILES = ("uniform", "owl")


@dataclass(frozen=True)
class PruneConfig:
    method: str
    sparsity: float = 0.0  # unstructured / channels: fraction removed (unstructured: the mean over pruned weights)
    nm: tuple[int, int] | None = None  # N:M pattern (keep N of every M)
    layers: int = 0  # layers to remove
    include_lm_head: bool = False  # the head is usually left dense (it dominates accuracy at small sizes)
    # With calibration: a removed channel's mean moves into the biases that read it (FLAP), and for
    # unstructured pruning what a Linear loses on average, (W - W') E[x], into its bias. Free at
    # inference. None: on for channel removal, off for unstructured (measured, docs/RESULTS.md §6:
    # it helps uniform 50 % but hurts the LSTM's 2:4 and OWL rows).
    bias_correction: bool | None = None
    # Per-layer sparsity (unstructured only). "owl": Outlier-Weighted Layerwise sparsity (Yin et al.
    # 2024): a layer with more Wanda-score outliers (> owl_m x its mean) is pruned less; layer
    # sparsities spread over 2 x owl_lambda, their parameter-weighted mean staying ``sparsity``.
    profile: str = "uniform"
    owl_m: float = 5.0
    owl_lambda: float = 0.08
    # Explicit overrides after the profile: (fnmatch pattern on Linear names, sparsity); the last
    # matching pattern wins; 0 leaves a Linear dense.
    layer_sparsity: tuple[tuple[str, float], ...] = ()

    def validate(self) -> None:
        if self.method not in METHODS:
            raise RnnquantError(f"unknown pruning method {self.method!r}; expected one of {', '.join(METHODS)}")
        if self.method == "layers":
            if self.layers < 1:
                raise RnnquantError(f"layers: must remove at least 1 layer, got {self.layers}")
        elif self.nm is not None:
            n, m = self.nm
            if not (0 < n < m) or self.method not in UNSTRUCTURED:
                raise RnnquantError(f"N:M pattern {n}:{m} needs 0 < N < M and an unstructured method")
        elif not 0 < self.sparsity < 1:
            raise RnnquantError(f"sparsity must be in (0, 1), got {self.sparsity}")
        if self.profile not in PROFILES:
            raise RnnquantError(f"unknown sparsity profile {self.profile!r}; expected one of {', '.join(PROFILES)}")
        if self.profile != "uniform" or self.layer_sparsity:
            if self.method not in UNSTRUCTURED or self.nm is not None:
                raise RnnquantError(f"per-layer sparsity needs magnitude, wanda or sparsegpt with a sparsity, not {self.label}")
            if not (self.owl_m > 0 and 0 <= self.owl_lambda < 0.5):
                raise RnnquantError(f"owl needs owl_m > 0 and 0 <= owl_lambda < 0.5, got m={self.owl_m:g}, lambda={self.owl_lambda:g}")
            for pattern, s in self.layer_sparsity:
                if not 0 <= s < 1:
                    raise RnnquantError(f"layer_sparsity {pattern!r}: sparsity must be in [0, 1), got {s}")

    @property
    def label(self) -> str:
        if self.method == "layers":
            return f"layers:{self.layers}"
        base = f"{self.method}:{self.nm[0]}:{self.nm[1]}" if self.nm else f"{self.method}:{self.sparsity:g}"
        return base + (":owl" if self.profile == "owl" else "") + ("+layer_sparsity" if self.layer_sparsity else "")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layer_sparsity"] = dict(self.layer_sparsity)
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str = "prune config") -> "PruneConfig":
        if not isinstance(d, dict):
            raise RnnquantError(f"{where}: expected a mapping")
        check_keys(d, cls, where)
        if "method" not in d:
            raise RnnquantError(f"{where}: missing field 'method'")
        d = dict(d)
        for name, ok, want in _FIELD_TYPES:
            if name in d and not ok(d[name]):
                raise RnnquantError(f"{where}: field {name!r} must be {want}, got {d[name]!r}")
        d["nm"] = tuple(d["nm"]) if d.get("nm") is not None else None
        ls = d.get("layer_sparsity") or {}
        d["layer_sparsity"] = tuple((k, float(v)) for k, v in ls.items())
        cfg = cls(**d)
        cfg.validate()
        return cfg


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _integer(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_FIELD_TYPES = (
    ("method", lambda v: isinstance(v, str), "a string"),
    ("profile", lambda v: isinstance(v, str), "a string"),
    ("include_lm_head", lambda v: isinstance(v, bool), "true or false"),
    ("bias_correction", lambda v: v is None or isinstance(v, bool), "true, false or null"),
    ("sparsity", _number, "a number"),
    ("owl_m", _number, "a number"),
    ("owl_lambda", _number, "a number"),
    ("layers", _integer, "an integer"),
    ("nm", lambda v: v is None or (isinstance(v, (list, tuple)) and len(v) == 2 and all(map(_integer, v))), "null or [N, M]"),
    ("layer_sparsity", lambda v: v is None or (isinstance(v, dict) and all(isinstance(k, str) and _number(x) for k, x in v.items())),
     "a mapping of Linear patterns to sparsities"),
)


def parse_spec(spec: str) -> PruneConfig:
    """``METHOD:SPARSITY[:owl]``, ``METHOD:N:M``, ``layers:K``, or a .json / .yaml PruneConfig file
    (or the prune_report.json of an earlier run, to repeat it)."""
    if spec.endswith((".json", ".yaml", ".yml")):
        if not Path(spec).is_file():
            raise RnnquantError(f"prune config {spec} does not exist")
        d = read_mapping(Path(spec), "prune config")
        return PruneConfig.from_dict(d.get("config") if "masked_sparsity_pct" in d else d, where=spec)  # a prune_report.json: its config
    parts = spec.split(":")
    try:
        if parts[0] == "layers" and len(parts) == 2:
            cfg = PruneConfig("layers", layers=int(parts[1]))
        elif len(parts) == 3 and parts[2] == "owl":
            cfg = PruneConfig(parts[0], sparsity=float(parts[1]), profile="owl")
        elif len(parts) == 3:
            cfg = PruneConfig(parts[0], nm=(int(parts[1]), int(parts[2])))
        elif len(parts) == 2:
            cfg = PruneConfig(parts[0], sparsity=float(parts[1]))
        else:
            raise ValueError
    except ValueError:
        raise RnnquantError(f"bad --prune spec {spec!r}: expected METHOD:SPARSITY, METHOD:SPARSITY:owl, METHOD:N:M, layers:K or a .json/.yaml file (e.g. wanda:0.5, wanda:0.5:owl, sparsegpt:2:4, channels:0.25)") from None
    cfg.validate()
    return cfg
