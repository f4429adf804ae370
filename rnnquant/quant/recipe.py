"""Quantization recipes: small dataclasses, JSON/YAML round-trippable, validated with one-line errors.

A recipe is a list of rules (first match wins) plus the model-level outlier treatments:

    Recipe(name="w8a8-outlier", smooth_alpha=0.5, hadamard=True, rules=[
        Rule(match="*", w_bits=8, w_granularity="channel", a_bits=8, a_mode="static", a_clip="auto",
             outliers="float")])

``match`` is an adapter role ("in_proj", "out_proj", "lm_head", "rnn_hh", ...) or an fnmatch
pattern on the module name. Parameters the adapter declares float (A_log, D, dt bias, conv,
norms) are never touched. The token embedding follows the head: tied to a quantized head it
gathers the head's codes; a table of its own is stored as per-row int8 codes (``embedding_bits``,
the layout a tied head's table has) unless the recipe says null.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

from ..errors import RnnquantError

GRANULARITIES = ("tensor", "channel", "group")
CLIPS = ("absmax", "p99", "p99.9", "p99.99", "auto")


@dataclass
class Rule:
    match: str = "*"
    w_bits: int | None = 8  # None: keep float
    w_granularity: str = "channel"
    group_size: int = 128
    w_symmetric: bool = True
    w_method: str = "rtn"  # "rtn" | "gptq"
    a_bits: int | None = None  # None: float activations
    a_mode: str = "dynamic"  # "dynamic" (per token) | "static" (per tensor, from calibration)
    a_clip: str = "absmax"  # static clip: absmax, a percentile, or "auto" (min layer output error)
    outliers: str = "none"  # "none" | "float": keep detected outlier input channels in float


@dataclass
class Recipe:
    name: str = "custom"
    rules: list[Rule] = field(default_factory=lambda: [Rule()])
    smooth_alpha: float | None = None  # SmoothQuant migration strength (None: off)
    hadamard: bool = False  # online Hadamard rotation at the adapter's rotation points
    embedding_bits: int | None = 8  # an embedding table of its own (untied): per-row symmetric codes; None keeps it float
    description: str = ""

    def rule_for(self, name: str, role: str) -> Rule | None:
        from fnmatch import fnmatchcase

        for r in self.rules:
            if r.match == role or fnmatchcase(name, r.match):
                return r
        return None

    def needs_static_calibration(self) -> bool:
        return any(r.a_bits is not None and r.a_mode == "static" for r in self.rules)

    def needs_calibration(self) -> bool:
        """Static scales, SmoothQuant and float outlier channels read calibration statistics."""
        return self.needs_static_calibration() or self.smooth_alpha is not None or any(r.outliers == "float" for r in self.rules)

    def needs_data(self) -> bool:
        """Static scales and GPTQ need calibration text at quantization time."""
        return self.needs_static_calibration() or any(r.w_method == "gptq" and r.w_bits for r in self.rules)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict, where: str = "recipe") -> "Recipe":
        if not isinstance(d, dict):
            raise RnnquantError(f"{where}: expected a mapping")
        check_keys(d, cls, where)
        rules = d.get("rules", [{}])
        if not isinstance(rules, list) or not rules:
            raise RnnquantError(f"{where}: field 'rules' must be a non-empty list")
        parsed = []
        for i, r in enumerate(rules):
            if not isinstance(r, dict):
                raise RnnquantError(f"{where}: rules[{i}] must be a mapping")
            check_keys(r, Rule, f"{where}: rules[{i}]")
            parsed.append(Rule(**r))
        recipe = cls(**{k: v for k, v in d.items() if k != "rules"}, rules=parsed)
        recipe.validate(where)
        return recipe

    def validate(self, where: str = "recipe") -> None:
        if self.smooth_alpha is not None and not (isinstance(self.smooth_alpha, (int, float)) and 0 < self.smooth_alpha < 1):
            raise RnnquantError(f"{where}: field 'smooth_alpha' must be in (0, 1), got {self.smooth_alpha!r}")
        if self.embedding_bits not in (None, 8):
            raise RnnquantError(f"{where}: field 'embedding_bits' must be 8 or null, got {self.embedding_bits!r}")
        for i, r in enumerate(self.rules):
            at = f"{where}: rules[{i}]"
            checks = [
                ("w_bits", r.w_bits in (None, 4, 8), "4, 8 or null"),
                ("a_bits", r.a_bits in (None, 8), "8 or null"),
                ("w_granularity", r.w_granularity in GRANULARITIES, " | ".join(GRANULARITIES)),
                ("group_size", r.group_size in (16, 32, 64, 128, 256), "16, 32, 64, 128 or 256"),
                ("w_method", r.w_method in ("rtn", "gptq"), "rtn | gptq"),
                ("a_mode", r.a_mode in ("dynamic", "static"), "dynamic | static"),
                ("a_clip", r.a_clip in CLIPS, " | ".join(CLIPS)),
                ("outliers", r.outliers in ("none", "float"), "none | float"),
                ("match", isinstance(r.match, str) and r.match != "", "a role or a name pattern"),
            ]
            for fname, ok, allowed in checks:
                if not ok:
                    raise RnnquantError(f"{at}: field {fname!r} must be {allowed}, got {getattr(r, fname)!r}")

    def check_fits(self, spec, in_features: dict[str, int]) -> None:
        """Every rule's match must name something in the model; group sizes must divide the dims
        (a Linear narrower than one group gets a single group per row)."""
        from fnmatch import fnmatchcase

        from ..models import known_roles

        roles = known_roles()
        for i, r in enumerate(self.rules):
            if r.match not in roles and not any(fnmatchcase(n, r.match) for n in spec.linears):
                raise RnnquantError(f"recipe {self.name!r}: rules[{i}] match {r.match!r} is no known role and names no Linear of this model "
                                    f"(roles: {', '.join(sorted(roles))})")
        for name, role in spec.linears.items():
            r = self.rule_for(name, role)
            n = in_features[name]
            if r and r.w_bits is not None and r.w_granularity == "group" and n > r.group_size and n % r.group_size:
                raise RnnquantError(f"recipe {self.name!r}: group_size {r.group_size} does not divide {name}'s {in_features[name]} input features")


def check_keys(d: dict, cls, where: str) -> None:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise RnnquantError(f"{where}: unknown field {unknown[0]!r} (known: {', '.join(sorted(known))})")

