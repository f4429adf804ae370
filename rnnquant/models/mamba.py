"""Mamba (Mamba-1) in the Hugging Face ``MambaForCausalLM`` layout, rnnquant's own implementation.

Parameter names match ``transformers`` so its checkpoints load unchanged:
``backbone.embeddings``, ``backbone.layers.{i}.norm``, ``backbone.layers.{i}.mixer.{in_proj,
conv1d, x_proj, dt_proj, out_proj, A_log, D}``, ``backbone.norm_f``, ``lm_head`` (tied by default).

Per layer the state is (conv_i [B, K-1, E], ssm_i [B, N, E]): the last K-1 conv inputs and
the SSM state h. E = intermediate_size (d_inner), N = state_size, K = conv_kernel. Both keep
d_inner last (Hugging Face's cache has it first), so the step's elementwise ops run over whole
contiguous rows of E (see ``ssm``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rnnquant.kernels.fused import GatedSelectiveStep, fusing

from .base import ArchSpec, ChannelGroup, ChannelLayer, RecurrentLM, StateSpec, Tap
from .ssm import PARALLEL_SCAN_MAX_TOKENS, causal_conv_silu_step, selective_scan, selective_state_update, softplus


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def weightless_rms(x, eps: float):
    """FalconMamba's normalisation of dt, B and C before the scan (no weight)."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


class MambaMixer(nn.Module):
    def __init__(self, cfg: dict, bcdt_rms_eps: float | None = None):
        super().__init__()
        self.bcdt_rms_eps = bcdt_rms_eps  # FalconMamba: dt, B, C RMS-normalised (mixer_rms_eps); Mamba: None
        D, E, N, K, R = cfg["hidden_size"], cfg["intermediate_size"], cfg["state_size"], cfg["conv_kernel"], cfg["time_step_rank"]
        self.E, self.N, self.K, self.R = E, N, K, R
        self.in_proj = nn.Linear(D, 2 * E, bias=cfg["use_bias"])
        self.conv1d = nn.Conv1d(E, E, K, groups=E, padding=K - 1, bias=cfg["use_conv_bias"])
        self.x_proj = nn.Linear(E, R + 2 * N, bias=False)
        self.dt_proj = nn.Linear(R, E, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(E, 1))
        self.D = nn.Parameter(torch.ones(E))
        self.out_proj = nn.Linear(E, D, bias=cfg["use_bias"])
        # activation taps: SSM input x, step size dt, B, C, SSM output y (before gating), gate z
        self.tap_x, self.tap_dt, self.tap_B, self.tap_C, self.tap_y, self.tap_z = (Tap() for _ in range(6))

    def _ssm_params(self, xc, act=softplus):
        """xc [..., E] -> dt [..., E] (``act`` of dt_proj's output), B [..., N], C [..., N] (shared by forward and step)."""
        dt, Bm, Cm = torch.split(self.x_proj(xc), [self.R, self.N, self.N], dim=-1)
        if self.bcdt_rms_eps is not None:
            dt, Bm, Cm = (weightless_rms(t, self.bcdt_rms_eps) for t in (dt, Bm, Cm))
        dt = self.tap_dt(act(self.dt_proj(dt)))
        return dt, self.tap_B(Bm), self.tap_C(Cm)

    def _gate_out(self, y, z):
        return self.out_proj(self.tap_y(y) * F.silu(self.tap_z(z)))

    def forward(self, x, conv_state, h):
        """x [B,T,D] -> (out [B,T,D], conv_state', h')."""
        xs, z = self.in_proj(x).split([self.E, self.E], dim=-1)  # [B,T,E] each
        conv_in = torch.cat([conv_state, xs], dim=1)  # [B,K-1+T,E]
        xc = F.conv1d(conv_in.transpose(1, 2), self.conv1d.weight, self.conv1d.bias, groups=self.E)  # [B,E,T]
        xc = self.tap_x(F.silu(xc).transpose(1, 2))  # [B,T,E]
        dt, Bm, Cm = self._ssm_params(xc)
        y, h = selective_scan(xc, dt, -torch.exp(self.A_log), Bm, Cm, self.D, h)
        return self._gate_out(y, z), conv_in[:, conv_in.shape[1] - (self.K - 1) :], h

    def step(self, x, conv_state, h):
        """x [B,D] -> (out [B,D], conv_state', h')."""
        xs, z = self.in_proj(x).split([self.E, self.E], dim=-1)  # [B,E] each (split: one ONNX op, chunk traces to 8)
        xc, conv_state = causal_conv_silu_step(conv_state, xs, self.conv1d.weight.squeeze(1).T, self.conv1d.bias)  # weight [E,1,K] -> [K,E]
        xc = self.tap_x(xc)
        if fusing():  # `export --fused`: softplus, recurrence, readout, D skip and gate as one op (no tap records under export)
            dt, Bm, Cm = self._ssm_params(xc, act=lambda t: t)
            y, h = GatedSelectiveStep.apply(xc, dt, (-torch.exp(self.A_log)).T, Bm, Cm, self.D, z, h)
            return self.out_proj(y), conv_state, h
        dt, Bm, Cm = self._ssm_params(xc)
        y, h = selective_state_update(xc, dt, -torch.exp(self.A_log), Bm, Cm, self.D, h)
        return self._gate_out(y, z), conv_state, h


class MambaBlock(nn.Module):
    def __init__(self, cfg: dict, mixer: nn.Module):
        super().__init__()
        self.norm = RMSNorm(cfg["hidden_size"], cfg["layer_norm_epsilon"])
        self.mixer = mixer


class Backbone(nn.Module):
    """embeddings -> layers of x + mixer(norm(x)) -> norm_f: the layout Mamba, FalconMamba and Mamba-2 share."""

    def __init__(self, cfg: dict, make_mixer):
        super().__init__()
        self.embeddings = nn.Embedding(cfg["vocab_size"], cfg["hidden_size"])
        self.layers = nn.ModuleList(MambaBlock(cfg, make_mixer(cfg)) for _ in range(cfg["num_hidden_layers"]))
        self.norm_f = RMSNorm(cfg["hidden_size"], cfg["layer_norm_epsilon"])


def normalize_config(cfg: dict) -> dict:
    """Fill Hugging Face MambaConfig defaults and resolve derived fields."""
    c = {
        "state_size": 16, "layer_norm_epsilon": 1e-5, "expand": 2, "conv_kernel": 4, "use_bias": False,
        "use_conv_bias": True, "time_step_rank": "auto", "tie_word_embeddings": True, "hidden_act": "silu",
        "bos_token_id": 0, "eos_token_id": 0,
    } | dict(cfg)
    c.setdefault("intermediate_size", int(c["expand"] * c["hidden_size"]))
    if c["time_step_rank"] == "auto":
        c["time_step_rank"] = math.ceil(c["hidden_size"] / 16)
    return c


class MambaLM(RecurrentLM):
    model_type = "mamba"
    roles = frozenset({"in_proj", "x_proj", "dt_proj", "out_proj", "lm_head"})
    parallel_prefill = True
    prefill_max_tokens = PARALLEL_SCAN_MAX_TOKENS
    required_config = ("vocab_size", "hidden_size", "num_hidden_layers")

    def __init__(self, config: dict):
        super().__init__(self.normalize_config(config))
        cfg = self.config
        if cfg["hidden_act"] != "silu":
            raise ValueError(f"hidden_act {cfg['hidden_act']!r} is not supported (only 'silu')")
        self.backbone = Backbone(cfg, self.make_mixer)
        self.lm_head = nn.Linear(cfg["hidden_size"], cfg["vocab_size"], bias=False)
        if cfg["tie_word_embeddings"]:
            self.lm_head.weight = self.backbone.embeddings.weight

    normalize_config = staticmethod(normalize_config)

    @staticmethod
    def make_mixer(cfg: dict) -> nn.Module:
        return MambaMixer(cfg)

    def stem(self, input_ids):
        return self.backbone.embeddings(input_ids)

    def block(self, i, x, state):
        layer = self.backbone.layers[i]
        out, conv, h = layer.mixer(layer.norm(x), *state)
        return x + out, (conv, h)

    def tail(self, x):
        return self.lm_head(self.backbone.norm_f(x))

    def step(self, input_ids, state):
        x = self.backbone.embeddings(input_ids)  # [B,D]
        new_state = []
        for i, layer in enumerate(self.backbone.layers):
            out, conv, h = layer.mixer.step(layer.norm(x), state[2 * i], state[2 * i + 1])
            x = x + out
            new_state += [conv, h]
        return self.lm_head(self.backbone.norm_f(x)), tuple(new_state)

    def arch_spec(self) -> ArchSpec:
        c = self.config
        E, N, K = c["intermediate_size"], c["state_size"], c["conv_kernel"]
        linears, pairs, rot, taps, floats, states = {}, [], [], {}, ["backbone.embeddings.weight", "backbone.norm_f.weight"], []
        for i in range(c["num_hidden_layers"]):
            p = f"backbone.layers.{i}"
            m = f"{p}.mixer"
            for role in ("in_proj", "x_proj", "dt_proj", "out_proj"):
                linears[f"{m}.{role}"] = role
            pairs.append((f"{p}.norm", [f"{m}.in_proj"]))
            rot.append(f"{m}.out_proj")
            taps |= {f"{m}.tap_{k}": f"ssm_{k}" for k in ("x", "dt", "B", "C", "y", "z")}
            floats += [f"{m}.A_log", f"{m}.D", f"{m}.dt_proj.bias", f"{m}.conv1d.weight", f"{p}.norm.weight"]
            floats += [f"{m}.conv1d.bias"] if c["use_conv_bias"] else []
            states += [StateSpec(f"conv_{i}", (K - 1, E), channel_dim=1, block=i), StateSpec(f"ssm_{i}", (N, E), channel_dim=1, block=i)]
        linears["lm_head"] = "lm_head"
        layers = [f"backbone.layers.{i}" for i in range(c["num_hidden_layers"])]
        d_inner = ChannelGroup("intermediate_size", [self._d_inner_slices(f"{p}.mixer") for p in layers])
        d_state = ChannelGroup("state_size", [self._d_state_slices(f"{p}.mixer") for p in layers])
        return ArchSpec(linears, pairs, rot, taps, floats, states, embedding="backbone.embeddings",
                        channel_groups={"d_inner": d_inner, "d_state": d_state},
                        layer_stack=layers, block_exits={p: (f"{p}.norm", f"{p}.mixer.out_proj") for p in layers})

    def _d_inner_slices(self, m: str) -> ChannelLayer:
        """A d_inner channel e: in_proj rows e (x) and E+e (z), its conv filter, x_proj column,
        dt_proj row, A_log row, D, out_proj column."""
        E = self.config["intermediate_size"]
        s = [(f"{m}.in_proj.weight", 0, (0, E)), (f"{m}.conv1d.weight", 0, (0,)), (f"{m}.x_proj.weight", 1, (0,)),
             (f"{m}.dt_proj.weight", 0, (0,)), (f"{m}.dt_proj.bias", 0, (0,)), (f"{m}.A_log", 0, (0,)), (f"{m}.D", 0, (0,)),
             (f"{m}.out_proj.weight", 1, (0,))]
        s += [(f"{m}.in_proj.bias", 0, (0, E))] if self.config["use_bias"] else []
        s += [(f"{m}.conv1d.bias", 0, (0,))] if self.config["use_conv_bias"] else []
        return ChannelLayer(s, (f"{m}.out_proj.input",), f"{m}.out_proj.weight")

    def _d_state_slices(self, m: str) -> ChannelLayer:
        """A state dimension n: x_proj rows R+n (B_n) and R+N+n (C_n) and A_log column n."""
        R, N = self.config["time_step_rank"], self.config["state_size"]
        return ChannelLayer([(f"{m}.x_proj.weight", 0, (R, R + N)), (f"{m}.A_log", 1, (0,))], (f"{m}.tap_B", f"{m}.tap_C"), None)


class FalconMambaLM(MambaLM):
    """FalconMamba (``FalconMambaForCausalLM``): Mamba-1 with weightless RMS norms of dt, B and C
    before the scan; the same layout, parameters and ArchSpec."""

    model_type = "falcon_mamba"

    @staticmethod
    def normalize_config(cfg: dict) -> dict:
        return normalize_config({"mixer_rms_eps": 1e-6} | dict(cfg))

    @staticmethod
    def make_mixer(cfg: dict) -> nn.Module:
        return MambaMixer(cfg, bcdt_rms_eps=cfg["mixer_rms_eps"])
