"""The block-by-block engine is a refactor of the numerics, not a change: every stage it drives
gives exactly what one whole-model pass per step gave (same Hessians, same order), in O(layers)
block passes, with memory that does not grow with depth."""
from __future__ import annotations

import copy
import gc
import weakref

import pytest
import torch

from rnnquant.calibrate import CalibConfig, calibrate, calibration_batches, collect
from rnnquant.calibrate.engine import Blockwise
from rnnquant.models import build
from rnnquant.prune import parse_spec, prune
from rnnquant.prune.masks import sparsegpt_prune
from rnnquant.quant import PRESETS, quantize
from rnnquant.quant.apply import _feeder, _plan, _probe_for, _quantize_embedding, _quantize_linear, smooth
from rnnquant.quant.gptq import HessianAccumulator
from tests.conftest import CONTRACT, tiny_model


def _ids(model, n=4000):
    return torch.randint(0, model.vocab_size, (n,), generator=torch.Generator().manual_seed(1))


def _setup(arch):
    model = tiny_model(arch)
    model.provenance = model.provenance.derive(fingerprint="test")
    calib = calibrate(model, _ids(model), CalibConfig(samples=4, seq_len=64, state_every=16))
    return model, calib, calibration_batches(_ids(model), 6, 48, 4)


@torch.no_grad()
def _whole_model_quantize(model, recipe, calib, batches, sequential: bool):
    """The path the engine replaced: a whole-model pass per Linear (sequential) or one for all."""
    qm = copy.deepcopy(model)
    plan = _plan(qm, recipe, calib)
    if recipe.smooth_alpha is not None:
        smooth(qm, calib, recipe.smooth_alpha, {n for n, p in plan.items() if p["rule"].a_bits is not None and p["rotation"] is None})

    def probe_pass(names):
        probes = {n: _probe_for(plan[n]) for n in names}
        hooks = [qm.get_submodule(n).register_forward_pre_hook(lambda m, a, f=_feeder(plan[n], pr): f(a[0]))
                 for n, pr in probes.items() if pr is not None]
        for b in batches:
            qm(b)
        for h in hooks:
            h.remove()
        return probes

    groups = [[n] for n in plan] if sequential else [list(plan)]
    for names in groups:
        probes = probe_pass(names)
        for n in names:
            qm.set_submodule(n, _quantize_linear(qm.get_submodule(n), plan[n], probes[n]))
    _quantize_embedding(qm, recipe)  # (after the Linears, as quantize does)
    return qm


def _assert_same_weights(a, b):
    """Every tensor, the QLinears' integer codes, scales and zero points included (a QuantizedWeight
    is not a registered buffer: state_dict() alone would compare no GPTQ result at all)."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    qa, qb = ({n: m.qweight for n, m in x.named_modules() if getattr(m, "qweight", None) is not None} for x in (a, b))
    assert qa.keys() == qb.keys()
    for n in qa:
        for field in ("q", "scale", "zero"):
            assert torch.equal(getattr(qa[n], field), getattr(qb[n], field)), f"{n}.qweight.{field}"


@pytest.mark.parametrize("arch", ["mamba", "lstmp", "mamba2", "mingru", "xlstm", "recurrent_gemma"])
def test_blockwise_gptq_equals_whole_model_sequential(arch):
    model, calib, batches = _setup(arch)
    recipe = PRESETS["w4a16-gptq"]
    a, b = quantize(model, recipe, calib, batches), _whole_model_quantize(model, recipe, calib, batches, sequential=True)
    assert any(getattr(m, "qweight", None) is not None for m in a.modules())
    _assert_same_weights(a, b)


@pytest.mark.parametrize("arch", ["mamba", "gru"])
def test_blockwise_static_scales_equal_one_float_pass(arch):
    model, calib, batches = _setup(arch)
    recipe = PRESETS["w8a8-outlier"]
    _assert_same_weights(quantize(model, recipe, calib, batches), _whole_model_quantize(model, recipe, calib, batches, sequential=False))


@pytest.mark.parametrize("arch", ["mamba", "lstm"])
def test_blockwise_sparsegpt_equals_one_float_pass(arch):
    model, calib, batches = _setup(arch)
    cfg = parse_spec("sparsegpt:0.5")
    ref = copy.deepcopy(model)
    names = [n for n in ref.arch_spec().linears if n != ref.arch_spec().head]
    acc = {n: HessianAccumulator(ref.get_submodule(n).in_features) for n in names}
    hooks = [ref.get_submodule(n).register_forward_pre_hook(lambda m, a, n=n: acc[n].add(a[0])) for n in names]
    with torch.no_grad():
        for b in batches:
            ref(b)
        for h in hooks:
            h.remove()
        for n in names:
            w = ref.get_submodule(n).weight
            w.copy_(sparsegpt_prune(w, acc[n].hessian(), 0.5, None)[0])
    _assert_same_weights(prune(model, cfg, calib, batches), ref)


def test_gptq_runs_blocks_never_the_whole_model(monkeypatch):
    """O(layers) block passes: at most (Linears in a block + 1) passes of each block per batch,
    and no whole-model forward at all."""
    model, calib, batches = _setup("lstm")
    calls = []
    real_block = model.block
    monkeypatch.setattr(model, "block", lambda i, x, s: calls.append(i) or real_block(i, x, s))
    monkeypatch.setattr(model, "forward_with_state", lambda *a, **k: pytest.fail("a whole-model pass"))
    quantize(model, PRESETS["w4a16-gptq"], calib, batches, inplace=True)
    per_block = len(model.arch_spec().linears) // len(model.arch_spec().layer_stack)
    for i in range(len(model.arch_spec().layer_stack)):
        assert 0 < calls.count(i) <= (per_block + 1) * len(batches)


def test_gptq_takes_a_declared_exit_instead_of_a_last_replay(monkeypatch):
    """Mamba declares block(x) = x + out_proj(its input): GPTQ's out_proj probe replay also gives
    the block's outputs, so each block runs once per Linear per batch, not once more to advance."""
    model, calib, batches = _setup("mamba")
    calls = []
    real_block = model.block
    monkeypatch.setattr(model, "block", lambda i, x, s: calls.append(i) or real_block(i, x, s))
    quantize(model, PRESETS["w4a16-gptq"], calib, batches, inplace=True)
    per_block = len(model.arch_spec().linears) // len(model.arch_spec().layer_stack)
    assert [calls.count(i) for i in range(len(model.arch_spec().layer_stack))] == [per_block * len(batches)] * len(model.arch_spec().layer_stack)


def test_every_declared_point_runs_in_exactly_one_stage(any_arch):
    model = tiny_model(any_arch)
    spec = model.arch_spec()
    engine = Blockwise(model, [torch.zeros(1, 5, dtype=torch.long)])
    names = [*spec.linears, *spec.taps]
    owners = {n: [] for n in names}
    for stage in engine.stages():
        here = stage.select(names)
        for n in here:
            owners[n].append(stage.index)
        engine.run(stage, {n: (lambda x: None) for n in here}, advance=True)  # raises if one does not fire
    assert all(len(o) == 1 for o in owners.values()), {n: o for n, o in owners.items() if len(o) != 1}


def test_staged_pieces_compose_to_the_forward(any_arch):
    model = tiny_model(any_arch)
    ids = _ids(model)[:40].view(2, 20)
    engine = Blockwise(model, [ids])
    for stage in engine.stages():
        if not stage.is_tail:
            engine.run(stage, advance=True)
    torch.testing.assert_close(model.tail(engine.cache[0]), model(ids), rtol=0, atol=0)


def _mamba(layers: int):
    torch.manual_seed(0)
    return build(CONTRACT["mamba"] | {"num_hidden_layers": layers, "hidden_size": 64}).eval()


def test_calibration_memory_does_not_grow_with_depth():
    """Buffered rows with the open histograms, and the cached stream, peak at one block's worth,
    for 1 block or 8."""
    batches = calibration_batches(torch.randint(0, 4096, (4000,), generator=torch.Generator().manual_seed(0)), 8, 256, 4)
    mem = {n: collect(_mamba(n), batches, CalibConfig(state_every=64)).memory for n in (1, 8)}
    assert mem[8]["peak_buffer_bytes"] == mem[1]["peak_buffer_bytes"] > 0
    assert mem[8]["peak_cache_bytes"] == mem[1]["peak_cache_bytes"] > 0


def test_inplace_quantization_records_the_float_model_it_started_from():
    """SmoothQuant re-fingerprints the model it scales; in place, the record must still name the
    float original (compare matches exported variants against it)."""
    model, calib, batches = _setup("mamba")
    q = quantize(model, PRESETS["w8a8-outlier"], calib, batches, inplace=True)
    assert q is model and q.provenance.quantized_from == "test" and q.provenance.float_fingerprint == "test"


def test_inplace_quantization_lets_go_of_each_float_weight_as_it_goes(monkeypatch):
    """In place, a replaced Linear's float weight is freed while the rest of the model is still
    being quantized: nothing in the quantizer holds the original modules (5.5 GB at mamba-1.4b
    shape, which would otherwise sit beside the codes until the end)."""
    import rnnquant.quant.apply as apply

    model, calib, batches = _setup("mamba")
    done, alive_at_last = [], []
    real = apply._quantize_linear

    def spy(lin, p, probe):
        gc.collect()
        alive_at_last[:] = [w for w in done if w() is not None]
        done.append(weakref.ref(lin.weight))
        return real(lin, p, probe)

    monkeypatch.setattr(apply, "_quantize_linear", spy)
    quantize(model, PRESETS["w8a8-outlier"], calib, batches, inplace=True)
    assert len(done) == len(model.arch_spec().linears) and alive_at_last == []


@pytest.mark.parametrize("every", [16, 64])
def test_states_are_sampled_every_state_every_positions(every):
    """The engine cuts each block's replay into ``state_every``-position segments and calibration
    records the state at each cut: 4 sequences of 64 positions give 4 x 64 / every samples per
    state channel (times the state's non-channel axes), where a whole-sequence pass would give 4."""
    model = tiny_model("mamba")
    batches = calibration_batches(_ids(model), 4, 64, 4)
    stats = collect(model, batches, CalibConfig(samples=4, seq_len=64, state_every=every))
    for s in model.arch_spec().states:
        samples_per_state = s.shape[0] if s.channel_dim == 1 else 1  # Mamba's states keep d_inner on axis 1
        assert stats.points[f"state.{s.name}"].stats.count == 4 * (64 // every) * samples_per_state, s.name


def test_progress_reports_replay_time_apart_from_the_work_between_replays(capsys):
    """The issue's time targets are ratios of the block replays to a float forward, with the
    per-Linear solves reported beside them: the summary line splits the two."""
    import re
    import time

    model = tiny_model("mamba")
    engine = Blockwise(model, calibration_batches(_ids(model), 2, 32, 2))  # 2 batches
    for stage in engine.stages("probe"):
        first = stage.select(model.arch_spec().linears)[:1]
        engine.run(stage, {n: lambda x: time.sleep(0.05) for n in first}, advance=not stage.is_tail)  # replays: >= 2 x 2 x 0.05 s
        time.sleep(0.1)  # stands for a solve: 3 x 0.1 s (2 blocks and the tail)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    replay, between = map(float, re.search(r"([\d.]+) s replaying .* ([\d.]+) s between replays", line).groups())
    assert abs(replay - engine.replay_s) <= 0.05 and replay >= 0.2 - 0.05
    assert 0.3 - 0.05 <= between < 0.3 + 0.15  # none of the replays counted in it
