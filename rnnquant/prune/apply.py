"""``prune(model, config, calib, batches)``: the one pruning verb, and honest accounting.

Unstructured and N:M pruning zero weights in place (masked sparsity: the dense file and ONNX
Runtime's dense kernels do not shrink or speed up). Structured pruning removes channels or
layers and rebuilds the model with a smaller config (real savings, measured by `compare`).
"""
from __future__ import annotations

import copy
from fnmatch import fnmatch

import torch

from ..calibrate.engine import Blockwise
from ..errors import RnnquantError
from ..models import build, fingerprint
from ..models.base import slice_blocks
from ..quant.gptq import HessianAccumulator
from .config import STRUCTURED_GROUPS, UNSTRUCTURED, PruneConfig
from .masks import magnitude_mask, owl_sparsities, sparsegpt_prune, wanda_mask, wanda_scores


def _rms(calib, point: str) -> torch.Tensor:
    """Per-channel RMS of a calibration point: sqrt(std^2 + mean^2) (proportional to ||X_j||_2)."""
    return (calib.stat(point, "std") ** 2 + calib.stat(point, "mean") ** 2).sqrt()


def _targets(model, cfg: PruneConfig) -> list[str]:
    spec = model.arch_spec()
    return [n for n in spec.linears if (cfg.include_lm_head or n != spec.head) and n not in spec.prune_dense]


def layer_sparsities(model, cfg: PruneConfig, calib, names: list[str]) -> dict[str, float]:
    """Linear -> sparsity: uniform or OWL per block (Linears outside the layer stack, e.g. the
    LSTM's proj, are a block each), then the config's explicit overrides."""
    out = dict.fromkeys(names, cfg.sparsity)
    if cfg.profile == "owl":
        stack = model.arch_spec().layer_stack
        block = {n: next((b for b in stack if n.startswith(b + ".")), n) for n in names}
        mods = dict(model.named_modules())
        scores: dict[str, list[torch.Tensor]] = {}
        for n in names:
            scores.setdefault(block[n], []).append(wanda_scores(mods[n].weight, _rms(calib, f"{n}.input")).flatten())
        per_block = owl_sparsities({b: torch.cat(v) for b, v in scores.items()}, cfg.sparsity, cfg.owl_m, cfg.owl_lambda)
        for b, s in per_block.items():
            if not 0 <= s < 1:
                raise RnnquantError(f"owl_lambda {cfg.owl_lambda:g} gives {b} sparsity {s:.3f}, outside [0, 1); use a smaller owl_lambda")
        out = {n: per_block[block[n]] for n in names}
    for pattern, s in cfg.layer_sparsity:
        hits = [n for n in names if fnmatch(n, pattern)]
        if not hits:
            raise RnnquantError(f"layer_sparsity pattern {pattern!r} matches none of the {len(names)} pruned Linears ({', '.join(names[:3])}, ...)")
        out |= dict.fromkeys(hits, s)
    return out


@torch.no_grad()
def _unstructured(model, cfg: PruneConfig, calib, batches, progress: bool = False):
    mods = dict(model.named_modules())
    names = _targets(model, cfg)
    if cfg.nm is not None:
        for n in names:
            if mods[n].in_features % cfg.nm[1]:
                raise RnnquantError(f"N:M {cfg.nm[0]}:{cfg.nm[1]}: M does not divide {n}'s {mods[n].in_features} input features")
    sparsity = layer_sparsities(model, cfg, calib, names)
    names = [n for n in names if sparsity[n] > 0 or cfg.nm is not None]
    corrects = _corrects(cfg, calib)

    def prune_one(n: str, hessian: HessianAccumulator | None) -> None:
        w, s = mods[n].weight, sparsity[n]
        before = w.clone() if corrects and mods[n].bias is not None else None
        if cfg.method == "magnitude":
            w.mul_(magnitude_mask(w, s, cfg.nm))
        elif cfg.method == "wanda":
            w.mul_(wanda_mask(w, _rms(calib, f"{n}.input"), s, cfg.nm))
        else:
            w.copy_(sparsegpt_prune(w, hessian.hessian(), s, cfg.nm)[0])
        if before is not None:  # the removed part's mean output, kept
            mods[n].bias += (before - w) @ calib.stat(f"{n}.input", "mean")

    if cfg.method != "sparsegpt":
        for n in names:
            prune_one(n, None)
        return model
    for acc in hessians_by_block(model, names, batches, "sparsegpt" if progress else None):
        for n, h in acc.items():
            prune_one(n, h)
    return model


@torch.no_grad()
def hessians_by_block(model, names: list[str], batches, desc: str | None = None):
    """Yield each block's {Linear: Hessian accumulator} for the named Linears, block by block. Every
    Hessian comes from the model as it was (a block's outputs are taken before the consumer
    changes its weights), as one whole-model pass would give; one block's Hessians live at a time."""
    engine = Blockwise(model, batches)
    for stage in engine.stages(desc):
        here = stage.select(names)
        acc = {n: HessianAccumulator(model.get_submodule(n).in_features) for n in here}
        engine.run(stage, {n: acc[n].add for n in here}, advance=True)
        yield acc


def _corrects(cfg: PruneConfig, calib) -> bool:
    on = cfg.bias_correction if cfg.bias_correction is not None else cfg.method in STRUCTURED_GROUPS
    return on and calib is not None


def _channel_index(size: int, width: int, starts, keep: torch.Tensor) -> torch.Tensor:
    """Indices along a dim of ``size`` that survive: each group span [s, s + width * block) keeps
    only the blocks of ``keep``; indices outside every span (e.g. x_proj's dt rows beside B and C)
    all stay."""
    mask = torch.ones(size, dtype=torch.bool)
    for s, b in slice_blocks(starts):
        mask[s : s + width * b] = False
        mask[(s + keep.unsqueeze(1) * b + torch.arange(b)).flatten()] = True
    return mask.nonzero().squeeze(1)


@torch.no_grad()
def remove_channels(model, group_name: str, keep: list[torch.Tensor], calib=None):
    """A new model with only the ``keep[i]`` channels of each layer's group (same count per layer).
    With ``calib``, the removed channels' means move into the biases the adapter names."""
    group = model.arch_spec().channel_groups[group_name]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    width = model.config[group.config_key]
    for layer, k in zip(group.layers, keep, strict=True):
        drop = torch.ones(width, dtype=torch.bool)
        drop[k] = False
        for lin in layer.compensate if calib is not None else ():
            state[f"{lin}.bias"] += state[f"{lin}.weight"][:, drop] @ calib.stat(f"{lin}.input", "mean")[drop]
        for param, dim, starts in layer.slices:
            state[param] = state[param].index_select(dim, _channel_index(state[param].shape[dim], width, starts, k))
    n = len(keep[0])
    cfg = {"model_type": model.model_type} | model.config | {group.config_key: n} | {k: n * m for k, m in group.scaled_keys}
    new = build(cfg)
    new.load_state_dict(state, strict=True)
    return new


def _channels(model, cfg: PruneConfig, calib):
    spec = model.arch_spec()
    name = STRUCTURED_GROUPS[cfg.method] or next(iter(spec.channel_groups), None)
    if name not in spec.channel_groups:
        raise RnnquantError(f"{model.model_type} has no {STRUCTURED_GROUPS[cfg.method] or 'structurally prunable'} channels to prune")
    group = spec.channel_groups[name]
    width = model.config[group.config_key]
    n_keep = width - int(round(width * cfg.sparsity))
    if n_keep < 1:
        raise RnnquantError(f"channels:{cfg.sparsity:g} would remove every {name} channel")
    mods = dict(model.named_parameters())
    scores = []
    for layer in group.layers:
        score = torch.stack([_rms(calib, p) for p in layer.score_points]).prod(0)
        if layer.score_weight is not None:
            score = score * mods[layer.score_weight].norm(dim=0)  # activation x outgoing weight
        scores.append(score.reshape(width, layer.block).norm(dim=1))  # a unit of `block` channels (a head) scores as one
    if group.same_in_every_layer:  # each layer's scores as shares of its total, so that no layer's scale outvotes the rest
        shared = torch.stack([s / s.sum().clamp(min=1e-30) for s in scores]).sum(0).topk(n_keep).indices.sort().values
        keep = [shared] * len(scores)
    else:
        keep = [s.topk(n_keep).indices for s in scores]
    return remove_channels(model, name, keep, calib if _corrects(cfg, calib) else None)


@torch.no_grad()
def block_influence(model, batches) -> torch.Tensor:
    """ShortGPT's BI_i = 1 - mean cos(x_i, x_{i+1}) over tokens: how much block i changes the stream
    (residual or not), x_i the stream entering block i. A block that changes the width has no BI
    (inf): it cannot be removed. Block by block: only two blocks' streams are held at once."""
    engine = Blockwise(model, batches)
    cos = torch.nn.functional.cosine_similarity
    bi = []
    for stage in engine.stages():
        if stage.is_tail:
            break
        before = list(engine.cache)
        engine.run(stage, advance=True)
        if any(a.shape != b.shape for a, b in zip(before, engine.cache)):
            bi.append(float("inf"))
            continue
        sims = [cos(a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1]), dim=-1) for a, b in zip(before, engine.cache)]
        bi.append(1 - torch.cat(sims).mean().item())
    return torch.tensor(bi)


def _layers(model, cfg: PruneConfig, batches):
    spec = model.arch_spec()
    n = len(spec.layer_stack)
    if cfg.layers >= n:
        raise RnnquantError(f"layers:{cfg.layers} would remove every layer (the model has {n})")
    bi = block_influence(model, batches)
    bi[spec.fixed_blocks] = float("inf")  # e.g. RWKV's block 0, the only one with a pre-norm / the value-residual source
    removable = int(bi.isfinite().sum())
    if cfg.layers > removable:
        raise RnnquantError(f"layers:{cfg.layers}: only {removable} of the {n} layers can be removed "
                            "(the others change the width or hold parameters no other block has)")
    drop = set(bi.topk(cfg.layers, largest=False).indices.tolist())
    prefix = spec.layer_stack[0].rsplit(".", 1)[0]  # e.g. backbone.layers
    kept = [i for i in range(n) if i not in drop]
    state, new_i = {}, {old: new for new, old in enumerate(kept)}
    for k, v in model.state_dict().items():
        if k.startswith(prefix + "."):
            i, rest = k[len(prefix) + 1 :].split(".", 1)
            if int(i) in drop:
                continue
            k = f"{prefix}.{new_i[int(i)]}.{rest}"
        state[k] = v
    patterns = {k: [model.config[k][i % len(model.config[k])] for i in kept] for k in spec.layer_pattern_keys if k in model.config}
    new = build({"model_type": model.model_type} | model.config | {spec.num_layers_key: n - cfg.layers} | patterns)
    new.load_state_dict(state, strict=True)
    return new, sorted(drop)


def prune(model, cfg: PruneConfig, calib=None, batches=None, *, inplace: bool = False, progress: bool = False):
    """A pruned copy of ``model`` (``inplace``: masked pruning zeroes ``model``'s own weights, no
    second copy in memory; structured pruning always builds a new, smaller model). Wanda and
    structured pruning read ``calib``; SparseGPT and layer removal need ``batches`` (token id
    tensors [B, T])."""
    cfg.validate()
    if (cfg.method in ("wanda", *STRUCTURED_GROUPS) or cfg.profile == "owl") and calib is None:
        raise RnnquantError(f"pruning {cfg.label} needs calibration statistics (--calib DIR)")
    if cfg.method in ("sparsegpt", "layers") and not batches:
        raise RnnquantError(f"pruning method {cfg.method!r} needs calibration text")
    was = model.provenance
    params_before = model.num_parameters()
    src = copy.deepcopy(model) if cfg.method in UNSTRUCTURED and not inplace else model  # structured pruning only reads it
    removed = None
    if cfg.method in UNSTRUCTURED:
        new = _unstructured(src, cfg, calib, batches, progress)
    elif cfg.method in STRUCTURED_GROUPS:
        new = _channels(src, cfg, calib)
    else:
        new, removed = _layers(src, cfg, batches)
    new.eval()
    new.tokenizer = getattr(model, "tokenizer", None)
    report = accounting(params_before, new, cfg) | {"origin": was.origin_path, "origin_fingerprint": was.float_fingerprint,
                                            "bias_corrected": cfg.method != "layers" and _corrects(cfg, calib)}
    if removed is not None:
        report["removed_layers"] = removed
    new.provenance = was.derive(fingerprint=fingerprint(new), origin=was.origin_path, origin_fingerprint=was.float_fingerprint,
                                prune_report=report)
    return new


def masked_sparsity(model, names: list[str]) -> tuple[float, dict[str, float]]:
    """% of exact zeros in the named Linears' weights, overall and per Linear. A quantized Linear's
    ``weight`` is its effective float weight: a pruned zero stays exactly 0 through RTN and GPTQ,
    but not through a Hadamard rotation (the stored weight is rotated, hence dense)."""
    mods = dict(model.named_modules())
    ws = {n: mods[n].weight for n in names}
    total = sum(w.numel() for w in ws.values())
    overall = 100 * sum(int((w == 0).sum()) for w in ws.values()) / total if total else 0.0
    return overall, {n: round(100 * float((w == 0).float().mean()), 2) for n, w in ws.items()}


def accounting(params_before: int, after, cfg: PruneConfig) -> dict:
    """Masked sparsity and structural savings, reported separately."""
    unique = {id(p): p for p in after.parameters()}.values()
    total_b, total_a = params_before, after.num_parameters()
    nonzero = sum(int((p != 0).sum()) for p in unique)
    overall, per_linear = masked_sparsity(after, _targets(after, cfg))
    return {
        "spec": cfg.label,
        "config": cfg.to_dict(),
        "params_before": total_b,
        "params_after": total_a,
        "structural_reduction_pct": 100 * (1 - total_a / total_b),
        "nonzero_params": nonzero,
        "masked_sparsity_pct": overall,
        "dense_bytes_fp32": 4 * total_a,
        "masked_sparsity_pct_per_linear": per_linear if cfg.method in UNSTRUCTURED else {},
        "note": "masked zeros are stored dense: no smaller file and no ONNX Runtime speed-up" if cfg.method in UNSTRUCTURED else
                "structural: the matrices and the exported graph are smaller",
    }
