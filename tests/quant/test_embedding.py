"""The token embedding under quantization: tied, it gathers the head's codes; a table of its own
(untied) becomes per-row int8 codes, stored, sized and reloaded as such."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from rnnquant.models import fingerprint
from rnnquant.quant import PRESETS, Recipe, quantize, save_quantized, size_bytes
from rnnquant.quant.qlinear import QEmbedding
from rnnquant.quant.recipe import Rule
from rnnquant.quant.serialize import load_quantized
from tests.conftest import TOKENIZER, tiny_model

UNTIED = ["lstm-untied", "xlstm", "rwkv7"]


def _model(arch):
    m = tiny_model(arch)
    m.provenance = m.provenance.derive(fingerprint=fingerprint(m))
    return m


def _embedding(m):
    return m.get_submodule(m.arch_spec().embedding)


@pytest.mark.parametrize("arch", UNTIED)
@pytest.mark.parametrize("preset", ["w8a8-dynamic", "w4a16-rtn"])
def test_an_untied_table_becomes_int8_rows(arch, preset):
    """Every row within half its own step of the float row, on a symmetric int8 grid."""
    m = _model(arch)
    assert not m.tied_head_key()
    e = _embedding(quantize(m, PRESETS[preset]))
    assert isinstance(e, QEmbedding) and e.owned
    qw, w = e.table.qweight, _embedding(m).weight
    assert qw.q.dtype == torch.int8 and qw.bits == 8 and qw.scale.shape == (w.shape[0], 1)
    ids = torch.arange(w.shape[0])
    assert ((e(ids) - w).abs() <= qw.scale / 2 + 1e-7).all()


@pytest.mark.parametrize("arch", UNTIED)
def test_embedding_bits_null_keeps_the_float_table(arch):
    m = _model(arch)
    e = _embedding(quantize(m, replace(PRESETS["w8a8-dynamic"], embedding_bits=None)))
    assert isinstance(e, torch.nn.Embedding) and torch.equal(e.weight, _embedding(m).weight)


def test_a_tied_float_head_keeps_the_table_it_shares():
    """A recipe that leaves the head float leaves its table (the embedding's) float and tied."""
    m = _model("mamba")
    q = quantize(m, Recipe("body-only", [Rule(match="lm_head", w_bits=None), Rule()]))
    head, e = q.get_submodule(q.arch_spec().head), _embedding(q)
    assert isinstance(e, torch.nn.Embedding) and head.weight is e.weight


@torch.no_grad()
@pytest.mark.parametrize("arch", UNTIED)
def test_an_int8_table_is_stored_as_int8_and_reloads(tmp_path, arch):
    m = _model(arch)
    q = quantize(m, PRESETS["w8a8-dynamic"])
    table = _embedding(m).weight.numel()
    assert size_bytes(quantize(m, replace(PRESETS["w8a8-dynamic"], embedding_bits=None))) - size_bytes(q) == table * 3 - 4 * table // _embedding(m).weight.shape[1]
    save_quantized(q, tmp_path / "q", TOKENIZER)
    r = load_quantized(tmp_path / "q")
    assert isinstance(_embedding(r), QEmbedding) and _embedding(r).owned
    ids = torch.arange(24).view(2, 12)
    assert torch.equal(r(ids), q(ids))
