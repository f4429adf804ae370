"""Pruning: structured removal equals zeroing, N:M masks hold, accounting is exact, bad requests refused."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from rnnquant.calibrate import CalibConfig, calibrate, calibration_batches
from rnnquant.errors import RnnquantError
from rnnquant.models import fingerprint
from rnnquant.prune import block_influence, parse_spec, prune, remove_channels
from rnnquant.prune import PruneConfig
from rnnquant.prune.apply import layer_sparsities
from rnnquant.prune.masks import magnitude_mask, owl_sparsities, sparsegpt_prune, wanda_mask
from rnnquant.quant.gptq import HessianAccumulator
from tests.conftest import tiny_model

IDS = torch.randint(0, 4096, (4000,), generator=torch.Generator().manual_seed(0))


def _calibrated(arch):
    m = tiny_model(arch)
    m.provenance = m.provenance.derive(fingerprint=fingerprint(m))
    return m, calibrate(m, IDS, CalibConfig(samples=4, seq_len=64)), calibration_batches(IDS, 4, 64, 4)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_unstructured_pruning_leaves_the_declared_dense_linears_dense(method):
    """RWKV-7's LoRA outputs (``ArchSpec.prune_dense``) keep every weight; the other Linears take the sparsity."""
    m, calib, batches = _calibrated("rwkv7")
    spec = m.arch_spec()
    assert spec.prune_dense
    p = prune(m, parse_spec(f"{method}:0.5"), calib, batches)
    before, after = dict(m.named_modules()), dict(p.named_modules())
    for n in spec.prune_dense:
        assert torch.equal(after[n].weight, before[n].weight), n
    pruned = [n for n in spec.linears if n not in spec.prune_dense and n != spec.head]
    assert all(0.45 <= float((after[n].weight == 0).float().mean()) <= 0.55 for n in pruned)


@torch.no_grad()
def test_mamba_channel_removal_equals_zeroing():
    m = tiny_model("mamba")
    E = m.config["intermediate_size"]
    keep = [torch.arange(0, E, 2), torch.randperm(E, generator=torch.Generator().manual_seed(0))[: E // 2]]
    small = remove_channels(m, "d_inner", keep)
    zeroed = tiny_model("mamba")
    for layer, k in zip(zeroed.backbone.layers, keep):
        drop = torch.tensor(sorted(set(range(E)) - set(k.tolist())))
        layer.mixer.in_proj.weight[drop] = 0  # x_e = 0 before the conv ...
        layer.mixer.conv1d.bias[drop] = 0  # ... and after it, so channel e carries nothing
    ids = IDS[:64].view(2, 32)
    assert small.config["intermediate_size"] == E // 2
    assert (small(ids) - zeroed(ids)).abs().max() <= 1e-4


@torch.no_grad()
def test_mamba_state_removal_equals_zeroing():
    """Dropping state dimension n == zeroing the x_proj rows that make B_n and C_n (h_n is never
    written and never read)."""
    m = tiny_model("mamba")
    R, N = m.config["time_step_rank"], m.config["state_size"]
    keep = [torch.tensor([0, 2, 5, 7]), torch.tensor([1, 2, 3, 6])]
    small = remove_channels(m, "d_state", keep)
    zeroed = tiny_model("mamba")
    for layer, k in zip(zeroed.backbone.layers, keep):
        drop = torch.tensor(sorted(set(range(N)) - set(k.tolist())))
        layer.mixer.x_proj.weight[R + drop] = 0
        layer.mixer.x_proj.weight[R + N + drop] = 0
    ids = IDS[:64].view(2, 32)
    assert small.config["state_size"] == 4 and small.init_state(1)[1].shape == (1, 4, m.config["intermediate_size"])
    assert (small(ids) - zeroed(ids)).abs().max() <= 1e-4
    logits, _ = small.step(ids[:, 0], small.init_state(2))
    assert (logits - small(ids[:, :1])[:, 0]).abs().max() <= 1e-4


def test_state_pruning_by_calibration_and_refused_for_rnn():
    m, calib, batches = _calibrated("mamba")
    p = prune(m, parse_spec("state:0.25"), calib, batches)
    assert p.config["state_size"] == 6 and p.provenance.prune_report["structural_reduction_pct"] > 0
    lstm, lcalib, lbatches = _calibrated("lstm")
    with pytest.raises(RnnquantError, match="lstm has no d_state channels"):
        prune(lstm, parse_spec("state:0.25"), lcalib, lbatches)


@torch.no_grad()
@pytest.mark.parametrize("arch", ["lstm", "gru", "lstm-untied", "lstmp"])
def test_rnn_hidden_removal_equals_zeroing(arch):
    m = tiny_model(arch)
    H = m.config["hidden_size"]
    keep = [torch.arange(0, H, 2)] * 2
    small = remove_channels(m, "hidden", keep)
    zeroed = tiny_model(arch)
    drop = torch.arange(1, H, 2)
    for cell in zeroed.layers:
        G = cell.gates
        rows = torch.cat([g * H + drop for g in range(G)])
        cell.ih.weight[rows] = 0
        cell.ih.bias[rows] = 0
        cell.hh.weight[rows] = 0
        cell.hh.bias[rows] = 0
        if not m.config["proj_size"]:  # LSTMP: hh reads the projected h, not the unit
            cell.hh.weight[:, drop] = 0
    # a unit with zero weights and biases stays at h = 0 (LSTM: c' = 0.5 c = 0; GRU: h' = 0.5 tanh(0) + 0.5 h = 0)
    # and its outgoing columns are then irrelevant
    ids = IDS[:64].view(2, 32)
    assert (small(ids) - zeroed(ids)).abs().max() <= 1e-4


@torch.no_grad()
def test_rnn_removed_units_leave_their_mean_in_the_consumers_bias():
    """FLAP's compensation: a removed unit's calibration mean moves into the biases of the Linears
    that read it (its own hh, the next layer's ih or proj); Mamba declares none (no biases there)."""
    m, calib, _ = _calibrated("lstm")
    H = m.config["hidden_size"]
    keep = [torch.arange(0, H, 2), torch.arange(1, H, 2)]
    plain, comp = remove_channels(m, "hidden", keep), remove_channels(m, "hidden", keep, calib)
    drop1 = torch.arange(0, H, 2)  # layer 1 keeps the odd units
    shift = m.proj.weight[:, drop1] @ calib.stat("proj.input", "mean")[drop1]
    assert shift.abs().max() > 1e-3 and torch.allclose(comp.proj.bias, plain.proj.bias + shift)
    assert torch.equal(comp.proj.weight, plain.proj.weight)  # only biases move
    assert not any(layer.compensate for layer in tiny_model("mamba").arch_spec().channel_groups["d_inner"].layers)


@torch.no_grad()
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_unstructured_bias_correction(method):
    """What a pruned Linear loses on average, (W - W') E[x], moves into its bias; off: biases untouched."""
    m, calib, batches = _calibrated("lstm")
    on, off = (prune(m, PruneConfig(method, 0.5, bias_correction=c), calib, batches) for c in (True, False))
    assert on.provenance.prune_report["bias_corrected"] and not off.provenance.prune_report["bias_corrected"]
    assert torch.equal(on.proj.weight, off.proj.weight) and torch.equal(off.proj.bias, m.proj.bias)
    shift = (m.proj.weight - on.proj.weight) @ calib.stat("proj.input", "mean")
    assert shift.abs().max() > 1e-3 and torch.allclose(on.proj.bias, m.proj.bias + shift, atol=1e-6)
    if method == "magnitude":  # magnitude runs without calibration, and then corrects nothing
        assert not prune(m, parse_spec("magnitude:0.5"), None, batches).provenance.prune_report["bias_corrected"]


@pytest.mark.parametrize("nm", [(2, 4), (4, 8)])
def test_nm_masks(nm):
    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(16, 64, generator=g), torch.randn(500, 64, generator=g)
    acc = HessianAccumulator(64)
    acc.add(x)
    n, mm = nm
    for keep in (magnitude_mask(w, 0, nm), wanda_mask(w, x.norm(dim=0), 0, nm), sparsegpt_prune(w, acc.hessian(), 0, nm)[1]):
        assert (keep.reshape(16, -1, mm).sum(-1) == n).all()


def test_unstructured_accounting_is_exact():
    m, calib, batches = _calibrated("mamba")
    p = prune(m, parse_spec("wanda:0.5"), calib, batches)
    r = p.provenance.prune_report
    targets = [n for n, role in p.arch_spec().linears.items() if role != "lm_head"]
    mods = dict(p.named_modules())
    zeros = sum(int((mods[n].weight == 0).sum()) for n in targets)
    total = sum(mods[n].weight.numel() for n in targets)
    assert r["masked_sparsity_pct"] == pytest.approx(100 * zeros / total)
    assert 49.0 <= r["masked_sparsity_pct"] <= 51.0 and r["structural_reduction_pct"] == 0
    assert r["params_after"] == r["params_before"]


def test_wanda_and_sparsegpt_beat_magnitude_on_layer_error():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2000, 64, generator=g) * torch.linspace(0.1, 4, 64)  # uneven input scales
    w = torch.randn(32, 64, generator=g)
    acc = HessianAccumulator(64)
    acc.add(x)
    err = lambda wp: float(((x @ (w - wp).T) ** 2).mean())  # noqa: E731
    e_mag = err(w * magnitude_mask(w, 0.5))
    e_wanda = err(w * wanda_mask(w, x.norm(dim=0), 0.5))
    e_sgpt = err(sparsegpt_prune(w, acc.hessian(), 0.5)[0])
    assert e_wanda < e_mag and e_sgpt < e_wanda


def test_structured_prune_shrinks_and_layers_drop():
    m, calib, batches = _calibrated("mamba")
    p = prune(m, parse_spec("channels:0.25"), calib, batches)
    assert p.config["intermediate_size"] == 48 and p.provenance.prune_report["structural_reduction_pct"] > 0
    assert p(IDS[:20].view(1, 20)).shape == (1, 20, 4096)
    one = prune(m, parse_spec("layers:1"), calib, batches)
    assert one.config["num_hidden_layers"] == 1 and len(one.provenance.prune_report["removed_layers"]) == 1


@pytest.mark.parametrize(
    "spec, match",
    [("wanda:1.0", "sparsity must be in"), ("wanda:0", "sparsity must be in"), ("layers:2", "would remove every layer"),
     ("magnitude:3:4:5", "bad --prune spec"), ("wanda:4:2", "needs 0 < N < M"), ("voodoo:0.5", "unknown pruning method"),
     ("magnitude:3:7", "does not divide"), ("channels:0.25:owl", "per-layer sparsity needs"), ("wanda:0.5:owlx", "bad --prune spec")],
)
def test_impossible_requests(spec, match):
    m, calib, batches = _calibrated("mamba")
    with pytest.raises(RnnquantError, match=match):
        prune(m, parse_spec(spec), calib, batches)


def test_owl_sparsities_keep_the_weighted_mean_and_spare_outlier_layers():
    g = torch.Generator().manual_seed(0)
    flat = torch.rand(3000, generator=g)
    spiky = torch.cat([torch.rand(900, generator=g), 50 + torch.rand(100, generator=g)])  # 10 % outliers
    mild = torch.cat([torch.rand(1980, generator=g), 50 + torch.rand(20, generator=g)])  # 1 %
    s = owl_sparsities({"flat": flat, "spiky": spiky, "mild": mild}, 0.5, m=5, lam=0.1)
    assert s["spiky"] < s["mild"] < s["flat"]
    assert s["flat"] - s["spiky"] == pytest.approx(0.2)  # the full 2 x lambda spread
    assert (3000 * s["flat"] + 1000 * s["spiky"] + 2000 * s["mild"]) / 6000 == pytest.approx(0.5)
    assert owl_sparsities({"a": flat, "b": flat.clone()}, 0.4, 5, 0.1) == {"a": pytest.approx(0.4), "b": pytest.approx(0.4)}


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_owl_profile_prunes_per_block_at_the_requested_mean(method):
    m, calib, batches = _calibrated("lstm")
    cfg = parse_spec(f"{method}:0.5:owl")
    names = [n for n, role in m.arch_spec().linears.items() if role != "lm_head"]
    want = layer_sparsities(m, cfg, calib, names)
    assert want["layers.0.ih"] == want["layers.0.hh"] and want["layers.1.ih"] == want["layers.1.hh"]  # one block, one sparsity
    assert len(set(want.values())) == 3  # layers.0, layers.1 and proj differ
    r = prune(m, cfg, calib, batches).provenance.prune_report
    mods = dict(m.named_modules())
    for n, got in r["masked_sparsity_pct_per_linear"].items():  # each row keeps round(in x (1 - s)) weights
        assert got == pytest.approx(100 * want[n], abs=50 / mods[n].in_features + 0.01)
    assert r["masked_sparsity_pct"] == pytest.approx(50, abs=1)


def test_layer_sparsity_overrides_and_config_files(tmp_path):
    m, calib, batches = _calibrated("lstm")
    cfg = PruneConfig("magnitude", 0.5, layer_sparsity=(("layers.*", 0.75), ("proj", 0.0)))
    per = prune(m, cfg, calib, batches).provenance.prune_report["masked_sparsity_pct_per_linear"]
    assert per["proj"] == 0 and all(per[f"layers.{i}.{k}"] == 75 for i in (0, 1) for k in ("ih", "hh"))
    (tmp_path / "p.yaml").write_text("method: wanda\nsparsity: 0.5\nprofile: owl\nlayer_sparsity: {proj: 0.25}\n")
    (tmp_path / "p.json").write_text(json.dumps(parse_spec(str(tmp_path / "p.yaml")).to_dict()))
    assert parse_spec(str(tmp_path / "p.json")) == PruneConfig("wanda", 0.5, profile="owl", layer_sparsity=(("proj", 0.25),))
    with pytest.raises(RnnquantError, match="matches none of the 5 pruned Linears"):
        prune(m, PruneConfig("magnitude", 0.5, layer_sparsity=(("mixer.*", 0.3),)), calib, batches)
    (tmp_path / "bad.json").write_text('{"method": "wanda", "sparsity": 0.5, "sparsty": 1}')
    with pytest.raises(RnnquantError, match="unknown field 'sparsty'"):
        parse_spec(str(tmp_path / "bad.json"))
    (tmp_path / "half.json").write_text('{"method": "wanda", "sparsity": "half"}')
    with pytest.raises(RnnquantError, match="field 'sparsity' must be a number"):
        parse_spec(str(tmp_path / "half.json"))
    (tmp_path / "bad.yaml").write_text("method: [")
    with pytest.raises(RnnquantError, match="cannot parse prune config"):
        parse_spec(str(tmp_path / "bad.yaml"))
    with pytest.raises(RnnquantError, match="does not exist"):
        parse_spec(str(tmp_path / "none.yaml"))
    with pytest.raises(RnnquantError, match="needs calibration statistics"):
        prune(m, parse_spec("magnitude:0.5:owl"), None, batches)
    with pytest.raises(RnnquantError, match="outside \\[0, 1\\); use a smaller owl_lambda"):
        prune(m, PruneConfig("wanda", 0.1, profile="owl", owl_lambda=0.3), calib, batches)


@torch.no_grad()
def test_rnn_layer_removal_keeps_the_width():
    """An LSTM stack has no residual, but a layer H -> H can go: h of the layer below feeds the next
    one directly. Layer 0 (embed 24 -> hidden 32) changes the width, so it never goes."""
    m, calib, batches = _calibrated("lstm")
    one = prune(m, parse_spec("layers:1"), calib, batches)
    assert one.config["num_layers"] == 1 and one.provenance.prune_report["removed_layers"] == one.provenance.prune_report["removed_layers"] == [1]
    skipped = tiny_model("lstm")
    skipped.layers = skipped.layers[:1]  # the same weights with layer 1 taken out by hand
    ids = IDS[:64].view(2, 32)
    assert (one(ids) - skipped(ids)).abs().max() <= 1e-6
    with pytest.raises(RnnquantError, match="would remove every layer"):
        prune(m, parse_spec("layers:2"), calib, batches)


@torch.no_grad()
def test_rnn_layer_removal_can_take_layer_0_when_embed_equals_hidden():
    from rnnquant.models import build
    from tests.conftest import TINY

    torch.manual_seed(0)
    m = build(TINY["gru"] | {"embed_size": 32, "num_layers": 3}).eval()
    m.provenance = m.provenance.derive(fingerprint=fingerprint(m))
    batches = calibration_batches(IDS, 4, 64, 4)
    bi = block_influence(m, batches)
    assert bi.isfinite().all()  # every layer keeps the width 32
    two = prune(m, parse_spec("layers:2"), calibrate(m, IDS, CalibConfig(samples=4, seq_len=64)), batches)
    left = sorted(set(range(3)) - set(two.provenance.prune_report["removed_layers"]))
    assert two.provenance.prune_report["removed_layers"] == sorted(bi.topk(2, largest=False).indices.tolist()) and two.config["num_layers"] == 1
    m.layers = torch.nn.ModuleList(m.layers[i] for i in left)
    ids = IDS[:64].view(2, 32)
    assert (two(ids) - m(ids)).abs().max() <= 1e-6


def test_cli_prune_then_quantize_and_export(capsys, tmp_path):
    from rnnquant.io import save_checkpoint
    from rnnquant.artifacts import load
    from tests.calibrate.test_calibrate import TEXT
    from tests.conftest import TOKENIZER
    from tests.helpers import assert_one_line_error, run_cli

    d = tmp_path / "m"
    save_checkpoint(tiny_model("mamba"), d, tokenizer_path=TOKENIZER)
    data = tmp_path / "t.txt"
    data.write_text(TEXT)
    assert run_cli(capsys, "calibrate", d, "--data", data, "--samples", 4, "--seq-len", 64, "--out", tmp_path / "c")[0] == 0
    code, out, err = run_cli(capsys, "prune", d, "--calib", tmp_path / "c", "--method", "channels", "--sparsity", 0.25, "--out", tmp_path / "p")
    assert code == 0, err
    assert "structural" in out and load(tmp_path / "p").config["intermediate_size"] == 48
    code, out, err = run_cli(capsys, "export", d, "--calib", tmp_path / "c", "--recipe", "w8a8-outlier", "--prune", "wanda:0.5", "--data", data,
                             "--samples", 4, "--seq-len", 64, "--out", tmp_path / "pq.onnx")
    assert code == 0, err
    assert "masked sparsity 50.0%" in out and "(Hadamard-rotated Linears are stored rotated, so dense)" in out
    code, out, err = run_cli(capsys, "quantize", d, "--recipe", "w4a16-gptq", "--prune", "wanda:0.5", "--calib", tmp_path / "c",
                             "--data", data, "--samples", 4, "--seq-len", 64, "--out", tmp_path / "pq")
    assert code == 0, err
    assert "after w4a16-gptq: masked sparsity 50.0%" in out  # GPTQ's updates keep the pruned zeros
    assert_one_line_error(capsys, "prune", d, "--method", "wanda", "--sparsity", 1.5, "--calib", tmp_path / "c", "--out", tmp_path / "x", match="sparsity must be in")
    assert_one_line_error(capsys, "prune", d, "--method", "wanda", "--layer-sparsity", "in_proj", "--calib", tmp_path / "c", "--out", tmp_path / "x", match="bad --layer-sparsity")
    assert_one_line_error(capsys, "prune", d, "--calib", tmp_path / "c", "--out", tmp_path / "x", match="needs --method or --config")
    assert not (tmp_path / "x").exists()
    code, out, err = run_cli(capsys, "prune", d, "--calib", tmp_path / "c", "--method", "wanda", "--profile", "owl",
                             "--layer-sparsity", "*.out_proj=0", "--out", tmp_path / "owl")
    assert code == 0, err
    assert "per Linear: " in out and "backbone.layers.0.mixer.out_proj 0.0%" in out
    report = json.loads((tmp_path / "owl" / "prune_report.json").read_text())
    assert report["config"]["profile"] == "owl" and report["config"]["layer_sparsity"] == {"*.out_proj": 0.0}
    assert parse_spec(str(tmp_path / "owl" / "prune_report.json")).layer_sparsity == (("*.out_proj", 0.0),)  # repeatable from its report


@torch.no_grad()
def test_mamba2_head_removal_keeps_whole_heads():
    """channels:0.25 on Mamba-2 removes 2 of 8 heads: every parameter of a kept head (head_dim rows of
    in_proj's z and x parts, one dt row, conv, A_log, D, gated-norm weight, out_proj columns) is carried
    over unchanged, the config shrinks consistently, and the small model still keeps the step contract."""
    m = tiny_model("mamba2")
    H, P, E = m.config["num_heads"], m.config["head_dim"], m.config["intermediate_size"]
    keep = torch.tensor([0, 2, 3, 4, 6, 7])
    small = remove_channels(m, "heads", [keep] * 2)
    assert (small.config["num_heads"], small.config["intermediate_size"]) == (6, 6 * P)
    a, b = m.backbone.layers[1].mixer, small.backbone.layers[1].mixer
    chans = (keep.unsqueeze(1) * P + torch.arange(P)).flatten()
    conv_dim = E + 2 * m.config["state_size"]
    rows = torch.cat([chans, E + chans, torch.arange(2 * E, E + conv_dim), E + conv_dim + keep])  # z, x, B and C (all kept), dt
    assert torch.equal(b.in_proj.weight, a.in_proj.weight[rows])
    assert torch.equal(b.out_proj.weight, a.out_proj.weight[:, chans]) and torch.equal(b.norm.weight, a.norm.weight[chans])
    assert torch.equal(b.A_log, a.A_log[keep]) and torch.equal(b.D, a.D[keep]) and torch.equal(b.dt_bias, a.dt_bias[keep])
    assert torch.equal(b.conv1d.weight, a.conv1d.weight[torch.cat([chans, torch.arange(E, conv_dim)])])
    ids = IDS[:40].view(2, 20)
    state, out = small.init_state(2), []
    for t in range(20):
        logits, state = small.step(ids[:, t], state)
        out.append(logits)
    assert (torch.stack(out, 1) - small(ids)).abs().max() <= 1e-4


def test_recalibration_after_pruning_keeps_every_setting():
    """prune -> quantize recalibrates the pruned model with the user's own settings, not defaults."""
    from rnnquant.calibrate import CalibConfig, calibrate
    from rnnquant.models import fingerprint
    from rnnquant.pipeline import TextSource, recalibrated

    m = tiny_model("lstm")
    m.provenance = m.provenance.derive(fingerprint=fingerprint(m))
    cfg = CalibConfig(samples=3, seq_len=48, state_every=8, outlier_k=3.5, kurtosis_k=7.0, bins=64)
    calib = calibrate(m, IDS, cfg)
    again = recalibrated(m, calib, TextSource(lambda: IDS))
    assert again.meta["settings"] == cfg.to_dict()


@pytest.mark.parametrize("arch", ["rwkv", "rwkv7"])
def test_layer_removal_keeps_the_fixed_blocks(monkeypatch, arch):
    """RWKV's block 0 alone has the pre-norm (RWKV-7's is also the value residual's source): even
    when it scores as the least influential block, layer removal takes another."""
    from rnnquant.prune import apply
    from tests.conftest import tiny_model

    m = tiny_model(arch)
    monkeypatch.setattr(apply, "block_influence", lambda model, batches: torch.arange(len(model.arch_spec().layer_stack), dtype=torch.float))
    one = prune(m, parse_spec("layers:1"), None, calibration_batches(IDS, 4, 32, 4))
    assert one.provenance.prune_report["removed_layers"] == [1]


@torch.no_grad()
def test_rwkv7_head_removal_equals_silencing_those_heads():
    """Removing heads 1 and 3 of 4 from every layer is the model with those heads' o_proj columns
    zeroed: a head reaches the stream only through o_proj, its group norm is its own, and each
    layer reads layer 0's v_first head for head (so every layer drops the same heads)."""
    m = tiny_model("rwkv7")
    N, keep, drop = m.config["head_dim"], torch.tensor([0, 2]), [1, 3]
    small = remove_channels(m, "heads", [keep] * m.config["num_hidden_layers"])
    assert small.config["attn_heads"] == 2 and small.config["hidden_size"] == m.config["hidden_size"]
    silenced = copy.deepcopy(m)
    for layer in silenced.model.layers:
        for h in drop:
            layer.attn.o_proj.weight[:, h * N : (h + 1) * N] = 0
    ids = IDS[:40].view(2, 20)
    assert (small(ids) - silenced(ids)).abs().max() <= 1e-5
    state, out = small.init_state(2), []
    for t in range(20):  # the smaller state ([2, N, N] per layer) keeps the step contract
        logits, state = small.step(ids[:, t], state)
        out.append(logits)
    assert state[1].shape[1:] == (2, N, N) and (torch.stack(out, 1) - small(ids)).abs().max() <= 1e-4


@torch.no_grad()
def test_rwkv7_heads_are_chosen_once_for_every_layer():
    """Layer 0's strongest head is 0, layer 1's is 3 (their o_proj columns x10): `heads:0.5` keeps
    heads 0 and 3 in both layers, where choosing per layer would keep a different pair in each."""
    from rnnquant.calibrate import CalibConfig, calibrate

    m = tiny_model("rwkv7")
    N = m.config["head_dim"]
    for layer, h in zip(m.model.layers, (0, 3), strict=True):
        layer.attn.o_proj.weight[:, h * N : (h + 1) * N] *= 10
    m.provenance = m.provenance.derive(fingerprint=fingerprint(m))
    small = prune(m, PruneConfig(method="heads", sparsity=0.5), calibrate(m, IDS, CalibConfig(samples=4, seq_len=64)))
    assert small.config["attn_heads"] == 2
    for big, pruned in zip(m.model.layers, small.model.layers, strict=True):
        assert torch.equal(pruned.attn.r_k, big.attn.r_k[[0, 3]])
