"""The step contract every recurrent LM in rnnquant implements, and the data an adapter declares.

A model is a pure function of (tokens, state):

    init_state(batch)               -> state            a flat tuple of tensors
    step(ids[B], state)             -> (logits[B,V], state')   constant work per token
    forward(ids[B,T])               -> logits[B,T,V]     the parallel twin of ``step``
    forward_with_state(ids, state)  -> (logits[B,T,V], state')  prefill
    forward_with_state(ids, state, last_only=True) -> (logits[B,V], state')  the head on the last position only

``forward_with_state`` is the composition of three staged pieces, which is also how the
block-by-block engine (``rnnquant.calibrate.engine``) runs a model one block at a time:

    stem(ids[B,T])               -> x[B,T,D]        the stream before block 0
    block(i, x, state_i)         -> (x', state_i')  block i (``ArchSpec.layer_stack[i]``) on its own states
    tail(x)                      -> logits          everything after the last block (final norm, head)

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
    block: int = 0  # the layer_stack block that owns it (a block's states are contiguous, blocks in order)

    def initial(self, batch_size: int) -> torch.Tensor:
        return torch.full((batch_size, *self.shape), self.init, dtype=self.dtype)


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
    same_in_every_layer: bool = False  # one choice of channels for all layers (RWKV-7's heads: every layer reads layer 0's v_first per head)


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
    num_layers_key: str = "num_hidden_layers"  # the config field that counts the blocks of layer_stack
    fixed_blocks: list[int] = field(default_factory=list)  # blocks layer removal keeps (ones with parameters no other block has)
    layer_pattern_keys: list[str] = field(default_factory=list)  # config lists cycled over the blocks (block i: entry i % len)
    # block -> (R, L): the block's output is R's input (the residual stream) + L(L's input), L the
    # block's last Linear, each module run once per block call. GPTQ then takes a block's outputs
    # from what its last probe replay saw, instead of replaying the block once more.
    block_exits: dict[str, tuple[str, str]] = field(default_factory=dict)
    prune_dense: list[str] = field(default_factory=list)  # declared Linears unstructured pruning leaves dense

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
        need(set(self.prune_dense) <= set(self.linears), "a prune_dense Linear is not a declared linear")
        for name in self.taps:
            need(isinstance(mods.get(name), Tap), f"tap {name!r} is not a Tap")
        for name in self.float_params:
            need(name in params, f"float parameter {name!r} does not exist")
        need(isinstance(mods.get(self.embedding), nn.Embedding), f"embedding {self.embedding!r} is not an nn.Embedding")
        need(self.head in self.linears, f"head {self.head!r} is not a declared linear")
        need(all(b in mods for b in self.layer_stack), "a layer_stack block does not exist")
        need([s.block for s in self.states] == sorted(s.block for s in self.states) and all(0 <= s.block < len(self.layer_stack) for s in self.states),
             "states must be grouped by block, blocks in layer_stack order")
        need(model.config.get(self.num_layers_key) == len(self.layer_stack), f"config[{self.num_layers_key!r}] is not the number of blocks")
        for block, (res, lin) in self.block_exits.items():
            need(block in self.layer_stack and res in mods and res.startswith(block + ".") and lin in self.linears and lin.startswith(block + "."),
                 f"block exit of {block!r}: {res!r} and {lin!r} must be a module and a declared linear of that block")
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

    def state_slices(self) -> list[slice]:
        """Block i's share of the flat state tuple: ``state[state_slices()[i]]``."""
        bounds = [0] * (len(self.layer_stack) + 1)
        for s in self.states:
            bounds[s.block + 1] += 1
        for i in range(len(self.layer_stack)):
            bounds[i + 1] += bounds[i]
        return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


def _owning(t: torch.Tensor) -> torch.Tensor:
    """``t``, copied when it is a view into a larger tensor. A block's new state is often a slice of
    a whole-sequence tensor (the last K-1 conv inputs, the last token of a shift), and a view keeps
    all of that tensor alive: 48 layers x [8, 515, 4096] fp32 conv inputs held 3.2 GB at mamba-1.4b
    shape until the forward returned. Not under tracing: a traced graph's outputs own nothing."""
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return t
    return t.clone() if t.untyped_storage().nbytes() > t.numel() * t.element_size() else t


class RecurrentLM(nn.Module):
    """Base class: subclasses set ``model_type`` and implement ``step``, ``arch_spec`` and the staged
    pieces ``stem`` / ``block`` / ``tail``."""

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
        return tuple(s.initial(batch_size) for s in self.arch_spec().states)

    def step(self, input_ids: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        raise NotImplementedError

    def forward_with_state(self, input_ids: torch.Tensor, state: State, last_only: bool = False) -> tuple[torch.Tensor, State]:
        x, new_state = self.stream_with_state(input_ids, state)
        x = x[:, -1] if last_only else x  # [B,D]: the head (vocab x d_model per position) only where sampling needs it
        return self.tail(x), new_state

    def stream_with_state(self, input_ids: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """ids [B,T] -> (the stream after the last block [B,T,D], the state after T tokens): everything
        but ``tail``, which works position by position (callers may apply it a slice of positions at a time)."""
        x = self.stem(input_ids)  # [B,T,D]
        new_state: list[torch.Tensor] = []
        for i, part in enumerate(self._state_slices()):
            x, s = self.block(i, x, state[part])
            new_state += map(_owning, s)
        return x, tuple(new_state)

    # --- the staged pieces forward_with_state is made of ---------------------
    def stem(self, input_ids: torch.Tensor) -> torch.Tensor:
        """ids [B,T] -> the stream before block 0, x [B,T,D]."""
        raise NotImplementedError

    def block(self, i: int, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """Block i on x [B,T,D] and its own states (``ArchSpec.state_slices()[i]``) -> (x', states')."""
        raise NotImplementedError

    def tail(self, x: torch.Tensor) -> torch.Tensor:
        """The stream after the last block, x [..., D] -> logits [..., V], each position on its own."""
        raise NotImplementedError

    def _state_slices(self) -> list[slice]:
        if "_slices" not in self.__dict__:  # the spec is fixed once the model is built
            self.__dict__["_slices"] = self.arch_spec().state_slices()
        return self.__dict__["_slices"]

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
