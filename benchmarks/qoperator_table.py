"""Perplexity (ORT, first 8,192 test tokens) and node counts of --format qoperator graphs vs float.

    for m in mamba lstm; do
      rnnquant export $m-pydoc --format qoperator --out /tmp/p/$m-qop.onnx
      rnnquant export $m-pydoc --out /tmp/p/$m-fp32.onnx
    done
    python benchmarks/qoperator_table.py [DIR]      # DIR defaults to /tmp/p
"""
from __future__ import annotations

import collections
import sys
from pathlib import Path

import numpy as np
import onnx

from rnnquant.exporters.runner import OrtLM
from rnnquant.zoo.corpus import split_text


def main() -> None:
    d = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/p")
    text = split_text("test")
    for model in ("mamba", "lstm"):
        for variant in ("fp32", "qop"):
            path = d / f"{model}-{variant}.onnx"
            lm = OrtLM(path, threads=2)
            ppl, _ = lm.perplexity(np.array(lm.tokenizer.encode(text).ids[:8192]), window=512)
            ops = collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)
            matmuls = {k: ops[k] for k in ("QLinearMatMul", "MatMul", "Gemm") if ops[k]}
            print(model, variant, f"ppl {ppl:.3f}", sum(ops.values()), "nodes", matmuls)


if __name__ == "__main__":
    main()
