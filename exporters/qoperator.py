"""``--format qoperator``: the step graph with ``QLinearMatMul`` (constant scales), for NNAPI.

NNAPI (and other delegates that take whole quantized operators) run ``QLinearMatMul`` with
constant per-tensor scales, not the ``MatMulInteger``/``MatMulNBits`` forms of the default
export. ONNX Runtime's own static quantizer does this job, so it is used as is: the float step
graph is exported, ``quantize_static`` (QOperator format, MinMax calibration, uint8 activations,
int8 symmetric per-tensor weights, MatMul only) is calibrated on the inputs the graph really sees
at each step (token + the states reached by running the float graph over the calibration text),
and rnnquant's metadata, prefill graph and tokenizer are added as for every export.
"""
from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from pathlib import Path

import numpy as np

from rnnquant.errors import RnnquantError
from rnnquant.exporters.states import initial_state

RECIPE = {"name": "qoperator-static", "format": "qoperator", "weights": "int8 symmetric per-tensor", "activations": "uint8 static per-tensor (MinMax)",
          "ops": ["MatMul"], "tool": "onnxruntime.quantization.quantize_static"}


def step_feeds(float_onnx: Path, states: list[dict], batches) -> list[dict[str, np.ndarray]]:
    """The step graph's inputs at every position of every calibration sequence ([B, T] id tensors)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(float_onnx), providers=["CPUExecutionProvider"])
    names = [s["name"] for s in states]
    feeds = []
    for batch in batches:
        ids = np.asarray(batch, dtype=np.int64)
        state = initial_state(states, ids.shape[0])
        for t in range(ids.shape[1]):
            feeds.append({"input_ids": ids[:, t]} | dict(zip(names, state)))
            state = sess.run([f"new_{n}" for n in names], feeds[-1])
    return feeds


def gemm_to_matmul(proto):
    """Rewrite each Gemm with a constant weight (a Linear with bias, as the exporter traces it) as
    MatMul + Add, so the quantizer makes it a QLinearMatMul (QGemm is a com.microsoft op NNAPI lacks)."""
    from onnx import helper, numpy_helper

    g = proto.graph
    inits = {i.name: i for i in g.initializer}
    nodes = []
    for n in g.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type != "Gemm" or n.input[1] not in inits or attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            nodes.append(n)
            continue
        w = numpy_helper.to_array(inits[n.input[1]])
        wt = numpy_helper.from_array(np.ascontiguousarray(w.T if attrs.get("transB", 0) else w), f"{n.input[1]}_kn_{n.name}")
        g.initializer.append(wt)
        mm = f"{n.output[0]}_matmul"
        nodes.append(helper.make_node("MatMul", [n.input[0], wt.name], [mm], name=f"{n.name}_matmul"))
        nodes.append(helper.make_node("Add", [mm, n.input[2]], [n.output[0]], name=f"{n.name}_bias") if len(n.input) > 2 and n.input[2]
                     else helper.make_node("Identity", [mm], [n.output[0]], name=f"{n.name}_id"))
    del g.node[:]
    g.node.extend(nodes)
    used = {i for n in g.node for i in n.input}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    return proto


@contextlib.contextmanager
def _quiet_root_logger():
    """quantize_static logs a pre-processing suggestion on the root logger (the choice is documented
    above); silence it for the call only, not for the rest of the process."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


class _Reader:
    """onnxruntime.quantization.CalibrationDataReader over precomputed feeds."""

    def __init__(self, feeds):
        self._it = iter(feeds)

    def get_next(self):
        return next(self._it, None)


def export_qoperator(model, out_path, tokenizer_path, batches, opset: int = 17, force: bool = True, prefill_logits: str = "all") -> Path:
    """Float step graph -> ORT static QOperator quantization -> ``out_path`` (+ prefill, tokenizer)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from .onnx_export import export_step, finish_step_graph, state_metadata

    if model.provenance.recipe is not None:
        raise RnnquantError("--format qoperator quantizes a float model itself (ONNX Runtime's static quantizer); give it no --recipe")
    if not batches:
        raise RnnquantError("--format qoperator needs calibration text (--data, or a zoo model's train split)")
    with tempfile.TemporaryDirectory(prefix="rnnquant-qop-") as td:
        float_path = export_step(model, Path(td) / "float.onnx", None, opset=opset, prefill=False)
        q_path = Path(td) / "q.onnx"
        onnx.save(gemm_to_matmul(onnx.load(str(float_path))), str(float_path))
        # no quant_pre_process: on these graphs its optimiser fuses MatMul+Add into Gemm, which then
        # stays float (13 -> 9 QLinearMatMul on the zoo Mamba, 6.95 -> 8.44 MiB)
        with _quiet_root_logger():
            quantize_static(
                str(float_path), str(q_path), _Reader(step_feeds(float_path, state_metadata(model), batches)), quant_format=QuantFormat.QOperator,
                op_types_to_quantize=["MatMul"], per_channel=False, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax, extra_options={"WeightSymmetric": True},
            )
        proto = onnx.load(str(q_path))
    del proto.metadata_props[:]
    return finish_step_graph(proto, model, out_path, tokenizer_path, force=force, recipe=json.dumps(RECIPE, sort_keys=True),
                             prefill_logits=prefill_logits)
