"""The quantized model directory: the real integer form on disk.

    config.json       the float model's config (unchanged)
    quant.json        recipe, source-model and calibration fingerprints, per-Linear layout
    model.safetensors float parameters (norms already smoothed) + per QLinear (an untied embedding's
                      int8 table is the QLinear ``<embedding>.table``, its rows the tokens):
                      <name>.qweight  int8 codes (8-bit) or uint8 with two 4-bit codes per byte
                      <name>.scales   fp32 [out, groups];  <name>.zeros (asymmetric grids)
                      <name>.quant_idx / .float_idx / .w_float / .bias / .a_scale
    tokenizer.json

4-bit codes are stored unsigned (q + 8 for symmetric grids), low nibble first: the layout of
ONNX Runtime's MatMulNBits.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ..errors import RnnquantError
from ..io import WEIGHTS, atomic_path
from ..tokenizer import stored_name
from .hadamard import hadamard_matrix
from .primitives import QuantizedWeight, code_dtype
from .qlinear import QEmbedding, QLinear
from .recipe import Recipe

QUANT_META = "quant.json"
FORMAT_VERSION = 1


def pack_codes(qw: QuantizedWeight) -> torch.Tensor:
    if qw.bits == 8:
        return qw.q
    u = (qw.q + (8 if qw.symmetric else 0)).to(torch.uint8)  # [out, in] in 0..15
    if u.shape[1] % 2:
        u = torch.nn.functional.pad(u, (0, 1))
    return u[:, 0::2] | (u[:, 1::2] << 4)


def unpack_codes(packed: torch.Tensor, bits: int, symmetric: bool, cols: int) -> torch.Tensor:
    if bits == 8:
        return packed.to(code_dtype(symmetric))
    u = torch.stack([packed & 0xF, packed >> 4], -1).reshape(packed.shape[0], -1)[:, :cols].to(code_dtype(symmetric))
    return u - (8 if symmetric else 0)


def quantized_linears(model) -> dict[str, QLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QLinear)}


def save_quantized(qm, out_dir, tokenizer_path=None, force: bool = False) -> None:
    qlins = quantized_linears(qm)
    tensors, layout = {}, {}
    skip = {f"{n}.rotation" for n in qlins}
    for k, v in qm.state_dict().items():
        if k in skip or k == qm.tied_head_key():
            continue
        tensors[k] = v.detach().contiguous().clone()
    for n, m in qlins.items():
        qw = m.qweight
        layout[n] = {"in": m.in_features, "out": m.out_features, "a_bits": m.a_bits, "a_mode": m.a_mode, "rotated": m.rotation is not None,
                     "bits": qw.bits if qw else None, "group_size": qw.group_size if qw else None, "symmetric": qw.symmetric if qw else None}
        if qw is not None:
            tensors[f"{n}.qweight"] = pack_codes(qw).contiguous()
            tensors[f"{n}.scales"] = qw.scale.contiguous()
            if not qw.symmetric:
                tensors[f"{n}.zeros"] = qw.zero.to(torch.uint8).contiguous()
    emb = qm.get_submodule(qm.arch_spec().embedding)
    tied = isinstance(emb, QEmbedding) and not emb.owned  # an owned table is saved as the QLinear <embedding>.table
    pv = qm.provenance
    meta = {"format_version": FORMAT_VERSION, "tied_embedding": tied, "origin": pv.origin, "recipe": pv.recipe.to_dict(), "source_fingerprint": pv.quantized_from,
            "origin_fingerprint": pv.origin_fingerprint, "prune_report": pv.prune_report, "calib_fingerprint": pv.calib_fingerprint, "linears": layout}
    from safetensors.torch import save_file

    with atomic_path(out_dir, directory=True, force=force) as tmp:
        (tmp / "config.json").write_text(json.dumps({"model_type": qm.model_type} | qm.config, indent=2, sort_keys=True) + "\n")
        (tmp / QUANT_META).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "rnnquant-quantized"})
        if tokenizer_path is not None:
            shutil.copyfile(tokenizer_path, tmp / stored_name(tokenizer_path))


def load_quantized(d: Path, allow_pickle: bool = False):
    """A directory written by ``save_quantized``: the model with its Linears as the QLinears stored."""
    from ..models import check_finite, finish_load, open_model_dir

    model, state = open_model_dir(d, allow_pickle)
    check_finite(state, d)
    return finish_load(_assign_quantized(model, d, state), d)


def _assign_quantized(model, d: Path, state: dict[str, torch.Tensor]):
    """Replace ``model``'s Linears by QLinears rebuilt from ``state``; load the rest. Returns the model."""
    from ..models import retie

    try:
        meta = json.loads((d / QUANT_META).read_text("utf-8"))
        layout = meta["linears"]
        recipe = Recipe.from_dict(meta["recipe"], where=str(d / QUANT_META))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise RnnquantError(f"{d / QUANT_META}: corrupt quantization metadata ({e})") from None

    spec = model.arch_spec()
    table = f"{spec.embedding}.table"  # an untied embedding's own int8 table (QEmbedding.own)
    try:
        for n, lay in layout.items():
            qw = None
            if lay["bits"] is not None:
                zeros = state.pop(f"{n}.zeros", None)
                scales = state.pop(f"{n}.scales").float()
                n_quant = len(state[f"{n}.quant_idx"])
                q = unpack_codes(state.pop(f"{n}.qweight"), lay["bits"], lay["symmetric"], n_quant)
                z = zeros.to(torch.int16) if zeros is not None else torch.zeros_like(scales, dtype=torch.int16)
                qw = QuantizedWeight(q, scales, z, lay["bits"], lay["group_size"], lay["symmetric"])
            a_scale = state.get(f"{n}.a_scale", None)
            ql = QLinear(lay["in"], lay["out"], state.get(f"{n}.bias", None), qw, state.get(f"{n}.w_float"), state.get(f"{n}.quant_idx"),
                         state.get(f"{n}.float_idx"), hadamard_matrix(lay["in"]) if lay["rotated"] else None, lay["a_bits"], lay["a_mode"],
                         float(a_scale) if a_scale is not None else None)
            if n == table:
                model.set_submodule(spec.embedding, QEmbedding(ql, owned=True))
            else:
                model.set_submodule(n, ql)
    except KeyError as e:
        raise RnnquantError(f"{d / WEIGHTS}: missing quantized tensor {e.args[0]!r}") from None
    if meta.get("tied_embedding"):
        model.set_submodule(spec.embedding, QEmbedding(model.get_submodule(spec.head)))
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if not k.endswith(".rotation") and k != model.tied_head_key()]
    if missing or unexpected:
        raise RnnquantError(f"{d / WEIGHTS}: {'missing' if missing else 'unexpected'} tensor {(missing or unexpected)[0]!r}")
    retie(model)
    model.provenance = model.provenance.derive(
        recipe=recipe, origin=meta.get("origin"), quantized_from=meta.get("source_fingerprint"), origin_fingerprint=meta.get("origin_fingerprint"),
        prune_report=meta.get("prune_report") or None, calib_fingerprint=meta.get("calib_fingerprint"))
    return model


def size_bytes(model) -> int:
    """Bytes of the model's real form: packed integer weights + float parameters (shared ones once)."""
    qlins = quantized_linears(model)
    total, seen = 0, set()
    for n, t in list(model.named_parameters()) + list(model.named_buffers()):
        if id(t) in seen or t is None or any(n.startswith(q + ".") for q in qlins):
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    for m in qlins.values():
        total += (m.qweight.nbytes() if m.qweight else 0) + m.w_float.numel() * 4 + (m.bias.numel() * 4 if m.bias is not None else 0)
    return total
