"""Fuzzing every parser rnnquant owns (hypothesis): config.json, calib.json + safetensors header,
recipe JSON/YAML, prune specs and config files, ONNX metadata. Any input must give a model/object or an RnnquantError, never
another exception. CI runs a short smoke; `make fuzz` runs longer (RNNQUANT_FUZZ_EXAMPLES)."""
from __future__ import annotations

import json
import os
import struct

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rnnquant.errors import RnnquantError

EXAMPLES = int(os.environ.get("RNNQUANT_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)

json_values = st.recursive(st.none() | st.booleans() | st.integers(-10, 10**6) | st.floats(allow_nan=True) | st.text(max_size=8),
                           lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c, max_size=6), max_leaves=20)
small = st.none() | st.booleans() | st.floats(allow_nan=True) | st.text(max_size=4)  # never a huge size: the fuzzer must not allocate GBs
config_like = st.fixed_dictionaries({}, optional={
    "model_type": st.sampled_from(["mamba", "mamba2", "falcon_mamba", "lstm", "gru", "llama", "", "MAMBA"]) | st.text(max_size=6),
    "vocab_size": st.integers(-5, 300) | small, "hidden_size": st.integers(-5, 64) | small,
    "num_hidden_layers": st.integers(-2, 3) | small, "num_layers": st.integers(-2, 3) | small,
    "state_size": st.integers(-2, 9) | small, "expand": st.integers(-1, 3) | small, "conv_kernel": st.integers(-1, 5) | small,
    "embed_size": st.integers(-1, 40) | small, "time_step_rank": st.integers(-1, 8) | st.just("auto") | small,
    "tie_word_embeddings": st.booleans() | json_values, "hidden_act": st.sampled_from(["silu", "gelu"]) | json_values,
    "num_heads": st.integers(-1, 8) | small, "head_dim": st.integers(-1, 16) | small, "n_groups": st.integers(-1, 4) | small,
    "time_step_limit": st.just([0.0, {"__float__": "Infinity"}]) | json_values, "mixer_rms_eps": small,
    "proj_size": st.integers(-2, 40) | small, "output_proj": st.booleans() | json_values, "head_bias": st.booleans() | json_values,
    "rnn_bias": st.booleans() | json_values,
})


def _ok_or_error(fn, *args):
    try:
        fn(*args)
    except RnnquantError as e:
        assert str(e) and "\n" not in str(e)


@FUZZ
@given(cfg=config_like)
def test_fuzz_model_config(cfg):
    from rnnquant.models import build

    _ok_or_error(build, cfg)


@FUZZ
@given(raw=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()) | config_like.map(lambda c: json.dumps(c).encode()))
def test_fuzz_config_file(tmp_path_factory, raw):
    from rnnquant.models import _read_config

    d = tmp_path_factory.mktemp("cfg")
    (d / "config.json").write_bytes(raw)
    _ok_or_error(_read_config, d)


@FUZZ
@given(doc=json_values | st.fixed_dictionaries({"rules": st.lists(st.dictionaries(st.sampled_from(
    ["match", "w_bits", "w_granularity", "group_size", "w_symmetric", "w_method", "a_bits", "a_mode", "a_clip", "outliers", "colour"]),
    json_values, max_size=5), max_size=3)}, optional={"smooth_alpha": json_values, "hadamard": json_values, "name": json_values}),
    as_yaml=st.booleans())
def test_fuzz_recipe(tmp_path_factory, doc, as_yaml):
    from rnnquant.quant import load_recipe

    f = tmp_path_factory.mktemp("r") / ("r.yaml" if as_yaml else "r.json")
    f.write_text(yaml.safe_dump(doc) if as_yaml else json.dumps(doc))
    _ok_or_error(load_recipe, str(f))


prune_fields = st.sampled_from(["method", "sparsity", "nm", "layers", "include_lm_head", "profile", "owl_m", "owl_lambda",
                                "layer_sparsity", "config", "masked_sparsity_pct", "colour"])


@FUZZ
@given(doc=json_values | st.dictionaries(prune_fields, json_values, max_size=6), as_yaml=st.booleans(),
       spec=st.text(alphabet="magnitudewsprcylo:0.5124-", max_size=16))
def test_fuzz_prune_config(tmp_path_factory, doc, as_yaml, spec):
    from rnnquant.prune import parse_spec

    f = tmp_path_factory.mktemp("p") / ("p.yaml" if as_yaml else "p.json")
    f.write_text(yaml.safe_dump(doc) if as_yaml else json.dumps(doc))
    _ok_or_error(parse_spec, str(f))
    _ok_or_error(parse_spec, spec)


@FUZZ
@given(report=json_values | st.dictionaries(st.sampled_from(["origin", "origin_fingerprint", "spec", "config"]), json_values, max_size=4))
def test_fuzz_prune_report_beside_a_checkpoint(tmp_path_factory, report):
    """Whatever prune_report.json holds, the model loads (its origin a string or None) or one error line."""
    from rnnquant.io import save_checkpoint
    from rnnquant.artifacts import load
    from tests.conftest import TOKENIZER, tiny_model

    d = tmp_path_factory.mktemp("m")
    save_checkpoint(tiny_model("gru"), d, tokenizer_path=TOKENIZER)
    (d / "prune_report.json").write_text(json.dumps(report))
    try:
        m = load(d)
    except RnnquantError as e:
        assert "\n" not in str(e)
    else:
        assert all(v is None or isinstance(v, str) for v in (m.provenance.origin, m.provenance.origin_fingerprint))


@FUZZ
@given(meta=json_values, header=st.binary(max_size=120), hlen=st.integers(0, 2**40))
def test_fuzz_calibration_dir(tmp_path_factory, meta, header, hlen):
    from rnnquant.calibrate import load_calibration

    d = tmp_path_factory.mktemp("c")
    (d / "calib.json").write_text(json.dumps(meta))
    (d / "calib.safetensors").write_bytes(struct.pack("<Q", hlen) + header)
    _ok_or_error(load_calibration, d)


@FUZZ
@given(props=st.dictionaries(st.sampled_from(["graph", "architecture", "states", "vocab_size", "tokenizer_sha256", "recipe", "x"]),
                             st.text(max_size=30), max_size=7))
def test_fuzz_onnx_metadata(tmp_path_factory, props):
    import onnx
    from onnx import TensorProto, helper

    from rnnquant.exporters.runner import OrtLM

    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    m = helper.make_model(g)
    for k, v in props.items():
        m.metadata_props.add(key=k, value=v)
    f = tmp_path_factory.mktemp("o") / "m.onnx"
    onnx.save(m, f)
    _ok_or_error(OrtLM, f)
