"""The architecture contract, over every registered adapter and layout (``any_arch``): what each
adapter declares in its ArchSpec is true, and the stages that act on it keep the promises.

Step == forward, prefill in pieces, purity and constant work per token are in test_step_contract;
torch <-> ORT parity of step and prefill graphs (float, w8a8, w4a16) in tests/exporters/test_export."""
from __future__ import annotations

import pytest
import torch

from rnnquant.models import ADAPTERS
from rnnquant.prune.apply import remove_channels
from rnnquant.quant import PRESETS, quantize
from tests.conftest import CONTRACT, tiny_model

IDS = torch.randint(0, 4096, (3000,), generator=torch.Generator().manual_seed(0))


def test_every_registered_adapter_is_in_the_contract_suite():
    assert {c["model_type"] for c in CONTRACT.values()} == set(ADAPTERS)


def test_spec_names_resolve(any_arch):
    tiny_model(any_arch).arch_spec().check(tiny_model(any_arch))


def test_spec_check_catches_a_wrong_name():
    from dataclasses import replace

    m = tiny_model("mamba")
    spec = m.arch_spec()
    bad = replace(spec, linears=spec.linears | {"backbone.layers.0.norm": "in_proj"})
    with pytest.raises(ValueError, match="is not an nn.Linear"):
        bad.check(m)


def test_initial_state_is_what_the_spec_declares(any_arch):
    m = tiny_model(any_arch)
    for s, t in zip(m.arch_spec().states, m.init_state(2), strict=True):
        assert t.dtype == s.dtype and tuple(t.shape) == (2, *s.shape) and bool((t == s.init).all())


@pytest.fixture(scope="module")
def calibrated():
    from rnnquant.calibrate import CalibConfig, calibrate
    from rnnquant.models import fingerprint

    cache = {}

    def get(arch):
        if arch not in cache:
            m = tiny_model(arch)
            m.provenance = m.provenance.derive(fingerprint=fingerprint(m))
            cache[arch] = (m, calibrate(m, IDS, CalibConfig(samples=4, seq_len=64)))
        return cache[arch]

    return get


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_float_params_are_bit_identical_after_every_preset(any_arch, preset, calibrated):
    from rnnquant.calibrate import calibration_batches

    m, calib = calibrated(any_arch)
    q = quantize(m, PRESETS[preset], calib, calibration_batches(IDS, 4, 64, 4))
    before, after = dict(m.named_parameters()), dict(q.named_parameters())
    spec = m.arch_spec()
    smoothed = {f"{norm}.{w}" for norm, _ in spec.smoothing_pairs for w in ("weight", "bias")}  # SmoothQuant rescales these, by design
    for name in spec.float_params:
        if name not in after:  # a tied embedding may become the quantized head's codes (QEmbedding): no float copy left
            continue
        assert after[name].dtype == torch.float32, name
        if name not in smoothed or PRESETS[preset].smooth_alpha is None:
            assert torch.equal(before[name], after[name]), name


def test_keeping_every_channel_is_the_identity(any_arch):
    m = tiny_model(any_arch)
    ids = IDS[:64].view(2, 32)
    for name, group in m.arch_spec().channel_groups.items():
        keep = [torch.arange(m.config[group.config_key])] * len(group.layers)
        with torch.no_grad():
            assert torch.equal(remove_channels(m, name, keep)(ids), m(ids)), name


@torch.no_grad()
def test_calibration_finds_injected_outliers(any_arch):
    """x40 on two channels of the first smoothing norm: the model's function is unchanged, and
    calibration reports exactly those channels at its readers' inputs (adapters with no smoothing
    pair, LSTM/GRU, have no function-preserving place to inject)."""
    from rnnquant.calibrate import CalibConfig, calibrate, inject_outliers

    m = tiny_model(any_arch)
    pairs = m.arch_spec().smoothing_pairs
    if not pairs:
        pytest.skip(f"{any_arch} declares no smoothing pair")
    ids = IDS[:64].view(2, 32)
    ref = m(ids)
    m.provenance = m.provenance.derive(fingerprint="test")
    m, injected = inject_outliers(m, {pairs[0][0]: [3, 11]}, scale=40)
    assert (m(ids) - ref).abs().max() <= 1e-3 * ref.abs().max()
    calib = calibrate(m, IDS, CalibConfig(samples=4, seq_len=128))
    for point, chans in injected.items():
        assert set(calib.outlier_channels(point)) == set(chans), point


def test_a_declared_nonzero_initial_value_reaches_torch_and_the_runtimes(monkeypatch):
    """Declare a state that starts away from 0 (as RWKV-4's running max does), and both the torch
    init_state and the runtimes' initial_state (from the graph's states metadata) must honour it."""
    from dataclasses import replace

    from rnnquant.exporters.onnx_export import state_metadata
    from rnnquant.exporters.states import initial_state

    m = tiny_model("lstm")
    spec = m.arch_spec()
    odd = replace(spec, states=[replace(s, init=-1e38 if s.name.startswith("c") else 0.5) for s in spec.states])
    monkeypatch.setattr(m, "arch_spec", lambda: odd)
    for s, t, a in zip(odd.states, m.init_state(2), initial_state(state_metadata(m), 2), strict=True):
        assert bool((t == s.init).all()) and (a == s.init).all() and a.dtype.name == "float32"


def test_declared_block_exits_are_the_blocks_outputs(any_arch):
    """ArchSpec.block_exits: block i's output is R's input + L(L's input), bit for bit (GPTQ builds
    the next block's inputs from exactly that instead of replaying the block)."""
    m = tiny_model(any_arch)
    spec = m.arch_spec()
    x = m.stem(IDS[:40].view(2, 20))
    with torch.no_grad():
        for i, (block, part) in enumerate(zip(spec.layer_stack, spec.state_slices(), strict=True)):
            seen = {name: [] for name in spec.block_exits.get(block, ())}
            hooks = [m.get_submodule(n).register_forward_pre_hook(lambda mod, a, n=n: seen[n].append(a[0])) for n in seen]
            out, _ = m.block(i, x, m.init_state(2)[part])
            for h in hooks:
                h.remove()
            if seen:
                (res, lin) = spec.block_exits[block]
                assert len(seen[res]) == len(seen[lin]) == 1
                assert torch.equal(out, seen[res][0] + m.get_submodule(lin)(seen[lin][0]))
            x = out


def test_removing_a_layer_equals_skipping_its_block(any_arch):
    """`prune layers:1` on every adapter: the smaller model computes what the original computes
    with the removed block skipped (its config rewritten from the adapter's declarations only)."""
    from rnnquant.calibrate import CalibConfig, calibrate, calibration_batches
    from rnnquant.prune import parse_spec, prune

    m = tiny_model(any_arch)
    ids = torch.randint(0, m.vocab_size, (2000,), generator=torch.Generator().manual_seed(0))
    one = prune(m, parse_spec("layers:1"), calibrate(m, ids, CalibConfig(samples=4, seq_len=32)), calibration_batches(ids, 4, 32, 4))
    (gone,) = one.provenance.prune_report["removed_layers"]
    assert gone not in m.arch_spec().fixed_blocks
    x, state = ids[:40].view(2, 20), m.init_state(2)
    with torch.no_grad():
        h = m.stem(x)
        for i, part in enumerate(m.arch_spec().state_slices()):
            if i != gone:
                h, _ = m.block(i, h, state[part])
        assert (one(x) - m.tail(h)).abs().max() <= 1e-5
