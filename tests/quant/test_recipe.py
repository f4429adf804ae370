"""Recipes: JSON/YAML round trip, presets valid, bad fields named in one line."""
from __future__ import annotations

import json

import pytest
import yaml

from rnnquant.errors import RnnquantError
from rnnquant.models import build
from rnnquant.quant import PRESETS, Recipe, load_recipe, quantize
from tests.conftest import tiny_model


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip(tmp_path, name):
    r = PRESETS[name]
    r.validate()
    (tmp_path / "r.json").write_text(r.to_json())
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(r.to_dict()))
    assert load_recipe(str(tmp_path / "r.json")) == r
    assert load_recipe(str(tmp_path / "r.yaml")) == r


@pytest.mark.parametrize(
    "patch, match",
    [
        ({"rules": [{"w_bits": 3}]}, "field 'w_bits' must be 4, 8 or null, got 3"),
        ({"rules": [{"group_size": 48}]}, "field 'group_size'"),
        ({"rules": [{"a_mode": "sometimes"}]}, "field 'a_mode'"),
        ({"rules": [{"colour": "red"}]}, "unknown field 'colour'"),
        ({"smooth_alpha": 2}, "field 'smooth_alpha'"),
        ({"embedding_bits": 4}, "field 'embedding_bits' must be 8 or null, got 4"),
        ({"rules": []}, "field 'rules' must be a non-empty list"),
    ],
)
def test_bad_recipe_fields(tmp_path, patch, match):
    f = tmp_path / "bad.json"
    f.write_text(json.dumps({"name": "bad"} | patch))
    with pytest.raises(RnnquantError, match=match):
        load_recipe(str(f))


def test_unparseable_and_unknown(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("rules: [unclosed")
    with pytest.raises(RnnquantError, match="cannot parse recipe"):
        load_recipe(str(f))
    with pytest.raises(RnnquantError, match="unknown recipe 'w3a3'"):
        load_recipe("w3a3")


def test_recipe_must_fit_model():
    model = tiny_model("lstm")
    with pytest.raises(RnnquantError, match="'q_proj' is no known role and names no Linear"):
        quantize(model, Recipe.from_dict({"rules": [{"match": "q_proj"}]}))
    quantize(model, Recipe.from_dict({"rules": [{"match": "in_proj"}, {"match": "*"}]}))  # a known role this model lacks: fine
    odd = build({"model_type": "lstm", "vocab_size": 4096, "embed_size": 48, "hidden_size": 32, "num_layers": 1})
    with pytest.raises(RnnquantError, match="group_size 32 does not divide layers.0.ih's 48 input features"):
        quantize(odd, Recipe.from_dict({"name": "g", "rules": [{"w_bits": 4, "w_granularity": "group", "group_size": 32}]}))


def test_static_recipe_needs_calibration():
    with pytest.raises(RnnquantError, match="needs calibration statistics"):
        quantize(tiny_model("gru"), PRESETS["w8a8-naive"])


def test_adapters_use_their_declared_roles():
    from tests.conftest import CONTRACT

    for arch in CONTRACT:
        m = tiny_model(arch)
        assert set(m.arch_spec().linears.values()) <= type(m).roles, arch


def test_4bit_presets_fit_mamba_130m_dt_rank():
    """mamba-130m's dt_proj reads dt_rank = 48 inputs: not a multiple of 32."""
    m = build({"model_type": "mamba", "vocab_size": 64, "hidden_size": 768, "num_hidden_layers": 1, "state_size": 4})
    q = quantize(m, PRESETS["w4a16-rtn"])
    assert q.backbone.layers[0].mixer.dt_proj.qweight.group_size == 16
