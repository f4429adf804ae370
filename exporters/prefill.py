"""The prefill graph: a whole prompt in one ONNX Runtime call.

    prompt_ids int64 [batch, seq] (dynamic seq) + state  ->  logits [batch, seq, vocab] + new state

Two forms, same inputs and outputs (metadata ``prefill`` says which):
- ``parallel`` (models with ``parallel_prefill``, i.e. Mamba): ``forward_with_state`` traced with
  a dynamic sequence axis, so every projection is one MatMul over all positions and the SSM runs
  the chunked parallel scan (``rnnquant.models.ssm.selective_scan_parallel``). One call takes at
  most ``prefill_max_tokens`` tokens; ``OrtLM.prefill`` feeds longer prompts in pieces.
- ``loop`` (LSTM/GRU, and graphs quantized by ONNX Runtime after export): built from the exported
  step graph, not from the model: an ONNX ``Loop`` whose body is the step graph itself (its
  weights stay single initializers in the outer graph), carrying the state and stacking the
  logits, with no Python between tokens.
"""
from __future__ import annotations

import json
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from rnnquant.errors import RnnquantError


# tokens per call the runner gives a parallel prefill graph: its memory is O(seq * d_inner * d_state),
# and 128-token calls were as fast as or faster than longer ones at a third of the peak RSS of
# 1,024 (benchmarks/prefill_window.py, docs/RESULTS.md)
PREFILL_WINDOW = 128


def prefill_path(step_path: Path) -> Path:
    return Path(step_path).with_suffix(".prefill.onnx")


def weights_path(step_path: Path) -> Path:
    """The weights of an export: ``<step>.onnx.data`` beside the step graph, shared by its prefill graph."""
    step_path = Path(step_path)
    return step_path.with_name(f"{step_path.name}.data")


def step_bytes(step_path: Path) -> int:
    """What running the step graph needs on disk: the graph and its weights file (an .ort, or a
    graph with its weights inside, is one file)."""
    return sum(f.stat().st_size for f in (Path(step_path), weights_path(step_path)) if f.is_file())


def parallel_prefill_metadata(model) -> dict[str, str]:
    """The adapter declares how many tokens one call of its parallel prefill is exact for."""
    return {"graph": "prefill", "prefill": "parallel", "prefill_max_tokens": str(model.prefill_max_tokens)}


def build_prefill(step: onnx.ModelProto, last_only: bool = False) -> onnx.ModelProto:
    g = step.graph
    states = json.loads({p.key: p.value for p in step.metadata_props}["states"])
    names = [s["name"] for s in states]
    step_inputs = [i.name for i in g.input]
    if step_inputs != ["input_ids", *names]:
        raise RnnquantError(f"unexpected step graph inputs {step_inputs}")
    # body: (iter, cond, *state) -> (cond, *new_state, logits); reads the outer "prompt_ids"
    body_nodes = [
        helper.make_node("Gather", ["prompt_ids", "iter"], ["input_ids"], axis=1, name="prefill_take_token"),
        *g.node,
        helper.make_node("Identity", ["cond_in"], ["cond_out"], name="prefill_cond"),
    ]
    state_vi = {vi.name: vi for vi in g.input}
    out_vi = {vi.name: vi for vi in g.output}
    body = helper.make_graph(
        body_nodes, "prefill_step",
        [helper.make_tensor_value_info("iter", TensorProto.INT64, []), helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         *[state_vi[n] for n in names]],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), *[out_vi[f"new_{n}"] for n in names], out_vi["logits"]],
    )
    outer = [
        helper.make_node("Shape", ["prompt_ids"], ["prompt_shape"]),
        helper.make_node("Gather", ["prompt_shape", "one"], ["seq_len"], axis=0),
        helper.make_node("Loop", ["seq_len", "true", *names], [*[f"new_{n}" for n in names], "logits_tbv"], body=body),
        helper.make_node("Gather", ["logits_tbv", "minus_one"], ["logits"], axis=0) if last_only  # [B, V]
        else helper.make_node("Transpose", ["logits_tbv"], ["logits"], perm=[1, 0, 2]),
    ]
    consts = [helper.make_tensor("one", TensorProto.INT64, [], [1]), helper.make_tensor("true", TensorProto.BOOL, [], [True]),
              *([helper.make_tensor("minus_one", TensorProto.INT64, [], [-1])] if last_only else [])]
    vocab = out_vi["logits"].type.tensor_type.shape.dim[1].dim_value or "vocab"
    graph = helper.make_graph(
        outer, "rnnquant_prefill",
        [helper.make_tensor_value_info("prompt_ids", TensorProto.INT64, ["batch", "seq"]), *[state_vi[n] for n in names]],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", vocab] if last_only else ["batch", "seq", vocab]),
         *[out_vi[f"new_{n}"] for n in names]],
        initializer=[*g.initializer, *consts],
    )
    model = helper.make_model(graph, opset_imports=list(step.opset_import), producer_name="rnnquant")
    model.ir_version = step.ir_version
    for p in step.metadata_props:
        model.metadata_props.add(key=p.key, value="prefill" if p.key == "graph" else p.value)
    model.metadata_props.add(key="prefill", value="loop")
    model.metadata_props.add(key="prefill_logits", value="last" if last_only else "all")
    return model


