"""Where a model in memory came from: one record, written and read here, instead of attributes
scattered over the module.

Every stage that makes a model from another (prune, quantize, the loaders) derives the new
record from the old one; the artifacts they write (``prune_report.json``, ``quant.json``, graph
metadata) carry the fields a later stage checks (``compare`` matches variants against the float
model's fingerprint; ``quantize`` refuses another model's calibration).
"""
from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Provenance:
    source: str | None = None  # the directory it was loaded from (tokenizer.json lives there)
    fingerprint: str | None = None  # sha256 of this model's config and weights (models.fingerprint)
    origin: str | None = None  # the float model's directory, for a pruned and/or quantized model
    origin_fingerprint: str | None = None  # the float model's fingerprint: what `compare` matches variants against
    quantized_from: str | None = None  # the fingerprint of the model the recipe was applied to
    calib_fingerprint: str | None = None  # the model the calibration was made for
    recipe: object | None = None  # the quant Recipe applied (None: float)
    prune_report: dict | None = None  # prune's config and accounting (None: not pruned)

    def derive(self, **changes) -> Provenance:
        return replace(self, **changes)

    @property
    def origin_path(self) -> str | None:
        """The float original's directory (its own if it is that original): zoo defaults follow it."""
        return self.origin or self.source

    @property
    def float_fingerprint(self) -> str | None:
        """The float original's fingerprint (its own if it is that original; None when built in memory)."""
        return self.origin_fingerprint or self.quantized_from or self.fingerprint

    @property
    def graph_fingerprint(self) -> str:
        """What an exported graph names as its model: the float model a quantized one was made from."""
        return self.quantized_from or self.fingerprint or ""
