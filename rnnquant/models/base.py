"""The step contract every recurrent LM in rnnquant implements, and the data an adapter declares.

A model is a pure function of (tokens, state):

    init_state(batch)               -> state            a flat tuple of tensors
    step(ids[B], state)             -> (logits[B,V], state')   constant work per token
    forward(ids[B,T])               -> logits[B,T,V]     the parallel twin of ``step``
    forward_with_state(ids, state)  -> (logits[B,T,V], state')  prefill
    forward_with_state(ids, state, last_only=True) -> (logits[B,V], state')  the head on the last position only

``step`` is what the ONNX exporter traces, so it never mutates its inputs and has no
data-dependent branches. Each adapter also declares, as plain data (``ArchSpec``), where
quantization may act: the Linears with their roles, the norm -> Linear smoothing pairs,
the rotation points, the activation taps and the parameters that must stay float.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .provenance import Provenance

State = tuple[torch.Tensor, ...]


class Tap(nn.Identity):
    """A named activation point (x after conv, dt, B, C, ...). Identity in the float model;
    calibration hooks it, quantization may replace it with an activation quantizer."""


@dataclass(frozen=True)
class StateSpec:
    name: str
    shape: tuple[int, ...]  # per batch element; the batch dimension is prepended
    dtype: torch.dtype = torch.float32
    channel_dim: int = 0  # the axis of ``shape`` that indexes channels (calibration statistics); the others are samples
    init: float = 0.0  # every element's value in ``init_state`` (RWKV-4's running max starts at -1e38, not 0)


@dataclass(frozen=True)
class ChannelLayer:
    """One layer's share of a prunable channel group.

    ``slices``: (parameter, dim, starts): channel c lives at index start + c along dim, for each
    start (e.g. Mamba's in_proj rows hold x at 0 and z at E: starts (0, E)). A start may be a pair
    (start, block): channel c is then the block of indices start + c * block ... + block - 1 (a
    head of Mamba-2 is head_dim rows of in_proj's z and x parts but one row of its dt part).
    ``block``: channels per scored unit; the score points' RMS (and weight norms) have
    ``block`` entries per channel, combined by their L2 norm.
    ``score_points`` / ``score_weight``: the calibration points whose per-channel RMS (multiplied),
    times the column norms of this weight if any, score each channel (Wanda-style: activation x
    outgoing weight; for Mamba's d_state: RMS of B_n x RMS of C_n, the state's write and read).
    ``compensate``: Linears that read the channel as an input column and have a bias. When channel
    c goes, its calibration mean moves into their bias, b += W[:, c] E[x_c] (FLAP's bias
    compensation: the best constant stands in for the removed input).
    """

    slices: list[tuple[str, int, tuple[int | tuple[int, int], ...]]]
    score_points: tuple[str, ...]
    score_weight: str | None
    compensate: tuple[str, ...] = ()
    block: int = 1


def slice_blocks(starts) -> list[tuple[int, int]]:
    """A ChannelLayer slice's starts as (start, block) pairs."""
    return [s if isinstance(s, tuple) else (s, 1) for s in starts]


@dataclass(frozen=True)
class ChannelGroup:
    config_key: str  # the config field that gives the group's width (e.g. intermediate_size)
    layers: list[ChannelLayer]
    scaled_keys: tuple[tuple[str, int], ...] = ()  # config fields that are a multiple of the width (Mamba-2: intermediate_size = heads x head_dim)


@dataclass(frozen=True)
class ArchSpec:
    """What an adapter declares about its architecture; every name is a module path."""

    linears: dict[str, str]  # quantizable nn.Linear -> role ("in_proj", "out_proj", "lm_head", ...)
    smoothing_pairs: list[tuple[str, list[str]]]  # (norm, Linears that read its output)
    rotation_points: list[str]  # Linears whose input may be Hadamard-rotated online
    taps: dict[str, str]  # Tap module -> role ("ssm_x", "ssm_dt", ...)
    float_params: list[str]  # parameters that stay float (A_log, D, dt bias, conv, norms, ...)
    states: list[StateSpec] = field(default_factory=list)
    embedding: str = ""  # the token embedding module (tied to the head when the config says so)
    head: str = "lm_head"  # the output Linear (vocabulary projection)
    channel_groups: dict[str, ChannelGroup] = field(default_factory=dict)  # structurally prunable widths
    layer_stack: list[str] = field(default_factory=list)  # the blocks, in order (a block that keeps the width is removable)
    layer_inputs: list[str] = field(default_factory=list)  # modules whose input is the stream before each block, then after the last
    num_layers_key: str = "num_hidden_layers"  # the config field that counts the blocks of layer_stack

    def check(self, model: nn.Module) -> None:
        """Every name resolves to the kind of thing it claims to be (raises ValueError naming the first
        that does not): a stage can then trust the declaration instead of guessing."""
        mods, params = dict(model.named_modules()), dict(model.named_parameters(remove_duplicate=False))

        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ValueError(f"{type(model).__name__}.arch_spec(): {what}")

        for name in self.linears:
            need(isinstance(mods.get(name), nn.Linear), f"linear {name!r} is not an nn.Linear")
        for norm, readers in self.smoothing_pairs:
            need(isinstance(getattr(mods.get(norm), "weight", None), nn.Parameter), f"smoothing norm {norm!r} has no weight")
            need(all(r in self.linears for r in readers), f"smoothing readers of {norm!r} are not all declared linears")
        need(set(self.rotation_points) <= set(self.linears), "a rotation point is not a declared linear")
        for name in self.taps:
            need(isinstance(mods.get(name), Tap), f"tap {name!r} is not a Tap")
        for name in self.float_params:
            need(name in params, f"float parameter {name!r} does not exist")
        need(isinstance(mods.get(self.embedding), nn.Embedding), f"embedding {self.embedding!r} is not an nn.Embedding")
        need(self.head in self.linears, f"head {self.head!r} is not a declared linear")
        need(all(b in mods for b in self.layer_stack), "a layer_stack block does not exist")
        need(len(self.layer_inputs) == len(self.layer_stack) + 1 and all(n in mods for n in self.layer_inputs),
             "layer_inputs must name one existing module per block, then one after the last")
        need(model.config.get(self.num_layers_key) == len(self.layer_stack), f"config[{self.num_layers_key!r}] is not the number of blocks")
        for gname, group in self.channel_groups.items():
            need(isinstance(model.config.get(group.config_key), int), f"channel group {gname!r}: no int config[{group.config_key!r}]")
            width = model.config[group.config_key]
            need(len(group.layers) == len(self.layer_stack), f"channel group {gname!r} must have one entry per block")
            for layer in group.layers:
                for param, dim, starts in layer.slices:
                    need(param in params and all(s + width * b <= params[param].shape[dim] for s, b in slice_blocks(starts)),
                         f"channel group {gname!r}: {param!r} has no {width} channels at {starts} along dim {dim}")
                need(not layer.compensate or layer.block == 1, f"channel group {gname!r}: compensation needs block 1")
                for lin in layer.compensate:
                    need(lin in self.linears and mods[lin].bias is not None, f"channel group {gname!r}: {lin!r} has no bias to compensate into")


class RecurrentLM(nn.Module):
    """Base class: subclasses set ``model_type`` and implement the four methods below."""

    model_type: str = ""
    # the roles this adapter gives its Linears (ArchSpec.linears values, checked by the contract suite);
    # a recipe may name any role of any registered adapter: a rule for a role the model lacks matches nothing
    roles: frozenset[str] = frozenset()
    # True when forward_with_state has no Python loop over time, so a trace of it is a prefill
    # graph for every sequence length (Mamba: chunked parallel scan); else the exporter's prefill
    # graph is an ONNX Loop over the step graph.
    parallel_prefill: bool = False
    prefill_max_tokens: int | None = None  # with parallel_prefill: the most tokens one prefill call is exact for
    # a foreign config layout to recognise when model_type is missing: (its keys, what to tell the user)
    foreign_layout: tuple[tuple[str, ...], str] = ((), "")

    def __init__(self, config: dict):
        super().__init__()
        self.config = dict(config)
        self.provenance = Provenance()

    # --- the contract -------------------------------------------------------
    def init_state(self, batch_size: int) -> State:
        return tuple(torch.full((batch_size, *s.shape), s.init, dtype=s.dtype) for s in self.arch_spec().states)

    def step(self, input_ids: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        raise NotImplementedError

    def forward_with_state(self, input_ids: torch.Tensor, state: State, last_only: bool = False) -> tuple[torch.Tensor, State]:
        raise NotImplementedError

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.forward_with_state(input_ids, self.init_state(input_ids.shape[0]))[0]

    def arch_spec(self) -> ArchSpec:
        raise NotImplementedError

    def tied_head_key(self) -> str | None:
        """The head's weight name when it is the embedding's table (stored once, under the embedding's name)."""
        return f"{self.arch_spec().head}.weight" if self.config.get("tie_word_embeddings") else None

    # --- conveniences -------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return int(self.config["vocab_size"])

    def num_parameters(self) -> int:
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())
