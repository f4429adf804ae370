"""`rnnquant convert` on BlinkDL's own RWKV-7 ``.pth`` layout, checked against BlinkDL's x070
equations written out here in his form (state [H, N_v, N_k], ``S @ ab``, the softplus decay,
``w0/w1/w2`` LoRAs): an independent reference for the mapping and for the decay-form identity."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rnnquant.artifacts import load
from tests.conftest import TOKENIZER, VOCAB
from tests.helpers import assert_one_line_error, run_cli

D, H, N, L, FFN, R = 128, 2, 64, 2, 256, 8


def blinkdl_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=0.3):
        return (scale * torch.randn(*shape, generator=g)).to(torch.bfloat16)  # as downloaded: bf16

    t = {"emb.weight": rnd(VOCAB, D), "head.weight": rnd(VOCAB, D), "ln_out.weight": 1 + rnd(D, scale=0.1), "ln_out.bias": rnd(D, scale=0.1)}
    for i in range(L):
        b, a = f"blocks.{i}.", f"blocks.{i}.att."
        for ln in ("ln1", "ln2") + (("ln0",) if i == 0 else ()):
            t |= {f"{b}{ln}.weight": 1 + rnd(D, scale=0.1), f"{b}{ln}.bias": rnd(D, scale=0.1)}
        t |= {f"{a}x_{c}": torch.rand(1, 1, D, generator=g).to(torch.bfloat16) for c in "rwkvag"}
        for lora in "wav" if i else "wa":
            t |= {f"{a}{lora}0": rnd(1, 1, D), f"{a}{lora}1": rnd(D, R), f"{a}{lora}2": rnd(R, D)}
        t |= {f"{a}g1": rnd(D, R), f"{a}g2": rnd(R, D), f"{a}k_k": 0.7 + rnd(1, 1, D, scale=0.1), f"{a}k_a": 1 + rnd(1, 1, D, scale=0.1),
              f"{a}r_k": rnd(H, N), f"{a}ln_x.weight": 1 + rnd(D, scale=0.1), f"{a}ln_x.bias": rnd(D, scale=0.1)}
        t |= {f"{a}{n}.weight": rnd(D, D, scale=D**-0.5) for n in ("receptance", "key", "value", "output")}
        t |= {f"{b}ffn.x_k": torch.rand(1, 1, D, generator=g).to(torch.bfloat16), f"{b}ffn.key.weight": rnd(FFN, D, scale=D**-0.5),
              f"{b}ffn.value.weight": rnd(D, FFN, scale=FFN**-0.5)}
    return t


def blinkdl_forward(t: dict[str, torch.Tensor], ids: list[int]) -> torch.Tensor:
    """BlinkDL's RWKV-7 (x070) one token at a time -> logits [T, V]."""
    p = {k: v.float() for k, v in t.items()}

    def ln(x, name):
        return F.layer_norm(x, (D,), p[f"{name}.weight"], p[f"{name}.bias"], eps=1e-5)

    att_prev, ffn_prev = [torch.zeros(D) for _ in range(L)], [torch.zeros(D) for _ in range(L)]
    S = [torch.zeros(H, N, N) for _ in range(L)]  # [head, value, key]
    out = []
    for tok in ids:
        x = ln(p["emb.weight"][tok], "blocks.0.ln0")
        v_first = None
        for i in range(L):
            a = f"blocks.{i}.att."
            xx = ln(x, f"blocks.{i}.ln1")
            d = att_prev[i] - xx
            xr, xw, xk, xv, xa, xg = (xx + d * p[f"{a}x_{c}"].view(D) for c in "rwkvag")
            r, k, v = (p[f"{a}{n}.weight"] @ z for n, z in (("receptance", xr), ("key", xk), ("value", xv)))
            w = -F.softplus(-(p[f"{a}w0"].view(D) + torch.tanh(xw @ p[f"{a}w1"]) @ p[f"{a}w2"])) - 0.5
            aa = torch.sigmoid(p[f"{a}a0"].view(D) + (xa @ p[f"{a}a1"]) @ p[f"{a}a2"])
            gg = torch.sigmoid(xg @ p[f"{a}g1"]) @ p[f"{a}g2"]
            kk = F.normalize((k * p[f"{a}k_k"].view(D)).view(H, N), dim=-1).view(D)
            k = k * (1 + (aa - 1) * p[f"{a}k_a"].view(D))
            if i == 0:
                v_first = v
            else:
                v = v + (v_first - v) * torch.sigmoid(p[f"{a}v0"].view(D) + (xv @ p[f"{a}v1"]) @ p[f"{a}v2"])
            decay = torch.exp(-torch.exp(w))
            vk = v.view(H, N, 1) @ k.view(H, 1, N)
            ab = (-kk).view(H, N, 1) @ (kk * aa).view(H, 1, N)
            S[i] = S[i] * decay.view(H, 1, N) + S[i] @ ab + vk
            o = (S[i] @ r.view(H, N, 1)).view(D)
            o = F.group_norm(o.view(1, D), H, p[f"{a}ln_x.weight"], p[f"{a}ln_x.bias"], eps=64e-5).view(D)
            o = o + ((r * k * p[f"{a}r_k"].view(D)).view(H, N).sum(-1, keepdim=True) * v.view(H, N)).view(D)
            att_prev[i] = xx
            x = x + p[f"{a}output.weight"] @ (o * gg)
            xx = ln(x, f"blocks.{i}.ln2")
            kf = xx + (ffn_prev[i] - xx) * p[f"blocks.{i}.ffn.x_k"].view(D)
            ffn_prev[i] = xx
            x = x + p[f"blocks.{i}.ffn.value.weight"] @ torch.relu(p[f"blocks.{i}.ffn.key.weight"] @ kf) ** 2
        out.append(p["head.weight"] @ ln(x, "ln_out"))
    return torch.stack(out)


@torch.no_grad()
def test_converted_blinkdl_rwkv7_matches_his_equations(capsys, tmp_path):
    t = blinkdl_tensors()
    torch.save(t, tmp_path / "rwkv7.pth")
    code, out, err = run_cli(capsys, "convert", tmp_path / "rwkv7.pth", "--tokenizer", TOKENIZER, "--out", tmp_path / "m")
    assert code == 0, err
    assert "2 x RWKV-7 (hidden 128, 2 heads of 64" in out
    model = load(tmp_path / "m")
    ids = torch.randint(0, VOCAB, (24,), generator=torch.Generator().manual_seed(1))
    ref = blinkdl_forward(t, ids.tolist())
    assert (model(ids.view(1, -1))[0] - ref).abs().max() <= 1e-4 * ref.abs().max()


def test_an_extra_tensor_is_refused(capsys, tmp_path):
    t = blinkdl_tensors() | {"blocks.1.att.time_faaaa": torch.zeros(D)}
    torch.save(t, tmp_path / "rwkv7.pth")
    assert_one_line_error(capsys, "convert", tmp_path / "rwkv7.pth", "--tokenizer", TOKENIZER, "--out", tmp_path / "m",
                          match="this layout maps")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("missing", ["blocks.1.att.v1", "ln_out.bias"])
def test_a_missing_tensor_is_named(capsys, tmp_path, missing):
    t = blinkdl_tensors()
    del t[missing]
    torch.save(t, tmp_path / "rwkv7.pth")
    assert_one_line_error(capsys, "convert", tmp_path / "rwkv7.pth", "--tokenizer", TOKENIZER, "--out", tmp_path / "m", match=repr(missing))
