"""Perplexity (ORT, first 8,192 test tokens) and node counts of --format qoperator graphs vs float.

    for m in mamba lstm; do
      rnnquant export $m-pydoc --format qoperator --out /tmp/p/$m-qop.onnx
      rnnquant export $m-pydoc --out /tmp/p/$m-fp32.onnx
    done
    python benchmarks/qoperator_table.py
"""
import collections, sys, numpy as np, onnx
from rnnquant.exporters.runner import OrtLM
from rnnquant.zoo.corpus import split_text
for m in ("mamba", "lstm"):
    for v in ("fp32", "qop"):
        p = f"/tmp/p/{m}-{v}.onnx"
        lm = OrtLM(p, threads=2)
        ids = np.array(lm.tokenizer.encode(split_text("test")).ids[:8192])
        ppl, n = lm.perplexity(ids, window=512)
        ops = collections.Counter(x.op_type for x in onnx.load(p).graph.node)
        print(m, v, f"ppl {ppl:.3f}", len(onnx.load(p).graph.node), "nodes", {k: ops[k] for k in ("QLinearMatMul", "MatMul", "Gemm") if ops[k]})
