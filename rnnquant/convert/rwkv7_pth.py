"""BlinkDL's own RWKV-7 checkpoints (RWKV-LM ``x070``, the ``.pth`` files most users download) onto
the ``rwkv7`` adapter (flash-linear-attention's layout).

    BlinkDL                                  fla / rnnquant
    emb.weight                               model.embeddings.weight
    blocks.0.ln0                             model.layers.0.pre_norm
    blocks.i.ln1 / ln2                       model.layers.i.attn_norm / ffn_norm
    blocks.i.att.x_{r,w,k,v,a,g} [1,1,D]     model.layers.i.attn.x_{r,w,k,v,a,g}
    blocks.i.att.{w,a,v}0 [1,1,D], 1 [D,r], 2 [r,D]    attn.{w,a,v}_lora.lora.{2.bias, 0.weight^T, 2.weight^T}
    blocks.i.att.g1 [D,r], g2 [r,D]          attn.g_lora.lora.{0.weight^T, 2.weight^T}
    blocks.i.att.k_k, k_a [1,1,D]; r_k [H,N] attn.k_k, k_a [D]; r_k
    blocks.i.att.{receptance,key,value,output}   attn.{r,k,v,o}_proj
    blocks.i.att.ln_x                        attn.g_norm  (GroupNorm, eps 64e-5 = head_dim x 1e-5)
    blocks.i.ffn.x_k [1,1,D], key, value     model.layers.i.ffn.x_k [D], key, value
    ln_out, head                             model.norm, lm_head

The decay is the same function in both: BlinkDL's w = -softplus(-(w0 + tanh(x w1) w2)) - 0.5 and
decay exp(-exp(w)) is fla's exp(-e^-0.5 sigmoid(w0 + tanh(x w1) w2)), since exp(-softplus(-z)) =
sigmoid(z). Every tensor must find a place.
"""
from __future__ import annotations

import re

import torch

from ..errors import RnnquantError

NAME = "rwkv7-pth"
DESCRIPTION = "BlinkDL RWKV-7 .pth checkpoints (emb.weight, blocks.{i}.att.*, blocks.{i}.ffn.*, ln_out, head)"
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def matches(tensors: dict) -> bool:
    return "emb.weight" in tensors and any(k.endswith(".att.r_k") for k in tensors)


def _fail(msg: str) -> RnnquantError:
    return RnnquantError(f"not a BlinkDL RWKV-7 checkpoint: {msg}")


def _vec(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[-1])


def _block(tensors: dict, i: int) -> dict[str, torch.Tensor]:
    """Block i's tensors in the fla layout."""
    b, a, p = f"blocks.{i}.", f"blocks.{i}.att.", f"model.layers.{i}."
    out = {f"{p}attn_norm.{w}": tensors[f"{b}ln1.{w}"] for w in ("weight", "bias")}
    out |= {f"{p}ffn_norm.{w}": tensors[f"{b}ln2.{w}"] for w in ("weight", "bias")}
    if i == 0:
        out |= {f"{p}pre_norm.{w}": tensors[f"{b}ln0.{w}"] for w in ("weight", "bias")}
    out |= {f"{p}attn.x_{c}": tensors[f"{a}x_{c}"].reshape(1, 1, -1) for c in "rwkvag"}
    out |= {f"{p}attn.k_k": _vec(tensors[f"{a}k_k"]), f"{p}attn.k_a": _vec(tensors[f"{a}k_a"]), f"{p}attn.r_k": tensors[f"{a}r_k"]}
    for ours, theirs in (("r_proj", "receptance"), ("k_proj", "key"), ("v_proj", "value"), ("o_proj", "output")):
        out[f"{p}attn.{ours}.weight"] = tensors[f"{a}{theirs}.weight"]
    for lora in ("w", "a", "v", "g"):
        if lora == "v" and i == 0:
            continue  # layer 0 has no value residual
        lo = f"{p}attn.{lora}_lora.lora."
        out[f"{lo}0.weight"] = tensors[f"{a}{lora}1"].T.contiguous()
        out[f"{lo}2.weight"] = tensors[f"{a}{lora}2"].T.contiguous()
        if lora != "g":
            out[f"{lo}2.bias"] = _vec(tensors[f"{a}{lora}0"])
    out |= {f"{p}attn.g_norm.{w}": tensors[f"{a}ln_x.{w}"] for w in ("weight", "bias")}
    out[f"{p}ffn.x_k"] = _vec(tensors[f"blocks.{i}.ffn.x_k"])
    out |= {f"{p}ffn.{w}.weight": tensors[f"blocks.{i}.ffn.{w}.weight"] for w in ("key", "value")}
    return out


def convert(tensors: dict, **hints):
    """Map a BlinkDL RWKV-7 state dict onto the rwkv7 adapter; see the module docstring."""
    from . import Converted

    given = sorted(k for k, v in hints.items() if v is not None)
    if given:
        raise RnnquantError(f"--{given[0].replace('_', '-')} applies to torch.nn RNN checkpoints, not to RWKV-7")
    layers = sorted({int(m.group(1)) for k in tensors if (m := _BLOCK.match(k))})
    if not layers or layers != list(range(len(layers))):
        raise _fail(f"block numbers {layers[:5]} are not 0..L-1")
    try:
        V, D = tensors["emb.weight"].shape
        H, N = tensors["blocks.0.att.r_k"].shape
        out = {"model.embeddings.weight": tensors["emb.weight"], "lm_head.weight": tensors["head.weight"]}
        out |= {f"model.norm.{w}": tensors[f"ln_out.{w}"] for w in ("weight", "bias")}
        for i in layers:
            out |= _block(tensors, i)
        rank = {k: tensors[f"blocks.0.att.{k}1"].shape[1] for k in "wag"}
        rank["v"] = tensors["blocks.1.att.v1"].shape[1] if len(layers) > 1 else 16  # layer 0 has none: any width
        F_ = tensors["blocks.0.ffn.key.weight"].shape[0]
    except KeyError as e:
        raise _fail(f"no tensor {e.args[0]!r}") from None
    used = {"emb.weight", "head.weight", "ln_out.weight", "ln_out.bias"} | {k for k in tensors if _BLOCK.match(k)}
    left = set(tensors) - used
    if left:
        raise _fail(f"tensors an RWKV-7 has no place for: {', '.join(sorted(left)[:5])}")
    if len(out) != len(tensors):  # the mapping is one to one: a count that differs is another variant
        raise _fail(f"{len(tensors)} tensors, but this layout maps {len(out)}")
    config = {"model_type": "rwkv7", "vocab_size": V, "hidden_size": D, "num_hidden_layers": len(layers), "head_dim": N,
              "num_heads": H, "intermediate_size": F_, "decay_low_rank_dim": rank["w"], "a_low_rank_dim": rank["a"],
              "v_low_rank_dim": rank["v"], "gate_low_rank_dim": rank["g"], "norm_eps": 1e-5, "tie_word_embeddings": False,
              "bos_token_id": 0, "eos_token_id": 0}
    if N != 64:
        raise _fail(f"head size {N}: BlinkDL's ln_x eps is 64e-5, fla's head_dim x norm_eps; they agree only at head size 64")
    mapping = [f"embedding  emb.weight {[V, D]} -> model.embeddings.weight",
               f"blocks     {len(layers)} x RWKV-7 (hidden {D}, {H} heads of {N}, FFN {F_}, LoRA ranks w {rank['w']} a {rank['a']} "
               f"v {rank['v']} g {rank['g']}) -> model.layers.*",
               "head       head.weight -> lm_head.weight (untied)"]
    return Converted(config, out, mapping)
