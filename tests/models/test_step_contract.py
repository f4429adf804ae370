"""The step contract: step == forward at every position, prefill in halves, O(1) work per token."""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from rnnquant.artifacts import load
from tests.conftest import tiny_model
from tests.helpers import assert_export_form_matches_forward

T = 64


def _stepped(model, ids):
    state, out = model.init_state(ids.shape[0]), []
    for t in range(ids.shape[1]):
        logits, state = model.step(ids[:, t], state)
        out.append(logits)
    return torch.stack(out, 1), state


@torch.no_grad()
def test_step_equals_forward(any_arch):
    model = tiny_model(any_arch)
    ids = torch.randint(0, model.vocab_size, (3, T), generator=torch.Generator().manual_seed(1))
    stepped, _ = _stepped(model, ids)
    assert (stepped - model(ids)).abs().max() <= 1e-4


@torch.no_grad()
def test_prefill_in_halves_equals_forward(any_arch):
    model = tiny_model(any_arch)
    ids = torch.randint(0, model.vocab_size, (2, T), generator=torch.Generator().manual_seed(2))
    a, state = model.forward_with_state(ids[:, :27], model.init_state(2))
    b, state = model.forward_with_state(ids[:, 27:], state)
    assert (torch.cat([a, b], 1) - model(ids)).abs().max() <= 1e-4
    _, stepped_state = _stepped(model, ids)
    for s, r in zip(state, stepped_state, strict=True):
        assert (s - r).abs().max() <= 1e-4


@torch.no_grad()
def test_export_form_equals_forward_for_the_longest_call(any_arch, monkeypatch):
    """An adapter with a parallel prefill traces another form of its scan under export (no loop
    over time, a fixed number of doublings): at the most tokens one call may take (up to 256), from
    a non-zero state, it gives the eager forward's logits and state."""
    model = tiny_model(any_arch)
    if not model.parallel_prefill:
        pytest.skip("the prefill graph is a Loop over the step graph")
    n = min(model.prefill_max_tokens, 256)
    ids = torch.randint(0, model.vocab_size, (2, 7 + n), generator=torch.Generator().manual_seed(4))
    _, state = model.forward_with_state(ids[:, :7], model.init_state(2))
    assert_export_form_matches_forward(monkeypatch, model, ids[:, 7:], state)


@torch.no_grad()
def test_prefill_state_owns_its_memory(any_arch):
    """A state that is a view of a whole-sequence tensor keeps that tensor alive (GBs at real size)."""
    model = tiny_model(any_arch)
    ids = torch.randint(0, model.vocab_size, (2, T), generator=torch.Generator().manual_seed(3))
    _, state = model.forward_with_state(ids, model.init_state(2))
    for spec, s in zip(model.arch_spec().states, state, strict=True):
        assert s.untyped_storage().nbytes() == s.numel() * s.element_size(), spec.name


@torch.no_grad()
def test_step_is_pure(any_arch):
    """No in-place update: the input state is untouched, and the state shapes and dtypes are fixed
    (an integer state, RecurrentGemma's position count, stays integer)."""
    model = tiny_model(any_arch)
    state = tuple(torch.randn_like(s) if s.is_floating_point() else torch.randint_like(s, 0, 100) for s in model.init_state(2))
    before = [s.clone() for s in state]
    _, new = model.step(torch.tensor([5, 7]), state)
    assert all(torch.equal(a, b) for a, b in zip(state, before))
    assert [(s.shape, s.dtype) for s in new] == [(s.shape, s.dtype) for s in state]
    assert [s.shape[1:] for s in state] == [spec.shape for spec in model.arch_spec().states]


class _OpLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        shapes = [tuple(o.shape) for o in (out if isinstance(out, (tuple, list)) else [out]) if isinstance(o, torch.Tensor)]
        self.ops.append((str(func), shapes))
        return out


@torch.no_grad()
def test_step_work_does_not_grow_with_position(any_arch):
    """The same aten ops on the same shapes at position 1 and position 300 (counted, not timed)."""
    model = tiny_model(any_arch)
    state = model.init_state(1)
    logs = {}
    for t in range(301):
        if t in (1, 300):
            with _OpLog() as log:
                _, state = model.step(torch.tensor([t % 50]), state)
            logs[t] = log.ops
        else:
            _, state = model.step(torch.tensor([t % 50]), state)
    assert len(logs[1]) > 10
    assert logs[1] == logs[300]


@torch.no_grad()
def test_saved_model_round_trips(tiny_dir):
    model = load(tiny_dir)
    ids = torch.randint(0, 100, (1, 16))
    ref = tiny_model(model.model_type)
    assert torch.equal(model(ids), ref(ids))
    assert len(model.provenance.fingerprint) == 64
