"""``quantize(model, recipe, calib, ids)``: the one verb that applies a recipe.

Order: (1) SmoothQuant folds into the norms (uses calibration absmax, float function unchanged);
(2) block by block (``calibrate.engine``), a data pass collects what the rules need at each
target Linear's input (per-tensor |x| histogram for static scales and clipping, Hessians for
GPTQ, a row sample for choosing the clip); (3) each target Linear becomes a QLinear. With GPTQ in
the recipe, (2) and (3) run Linear by Linear in model order, each seeing the earlier Linears
quantized: O(layers) block passes, never a whole-model pass per Linear.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..calibrate.stats import ChannelStats
from ..errors import RnnquantError
from ..models.transforms import scale_norm_channels
from .gptq import HessianAccumulator, gptq_quantize
from .hadamard import hadamard_matrix
from .primitives import QuantizedWeight, fake_quant_static, quantize_weight_rtn
from .qlinear import QEmbedding, QLinear
from .recipe import Recipe, Rule

SAMPLE_ROWS = 2048  # input rows kept per Linear to choose a clip by output error


@torch.no_grad()
def smooth(model, calib, alpha: float, targets: set[str]) -> None:
    """SmoothQuant (Xiao et al. 2023): s_j = max|X_j|^a / max|W_j|^(1-a), X <- X / s, W <- W * s."""
    modules = dict(model.named_modules())
    for norm, linears in model.arch_spec().smoothing_pairs:
        if not set(linears) & targets:
            continue
        act = torch.stack([calib.stat(f"{lin}.input", "absmax") for lin in linears]).amax(0)
        wmax = torch.stack([modules[lin].weight.abs().amax(0) for lin in linears]).amax(0)
        s = (act.clamp(min=1e-5) ** alpha / wmax.clamp(min=1e-5) ** (1 - alpha)).clamp(min=1e-5)
        scale_norm_channels(model, norm, linears, 1 / s)


class _InputProbe:
    """What the data pass records at one Linear's (rotated, quantized-columns) input."""

    def __init__(self, cols: int, gptq: bool, static: bool):
        self.hist = ChannelStats(1, bins=4096) if static else None
        self.hessian = HessianAccumulator(cols) if gptq else None
        self.rows: list[torch.Tensor] = []
        self.n_rows = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1])
        if self.hist is not None:
            self.hist.update(x.reshape(-1, 1))
            if self.n_rows < SAMPLE_ROWS:
                self.rows.append(x[: SAMPLE_ROWS - self.n_rows].clone())
                self.n_rows += len(self.rows[-1])
        if self.hessian is not None:
            self.hessian.add(x)


def _plan(model, recipe: Recipe, calib) -> dict[str, dict]:
    """Per target Linear: its rule, rotation and split of input columns into int / float."""
    spec = model.arch_spec()
    modules = dict(model.named_modules())
    rotate = set(spec.rotation_points) if recipe.hadamard else set()
    plan = {}
    for name, role in spec.linears.items():
        rule = recipe.rule_for(name, role)
        if rule is None or (rule.w_bits is None and rule.a_bits is None):
            continue
        n_in = modules[name].in_features
        rot = hadamard_matrix(n_in) if name in rotate else None
        float_idx = []
        if rule.outliers == "float" and rot is None and calib is not None and f"{name}.input" in calib.points:
            float_idx = sorted(calib.outlier_channels(f"{name}.input"))
        keep = sorted(set(range(n_in)) - set(float_idx))
        plan[name] = {"rule": rule, "rotation": rot, "float_idx": torch.tensor(float_idx, dtype=torch.long), "quant_idx": torch.tensor(keep, dtype=torch.long)}
    return plan


def _data_needs(p: dict) -> tuple[bool, bool]:
    """(static activation scale, GPTQ): what a Linear's rule needs from its inputs."""
    r: Rule = p["rule"]
    return r.a_bits is not None and r.a_mode == "static", r.w_bits is not None and r.w_method == "gptq"


def _needs_data(p: dict) -> bool:
    return any(_data_needs(p))


def _probe_for(p: dict) -> _InputProbe | None:
    """The recorder for a Linear's inputs (None: its rule needs none, e.g. RTN weights, dynamic scales)."""
    static, gptq = _data_needs(p)
    return _InputProbe(len(p["quant_idx"]), gptq, static) if static or gptq else None


def _feeder(p: dict, probe: _InputProbe):
    """The hook that gives ``probe`` a Linear's input, rotated and restricted to its integer columns."""
    def feed(x):
        x = x @ p["rotation"] if p["rotation"] is not None else x
        probe.add(x[..., p["quant_idx"]])
    return feed


@torch.no_grad()
def _apply_blockwise(qm, plan: dict[str, dict], batches, sequential: bool, progress: bool) -> None:
    """Replace every planned Linear, one block at a time (``calibrate.engine``). ``sequential``
    (GPTQ in the recipe): each Linear's probe sees the block with its earlier Linears already
    quantized, and every block's inputs come from the quantized blocks before it, as in the GPTQ
    paper. Otherwise every probe sees the float model, as a single whole-model pass would."""
    from ..calibrate.engine import Blockwise

    if not any(_needs_data(p) for p in plan.values()):
        for name, p in plan.items():
            qm.set_submodule(name, _quantize_linear(qm.get_submodule(name), p, None))
        return
    engine = Blockwise(qm, batches, segment=None)
    for stage in engine.stages("quantize" if progress else None):
        names = stage.select(plan)
        if sequential:
            kept = None
            for name in names:
                probe = _probe_for(plan[name])  # made here: one Hessian [in, in] alive at a time
                keep = name == names[-1] == engine.exit_linear(stage)  # its replay also gives the block's outputs
                if probe is not None or keep:
                    kept = engine.run(stage, {name: _feeder(plan[name], probe)} if probe is not None else {}, until=name, keep_exit=keep)
                qm.set_submodule(name, _quantize_linear(qm.get_submodule(name), plan[name], probe))
            engine.advance(stage, kept)
        else:
            probes = {n: _probe_for(plan[n]) for n in names}
            engine.run(stage, {n: _feeder(plan[n], pr) for n, pr in probes.items() if pr is not None}, advance=True)
            for name in names:
                qm.set_submodule(name, _quantize_linear(qm.get_submodule(name), plan[name], probes.pop(name)))


def _choose_clip(probe: _InputProbe, w, clip: str, bits: int) -> float:
    """``w``: the layer's effective weight, a tensor or a QuantizedWeight (read in row chunks)."""
    h = probe.hist
    cands = {"absmax": float(h.absmax[0]), **{f"p{q}": float(h.abs_percentile(q)[0]) for q in (99, 99.9, 99.99)}}
    if clip != "auto":
        return cands[clip]
    x = torch.cat(probe.rows)
    qmax = 2 ** (bits - 1) - 1
    errs = {k: _output_mse(fake_quant_static(x, torch.tensor(c / qmax), bits) - x, w) for k, c in cands.items() if c > 0}
    best = min(errs, key=errs.get) if errs else "absmax"
    return cands[best]


def _output_mse(dx: torch.Tensor, w, rows: int = 4096) -> float:
    """mean((dx @ w.T)^2), over ``rows`` output channels at a time: a vocabulary head's error
    [2048 rows, 50k outputs] would be 400 MB at once, its dequantized weight 150 MB more."""
    n_out = w.q.shape[0] if isinstance(w, QuantizedWeight) else w.shape[0]
    total = 0.0
    for i in range(0, n_out, rows):
        part = w.dequantize_rows(slice(i, i + rows)) if isinstance(w, QuantizedWeight) else w[i : i + rows]
        total += float((dx @ part.T).pow(2).sum())
    return total / (dx.shape[0] * n_out)


def _quantize_linear(lin: nn.Linear, p: dict, probe: _InputProbe | None) -> QLinear:
    r: Rule = p["rule"]
    w = lin.weight.detach().float()
    if p["rotation"] is not None:
        w = w @ p["rotation"]
    every = len(p["quant_idx"]) == w.shape[1]  # no float columns: no column-gathered copy of w
    wq_cols, wf = (w if every else w[:, p["quant_idx"]]), w[:, p["float_idx"]]
    qweight = None
    if r.w_bits is not None:
        if r.w_method == "gptq":
            # a pruned Linear (exact zeros, not rotated away) keeps its mask through GPTQ's updates
            keep = wq_cols != 0 if p["rotation"] is None else None
            qweight = gptq_quantize(wq_cols, probe.hessian.hessian(), r.w_bits, r.w_granularity, r.group_size, r.w_symmetric, keep=keep)
        else:
            qweight = quantize_weight_rtn(wq_cols, r.w_bits, r.w_granularity, r.group_size, r.w_symmetric)
    else:
        wf, p = w, p | {"float_idx": torch.arange(w.shape[1]), "quant_idx": torch.zeros(0, dtype=torch.long)}
    a_scale = None
    if r.a_bits is not None and r.a_mode == "static":
        a_scale = max(_choose_clip(probe, qweight or wq_cols, r.a_clip, r.a_bits), 1e-8) / (2 ** (r.a_bits - 1) - 1)
    bias = lin.bias.detach().clone() if lin.bias is not None else None
    return QLinear(lin.in_features, lin.out_features, bias, qweight, wf.contiguous(), p["quant_idx"], p["float_idx"],
                   p["rotation"], r.a_bits, r.a_mode, a_scale)


def _quantize_embedding(qm, recipe: Recipe) -> None:
    """Tied to a head whose codes a lookup can gather, the embedding shares them; a table of its
    own (untied, or tied to a head that cannot lend its codes: rotated or with float columns) gets
    per-row int8 codes, unless ``recipe.embedding_bits`` is None. A tied float head keeps the one
    float table it shares with the embedding."""
    spec = qm.arch_spec()
    head, emb = qm.get_submodule(spec.head), qm.get_submodule(spec.embedding)
    if qm.tied_head_key() and QEmbedding.can_tie(head):
        qm.set_submodule(spec.embedding, QEmbedding(head))
    elif recipe.embedding_bits and not (qm.tied_head_key() and isinstance(head, nn.Linear)):
        qm.set_submodule(spec.embedding, QEmbedding.own(emb.weight, recipe.embedding_bits))


def require_calibration(recipe: Recipe, calib) -> None:
    if recipe.needs_calibration() and calib is None:
        raise RnnquantError(f"recipe {recipe.name!r} needs calibration statistics: run `rnnquant calibrate` and pass --calib DIR")


def quantize(model, recipe: Recipe, calib=None, batches=None, *, inplace: bool = False, progress: bool = False):
    """Return a quantized copy of ``model`` (``inplace``: ``model`` itself, no second copy of the
    weights in memory): the adapter's Linears replaced by QLinear per ``recipe``.

    ``calib`` (from ``load_calibration``) is required for SmoothQuant, float outlier channels and
    static activation scales; ``batches`` (token id tensors [B, T]) for static scales and GPTQ.
    """
    recipe.validate()
    spec = model.arch_spec()
    recipe.check_fits(spec, {n: model.get_submodule(n).in_features for n in spec.linears})  # (no module dict kept: it would hold every replaced float weight)
    require_calibration(recipe, calib)
    if calib is not None and calib.meta["model_fingerprint"] != model.provenance.fingerprint:
        raise RnnquantError("the calibration directory was made for another model")
    if recipe.needs_data() and not batches:
        raise RnnquantError(f"recipe {recipe.name!r} needs calibration text (static activation scales or GPTQ)")

    was = model.provenance  # before any transform: SmoothQuant re-fingerprints the model it scales
    qm = model if inplace else copy.deepcopy(model)
    plan = _plan(qm, recipe, calib)
    if recipe.smooth_alpha is not None:
        smooth(qm, calib, recipe.smooth_alpha, {n for n, p in plan.items() if p["rule"].a_bits is not None and p["rotation"] is None})
    sequential = any(p["rule"].w_bits and p["rule"].w_method == "gptq" for p in plan.values())
    _apply_blockwise(qm, plan, batches or [], sequential, progress)
    _quantize_embedding(qm, recipe)
    qm.provenance = was.derive(recipe=recipe, quantized_from=was.fingerprint, origin=was.origin_path, origin_fingerprint=was.float_fingerprint,
                               calib_fingerprint=calib.meta["model_fingerprint"] if calib is not None else None)
    return qm.eval()
