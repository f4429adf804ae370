"""Block-sequential execution: every stage that needs activations runs the model one block at a time.

As in the GPTQ paper (section 4, "layer-wise") and llm-compressor's sequential pipeline: the
stream entering block i is cached for every calibration batch, block i alone is replayed over
that cache as often as the stage needs (GPTQ: once per Linear, each after the previous one was
quantized), and the *processed* block's outputs become block i+1's cache. The cost is O(layers)
block passes instead of one whole-model pass per Linear, and the memory is the cache plus one
block's work, whatever the depth.

The stages come from the model's staged contract (``stem`` / ``block`` / ``tail``, with
``ArchSpec.layer_stack`` and ``state_slices``), never from a per-architecture branch. The tail
stage stops at the head's input: no stage needs the [tokens, vocab] logits.

Glossary: stage = one layer_stack block, or the tail; cache = the stream x [B,T,D] entering the
current stage, one tensor per batch; hooks = functions called with the input of named modules
(Linears, taps) while a stage runs; segment = how many positions one call of the block sees,
its state carried between calls (calibration samples the state every ``state_every``).
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from tqdm import tqdm

from ..heap import trim_heap


@dataclass(frozen=True)
class Stage:
    index: int  # the block number; len(layer_stack) for the tail
    prefix: str  # the block's module path; "" for the tail
    states: slice  # its share of the state tuple (empty for the tail)
    others: tuple[str, ...] = ()  # every block's prefix (the tail owns what none of them does)

    @property
    def is_tail(self) -> bool:
        return not self.prefix

    def owns(self, name: str) -> bool:
        """Whether module ``name`` runs inside this stage."""
        if self.is_tail:
            return not any(name.startswith(p + ".") for p in self.others)
        return name.startswith(self.prefix + ".")

    def select(self, names) -> list[str]:
        return [n for n in names if self.owns(n)]


class _Reached(Exception):
    """Raised once a stage has run as far as its caller needs: the tail stage never computes
    logits, and a probe of one Linear need not run the rest of the block."""


class Blockwise:
    """The calibration batches' stream, advanced one stage at a time.

    ``segment``: positions per block call (None: the whole sequence at once). ``replay_s``: the
    seconds spent replaying blocks (hooks included: statistics, Hessians); the rest of a stage's
    time is what its caller does between replays (per-Linear solves, clip search, pruning).
    """

    def __init__(self, model, batches: list[torch.Tensor], segment: int | None = None):
        self.model, self.segment = model, segment
        self.spec = model.arch_spec()
        with torch.no_grad():
            self.cache = [model.stem(b) for b in batches]  # [B,T,D] per batch
        self.peak_cache_bytes = self.cache_bytes()
        self.replay_s = 0.0

    def cache_bytes(self) -> int:
        return sum(x.numel() * x.element_size() for x in self.cache)

    def stages(self, desc: str | None = None) -> Iterator[Stage]:
        """The blocks in order, then the tail (with a tqdm bar and ETA per block when ``desc``)."""
        stack = tuple(self.spec.layer_stack)
        all_stages = [Stage(i, p, s, stack) for i, (p, s) in enumerate(zip(stack, self.spec.state_slices(), strict=True))]
        all_stages.append(Stage(len(stack), "", slice(0, 0), stack))
        t0, replayed = time.perf_counter(), self.replay_s
        for stage in tqdm(all_stages, desc=desc, unit="block", disable=desc is None):
            yield stage
            trim_heap()
        if desc is not None:  # the time targets are for the replays; the solves are reported beside them
            total, replay = time.perf_counter() - t0, self.replay_s - replayed
            tqdm.write(f"{desc}: {total:.1f} s over {len(stack)} blocks: {replay:.1f} s replaying them over the calibration batches "
                       f"(statistics and Hessians included), {total - replay:.1f} s between replays (per-Linear solves)", file=sys.stderr)

    def exit_linear(self, stage: Stage) -> str | None:
        """L when the adapter declares the block's output as R's input + L(L's input) (``ArchSpec.block_exits``)."""
        exit_ = self.spec.block_exits.get(stage.prefix)
        return exit_[1] if exit_ else None

    @torch.no_grad()
    def run(self, stage: Stage, hooks: dict[str, Callable[[torch.Tensor], None]] | None = None,
            on_state: Callable[[tuple], None] | None = None, advance: bool = False, until: str | None = None,
            keep_exit: bool = False) -> dict[str, list[torch.Tensor]] | None:
        """Replay ``stage`` over every cached batch. ``hooks[name](x)`` gets each input of module
        ``name``; ``on_state(states)`` the stage's states after each segment; with ``advance`` the
        outputs replace the cache (the next stage's inputs). ``until``: a hooked module after whose
        input nothing is needed; the block call stops there when the model runs each module once
        per call (``parallel_prefill``: no loop over time), else it runs to the end. ``keep_exit``:
        return the inputs of the block's declared exit (R, L) over the batches, for ``advance``
        (they cost L's input width per cached position: twice the cache at Mamba's d_inner = 2 d_model);
        None where the block declares none."""
        assert not (until and (advance or self.segment)), "a stage cut short has no outputs, and carries no state to a next segment"
        hooks, kept = dict(hooks or {}), None
        if keep_exit and stage.prefix in self.spec.block_exits and not self.segment:
            kept = {m: [] for m in self.spec.block_exits[stage.prefix]}
            for m, inputs in kept.items():
                hooks[m] = self._keeping(inputs, hooks.get(m))
        t0 = time.perf_counter()
        try:
            self._run(stage, hooks, on_state, advance, until)
        finally:
            self.replay_s += time.perf_counter() - t0
        return kept

    @staticmethod
    def _keeping(inputs: list, then: Callable | None) -> Callable:
        def keep(x):
            inputs.append(x)
            if then is not None:
                then(x)
        return keep

    @torch.no_grad()
    def advance(self, stage: Stage, kept: dict[str, list[torch.Tensor]] | None = None) -> None:
        """The cache becomes ``stage``'s outputs: R's input + L(L's input) from ``kept`` (what
        ``run(stage, keep_exit=True)`` returned), with L as it is now (GPTQ: quantized), which is the
        block's output bit for bit (the contract suite checks each declaration); else a replay."""
        if kept is None or any(len(v) != len(self.cache) for v in kept.values()):
            return self.run(stage, advance=True)  # no declared exit, or a module ran more than once per block call
        (res, lin), inputs = self.spec.block_exits[stage.prefix], kept
        t0, L = time.perf_counter(), self.model.get_submodule(lin)
        for k in range(len(self.cache)):
            self.cache[k] = inputs[res][k] + L(inputs[lin][k])
            inputs[res][k] = inputs[lin][k] = None  # each batch's inputs go as soon as its output is made
        self.peak_cache_bytes = max(self.peak_cache_bytes, self.cache_bytes())
        self.replay_s += time.perf_counter() - t0

    def _run(self, stage: Stage, hooks: dict, on_state, advance: bool, until: str | None) -> None:
        fired = dict.fromkeys(hooks, False)
        handles = []
        stop_at = until if self.model.parallel_prefill else None
        for name, fn in hooks.items():
            def pre(mod, args, name=name, fn=fn):
                fired[name] = True
                fn(args[0])
                if name == stop_at:
                    raise _Reached
            handles.append(self.model.get_submodule(name).register_forward_pre_hook(pre))
        if stage.is_tail:
            handles.append(self.model.get_submodule(self.spec.head).register_forward_pre_hook(self._stop))
        try:
            for k, x in enumerate(self.cache):
                try:
                    out = self.model.tail(x) if stage.is_tail else self._block(stage, x, on_state)
                except _Reached:
                    continue
                if advance and not stage.is_tail:
                    self.cache[k] = out
            self.peak_cache_bytes = max(self.peak_cache_bytes, self.cache_bytes())
        finally:
            for h in handles:
                h.remove()
        silent = [n for n, f in fired.items() if not f]
        if silent and self.cache:
            raise RuntimeError(f"{silent[0]} did not run in stage {stage.prefix or 'tail'}: the adapter's layer_stack or staged pieces disagree with its ArchSpec")

    @staticmethod
    def _stop(mod, args):
        raise _Reached

    def _block(self, stage: Stage, x: torch.Tensor, on_state) -> torch.Tensor:
        state = tuple(s.initial(x.shape[0]) for s in self.spec.states[stage.states])
        outs = []
        for seg in x.split(self.segment, dim=1) if self.segment else (x,):
            y, state = self.model.block(stage.index, seg, state)
            outs.append(y)
            if on_state is not None:
                on_state(state)
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
