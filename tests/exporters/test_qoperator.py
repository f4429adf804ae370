"""--format qoperator: QLinearMatMul step graphs from ONNX Runtime's static quantizer."""
import collections

import numpy as np
import onnx
import pytest

from rnnquant.exporters.runner import OrtLM
from tests.eval.test_perplexity import TEXT
from tests.helpers import assert_one_line_error, run_cli


@pytest.fixture
def text_file(tmp_path):
    f = tmp_path / "calib.txt"
    f.write_text(TEXT * 4)
    return f


def test_qoperator_export_runs_close_to_float(capsys, tmp_path, tiny_dir, text_file):
    q, fl = tmp_path / "q.onnx", tmp_path / "f.onnx"
    args = ["--data", text_file, "--samples", 4, "--seq-len", 32]
    assert run_cli(capsys, "export", tiny_dir, "--format", "qoperator", *args, "--out", q)[0] == 0
    assert run_cli(capsys, "export", tiny_dir, "--out", fl)[0] == 0
    ops = collections.Counter(n.op_type for n in onnx.load(q).graph.node)
    assert ops["QLinearMatMul"] >= 3 and not ops["MatMulInteger"] and not ops["MatMul"]  # every MatMul quantized
    qlm, flm = OrtLM(q), OrtLM(fl)
    assert '"format": "qoperator"' in qlm.meta["recipe"]
    ids = np.array(qlm.encode(TEXT)[:200])
    ppl_q, _ = qlm.perplexity(ids, window=64)
    ppl_f, _ = flm.perplexity(ids, window=64)
    assert abs(ppl_q / ppl_f - 1) < 0.05, (ppl_q, ppl_f)
    # the prefill graph is the Loop over this same step graph
    logits_pre, state_pre = qlm.prefill(ids[None, :16], qlm.init_state(1))
    state = qlm.init_state(1)
    for t in range(16):
        logits, state = qlm.step(ids[None, t], state)
    assert np.abs(logits_pre[:, -1] - logits).max() <= 1e-4
    assert all(np.abs(a - b).max() <= 1e-4 for a, b in zip(state_pre, state))


@pytest.mark.parametrize("arch", ["mamba"])
def test_qoperator_refuses_a_recipe(capsys, tmp_path, tiny_dir, text_file):
    out = tmp_path / "q.onnx"
    assert_one_line_error(capsys, "export", tiny_dir, "--format", "qoperator", "--recipe", "w8a8-dynamic", "--data", text_file,
                          "--out", out, match="give it no --recipe")
    assert not out.exists()
