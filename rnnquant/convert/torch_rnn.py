"""Plain ``nn.Embedding -> nn.LSTM / nn.GRU -> nn.Linear`` language models, as saved by
``torch.save(model.state_dict())`` (PyTorch's ``examples/word_language_model``, AWD-LSTM-style
stacks of one-layer RNNs, course projects), onto the ``lstm`` / ``gru`` adapters.

The pieces are found by ``torch.nn.LSTM``/``GRU``'s own parameter names, whatever the module
prefixes are:
    RNN        <prefix>.weight_ih_l{k}, weight_hh_l{k}, bias_ih_l{k}, bias_hh_l{k}, weight_hr_l{k} (LSTMP);
               WeightDrop's ``*_raw`` copies stand in when the plain name is missing
    embedding  a 2-D [V, E] weight with no bias beside it, E = layer 0's input size
    head       a [V, Ho] weight (+ [V] bias), Ho = the last layer's output size; or a
               [E, Ho] Linear (+ bias) then a [V, E] head (a projection before a tied head)
Every tensor must find a place: a state dict with anything else (a norm, an attention) is not
this architecture, and converting it would silently drop computation.
"""
from __future__ import annotations

import re
from collections import defaultdict

import torch

from ..errors import RnnquantError

NAME = "torch-rnn"
DESCRIPTION = "torch.nn.LSTM/GRU language models (embedding -> nn.LSTM/nn.GRU -> Linear head)"
_RNN_PARAM = re.compile(r"^(?:(?P<prefix>.*)\.)?(?P<kind>weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)_l(?P<k>\d+)(?P<rev>_reverse)?(?P<raw>_raw)?$")


def matches(tensors: dict) -> bool:
    return any(_RNN_PARAM.match(k) for k in tensors)


def _fail(msg: str, tensors: dict) -> RnnquantError:
    return RnnquantError(f"{msg} (found {len(tensors)} tensors: {', '.join(f'{k} {list(v.shape)}' for k, v in list(tensors.items())[:6])}"
                         + (", ..." if len(tensors) > 6 else "") + ")")


def _rnn_groups(tensors: dict) -> dict[str, dict[int, dict[str, str]]]:
    """prefix -> layer k -> kind -> tensor name (plain names win over WeightDrop's _raw)."""
    groups: dict[str, dict[int, dict[str, str]]] = defaultdict(lambda: defaultdict(dict))
    for name in sorted(tensors, key=lambda n: n.endswith("_raw")):
        m = _RNN_PARAM.match(name)
        if m is None:
            continue
        if m["rev"]:
            raise RnnquantError(f"{name}: a bidirectional RNN reads the future, so it is not a causal language model")
        groups[m["prefix"] or ""][int(m["k"])].setdefault(m["kind"], name)
    return groups


def _layers(tensors: dict, rnn: str | None) -> list[dict[str, str]]:
    """The RNN layers in order: one module's l0..l{L-1}, or a numbered list of one-layer modules."""
    groups = _rnn_groups(tensors)
    if rnn is not None:
        rnn = rnn.rstrip(".")
        groups = {p: g for p, g in groups.items() if p == rnn or re.fullmatch(re.escape(rnn) + r"\.\d+(\..*)?", p)}
        if not groups:
            raise _fail(f"--rnn {rnn!r} names no torch.nn.LSTM/GRU parameters", tensors)
    if len(groups) == 1:
        (layers,) = groups.values()
        if sorted(layers) != list(range(len(layers))):
            raise _fail(f"RNN layers {sorted(layers)} are not numbered 0..{len(layers) - 1}", tensors)
        return [layers[k] for k in range(len(layers))]
    shape = {re.sub(r"\d+", "#", p) for p in groups}
    if len(shape) == 1 and all(list(g) == [0] for g in groups.values()):  # rnns.0, rnns.1, ...: one layer each
        order = sorted(groups, key=lambda p: [int(n) for n in re.findall(r"\d+", p)])
        return [groups[p][0] for p in order]
    raise _fail(f"several RNN modules ({', '.join(sorted(groups))}); pass --rnn PREFIX", tensors)


def _cell(layers: list[dict[str, str]], tensors: dict, rnn_type: str | None) -> dict:
    """Type and sizes from the shapes, checked layer against layer."""
    first = layers[0]
    for k, layer in enumerate(layers):
        for need in ("weight_ih", "weight_hh"):
            if need not in layer:
                raise _fail(f"RNN layer {k} has no {need}_l{k}", tensors)
        if ("bias_ih" in layer) != ("bias_hh" in layer) or ("bias_ih" in layer) != ("bias_ih" in first):
            raise _fail(f"RNN layer {k} has one of bias_ih/bias_hh but not the other, or differs from layer 0", tensors)
    w_ih, w_hh = tensors[first["weight_ih"]], tensors[first["weight_hh"]]
    P = tensors[first["weight_hr"]].shape[0] if "weight_hr" in first else 0
    H = tensors[first["weight_hr"]].shape[1] if P else w_hh.shape[1]
    gates = w_ih.shape[0] // H if H and w_ih.shape[0] % H == 0 else 0
    found = {4: "lstm", 3: "gru"}.get(gates)
    if found is None or (P and found != "lstm"):
        raise _fail(f"{first['weight_ih']} has {w_ih.shape[0]} rows for hidden size {H}: neither an LSTM (4 gates) nor a GRU (3)", tensors)
    if rnn_type is not None and rnn_type != found:
        raise _fail(f"--type {rnn_type}, but the shapes are a {found.upper()}'s ({gates} gates of {H})", tensors)
    Ho = P or H
    for k, layer in enumerate(layers):
        want = {"weight_ih": [gates * H, w_ih.shape[1] if k == 0 else Ho], "weight_hh": [gates * H, Ho], "bias_ih": [gates * H],
                "bias_hh": [gates * H], "weight_hr": [P, H]}
        for kind, name in layer.items():
            if list(tensors[name].shape) != want[kind]:
                raise _fail(f"{name} has shape {list(tensors[name].shape)}, expected {want[kind]} (sizes differ between layers?)", tensors)
        if ("weight_hr" in layer) != bool(P):
            raise _fail(f"RNN layer {k}: weight_hr present in some layers only", tensors)
    return {"type": found, "E": w_ih.shape[1], "H": H, "P": P, "Ho": Ho, "bias": "bias_ih" in first}


def _strip(name: str | None) -> str | None:
    return None if name is None else name.removesuffix(".weight")


def _biased(tensors: dict, module: str) -> bool:
    w, b = tensors.get(f"{module}.weight"), tensors.get(f"{module}.bias")
    return w is not None and b is not None and b.dim() == 1 and b.shape[0] == w.shape[0]


def _embedding(tensors: dict, rest: set[str], E: int, given: str | None) -> str:
    if given is not None:
        if f"{_strip(given)}.weight" not in tensors:
            raise _fail(f"--embedding {given!r}: no tensor {_strip(given)}.weight", tensors)
        return _strip(given)
    cands = [_strip(n) for n in sorted(rest) if n.endswith(".weight") and tensors[n].dim() == 2 and tensors[n].shape[1] == E
             and not _biased(tensors, _strip(n))]
    if len(cands) > 1 and all(torch.equal(tensors[f"{c}.weight"], tensors[f"{cands[0]}.weight"]) for c in cands):
        cands = cands[:1]  # a tied, bias-free head: the same table twice, either name is the embedding
    if len(cands) != 1:
        what = "no" if not cands else f"{len(cands)} ({', '.join(cands)})"
        raise _fail(f"{what} candidates for the embedding ([V, {E}] with no bias); pass --embedding NAME", tensors)
    return cands[0]


def _head(tensors: dict, rest: set[str], emb: str, V: int, Ho: int, E: int, given: str | None) -> tuple[str | None, str]:
    """(proj or None, head): the Linear(s) after the RNN."""
    linears = {_strip(n) for n in rest if n.endswith(".weight") and tensors[n].dim() == 2}
    if given is not None:
        head = _strip(given)
        if f"{head}.weight" not in tensors or tensors[f"{head}.weight"].shape[0] != V:
            raise _fail(f"--head {given!r}: no [{V}, *] weight {head}.weight", tensors)
    else:
        heads = sorted(n for n in linears - {emb} if tensors[f"{n}.weight"].shape[0] == V)
        if len(heads) != 1:
            what = "no" if not heads else f"{len(heads)} ({', '.join(heads)})"
            raise _fail(f"{what} candidates for the head ([{V}, *] after the RNN); pass --head NAME (the embedding's name for a tied head)", tensors)
        head = heads[0]
    width = tensors[f"{head}.weight"].shape[1]
    if width == Ho:
        return None, head
    projs = sorted(n for n in linears - {emb, head} if list(tensors[f"{n}.weight"].shape) == [width, Ho] and _biased(tensors, n))
    if width != E or len(projs) != 1:
        raise _fail(f"head {head} reads {width} features but the RNN outputs {Ho}, and no single biased [{width}, {Ho}] "
                    f"projection with {width} == embedding size {E} bridges them", tensors)
    return projs[0], head


def convert(tensors: dict, embedding: str | None = None, rnn: str | None = None, head: str | None = None, rnn_type: str | None = None):
    """Map a torch.nn.LSTM/GRU LM state dict onto the lstm/gru adapter; see the module docstring."""
    from . import Converted

    tensors = {k: v for k, v in tensors.items() if isinstance(v, torch.Tensor)}
    layers = _layers(tensors, rnn)
    c = _cell(layers, tensors, rnn_type)
    used = {n for layer in layers for n in layer.values()}
    used |= {n.removesuffix("_raw") for n in used} | {n + "_raw" for n in used}  # WeightDrop keeps both copies
    rest = set(tensors) - used
    emb = _embedding(tensors, rest, c["E"], embedding)
    V = tensors[f"{emb}.weight"].shape[0]
    proj, hd = _head(tensors, rest, emb, V, c["Ho"], c["E"], head)
    head_bias = _biased(tensors, hd)
    tied = hd == emb or torch.equal(tensors[f"{hd}.weight"], tensors[f"{emb}.weight"])
    mine = {"embed.weight": f"{emb}.weight", "lm_head.weight": f"{hd}.weight"}
    mine |= {"lm_head.bias": f"{hd}.bias"} if head_bias else {}
    mine |= {"proj.weight": f"{proj}.weight", "proj.bias": f"{proj}.bias"} if proj else {}
    ours = {"weight_ih": "ih.weight", "weight_hh": "hh.weight", "bias_ih": "ih.bias", "bias_hh": "hh.bias", "weight_hr": "hr.weight"}
    for k, layer in enumerate(layers):
        mine |= {f"layers.{k}.{ours[kind]}": name for kind, name in layer.items()}
    left = rest - set(mine.values()) - {f"{emb}.weight"}
    if left:
        raise _fail(f"tensors that a {c['type'].upper()} LM has no place for: {', '.join(sorted(left)[:5])}", tensors)
    if tied:
        del mine["lm_head.weight"]
    config = {"model_type": c["type"], "vocab_size": V, "embed_size": c["E"], "hidden_size": c["H"], "num_layers": len(layers),
              "rnn_bias": c["bias"], "output_proj": proj is not None, "head_bias": head_bias, "tie_word_embeddings": tied}
    config |= {"proj_size": c["P"]} if c["P"] else {}
    mapping = [f"embedding  {emb}.weight {list(tensors[f'{emb}.weight'].shape)} -> embed.weight",
               f"rnn        {len(layers)} x {c['type'].upper()} (hidden {c['H']}" + (f", proj_size {c['P']}" if c["P"] else "")
               + f", bias {c['bias']}): {', '.join(sorted({n.rsplit('.', 1)[0] if '.' in n else '' for l_ in layers for n in l_.values()}))} -> layers.{{k}}.ih/hh"
               + ("/hr" if c["P"] else "")]
    mapping += [f"proj       {proj}.weight + bias -> proj"] if proj else []
    mapping += [f"head       {hd}.weight" + (" + bias" if head_bias else "") + " -> lm_head" + (" (tied to the embedding)" if tied else "")]
    return Converted(config, {ours_name: tensors[src] for ours_name, src in mine.items()}, mapping)
