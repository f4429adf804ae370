"""Checkpoint writing (``rnnquant.io``)."""
from __future__ import annotations

import torch
from safetensors.torch import load_file, save_file

from rnnquant.io import _unshared


def test_saving_copies_only_tensors_that_share_storage(tmp_path):
    """A saved model is written from its own tensors (a copy of each held the model twice: 11.5 GB
    for `prune` at mamba-1.4b shape); only a tensor sharing storage with an earlier one, which
    safetensors refuses, is copied."""
    a, c = torch.randn(4, 4), torch.randn(3)
    state = _unshared({"a": a, "b": a[1:], "c": c, "t": a.t()})
    assert state["a"].data_ptr() == a.data_ptr() and state["c"].data_ptr() == c.data_ptr()
    assert state["b"].data_ptr() != a.data_ptr() and torch.equal(state["b"], a[1:])
    assert state["t"].is_contiguous() and torch.equal(state["t"], a.t())
    save_file(state, str(tmp_path / "m.safetensors"))
    assert all(torch.equal(v, state[k]) for k, v in load_file(str(tmp_path / "m.safetensors")).items())
