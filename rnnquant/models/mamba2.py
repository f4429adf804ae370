"""Mamba-2 in the Hugging Face ``Mamba2ForCausalLM`` layout, rnnquant's own implementation.

Parameter names match ``transformers`` so its checkpoints load unchanged:
``backbone.embeddings``, ``backbone.layers.{i}.norm``, ``backbone.layers.{i}.mixer.{in_proj,
conv1d, dt_bias, A_log, D, norm, out_proj}``, ``backbone.norm_f``, ``lm_head`` (untied by default).

Per layer: in_proj -> [z (E) | xBC (E + 2 G N) | dt (H)]; a causal depthwise conv + SiLU over
xBC; the SSD scan (``ssd``) over x with per-head scalar decay; y * SiLU(z) through a grouped
RMSNorm (group size E / G) with a weight; out_proj. E = intermediate_size = H * P.
State per layer: conv_i [B, K-1, E + 2 G N] (channels last, as in Mamba-1) and ssm_i [B, H, N, P].
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import ArchSpec, ChannelGroup, ChannelLayer, StateSpec, Tap
from .mamba import MambaLM
from .ssd import SSD_MAX_TOKENS, ssd_scan, ssd_step
from .ssm import causal_conv_silu_step, softplus


class GatedRMSNorm(nn.Module):
    """norm(y * SiLU(z)) over groups of ``group`` channels, times a weight (a smoothing target:
    the weight scales each output channel, so SmoothQuant can fold into it)."""

    def __init__(self, dim: int, group: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.group, self.eps = group, eps

    def forward(self, y, z):
        x = y * F.silu(z)
        if self.group == x.shape[-1]:  # one group (n_groups 1): no reshape at all
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight
        g = x.reshape(*x.shape[:-1], -1, self.group)  # [..., E / group, group]
        g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + self.eps)
        return g.reshape(x.shape) * self.weight


class Mamba2Mixer(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        D, E, N, K = cfg["hidden_size"], cfg["intermediate_size"], cfg["state_size"], cfg["conv_kernel"]
        H, P, G = cfg["num_heads"], cfg["head_dim"], cfg["n_groups"]
        self.E, self.N, self.K, self.H, self.P, self.G = E, N, K, H, P, G
        self.conv_dim = E + 2 * G * N
        self.dt_limit = tuple(cfg["time_step_limit"])
        self.in_proj = nn.Linear(D, E + self.conv_dim + H, bias=cfg["use_bias"])
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, K, groups=self.conv_dim, padding=K - 1, bias=cfg["use_conv_bias"])
        self.dt_bias = nn.Parameter(torch.ones(H))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, H + 1, dtype=torch.float32)))
        self.D = nn.Parameter(torch.ones(H))
        self.norm = GatedRMSNorm(E, E // G, cfg["layer_norm_epsilon"])
        self.out_proj = nn.Linear(E, D, bias=cfg["use_bias"])
        # activation taps: SSD input x, step size dt, B, C, SSD output y (before the gate), gate z
        self.tap_x, self.tap_dt, self.tap_B, self.tap_C, self.tap_y, self.tap_z = (Tap() for _ in range(6))

    def _split(self, xc, dt, lead, act=F.silu):
        """Conv output [..., conv_dim] (``act`` applied here: the step's conv step applies it itself) and raw
        dt [..., H] -> x [..., H, P], dt [..., H], B, C [..., G, N]. ``lead``: the leading shape, (-1,) in the
        step (constant reshapes in its graph)."""
        xs, Bm, Cm = torch.split(act(xc), [self.E, self.G * self.N, self.G * self.N], dim=-1)
        dt = softplus(dt + self.dt_bias)
        if self.dt_limit != (0.0, math.inf):  # softplus is >= 0 already: the default limit is no op
            dt = dt.clamp(*self.dt_limit)
        # reshape, not unflatten: torch.onnx bakes the traced sizes of unflatten's other axes into the graph
        return (self.tap_x(xs).reshape(*lead, self.H, self.P), self.tap_dt(dt),
                self.tap_B(Bm).reshape(*lead, self.G, self.N), self.tap_C(Cm).reshape(*lead, self.G, self.N))

    def _out(self, y, z):
        return self.out_proj(self.norm(self.tap_y(y.flatten(-2)), self.tap_z(z)))

    def forward(self, x, conv_state, h):
        """x [B,T,D] -> (out [B,T,D], conv_state', h')."""
        z, xBC, dt = self.in_proj(x).split([self.E, self.conv_dim, self.H], dim=-1)
        conv_in = torch.cat([conv_state, xBC], dim=1)  # [B,K-1+T,conv_dim]
        xc = F.conv1d(conv_in.transpose(1, 2), self.conv1d.weight, self.conv1d.bias, groups=self.conv_dim).transpose(1, 2)
        xs, dt, Bm, Cm = self._split(xc, dt, dt.shape[:-1])
        y, h = ssd_scan(xs, dt, -torch.exp(self.A_log), Bm, Cm, self.D, h)
        return self._out(y, z), conv_in[:, conv_in.shape[1] - (self.K - 1) :], h

    def step(self, x, conv_state, h):
        """x [B,D] -> (out [B,D], conv_state', h')."""
        z, xBC, dt = self.in_proj(x).split([self.E, self.conv_dim, self.H], dim=-1)
        xc, conv_state = causal_conv_silu_step(conv_state, xBC, self.conv1d.weight.squeeze(1).T, self.conv1d.bias)  # weight [C,1,K] -> [K,C]
        xs, dt, Bm, Cm = self._split(xc, dt, (-1,), act=lambda t: t)
        y, h = ssd_step(xs, dt, -torch.exp(self.A_log), Bm, Cm, self.D, h, (self.H, self.P, self.G, self.N))
        return self._out(y, z), conv_state, h


def _limit(v) -> list[float]:
    """time_step_limit as two floats; transformers may write infinity as {"__float__": "Infinity"}."""
    def num(x):
        return float(x["__float__"]) if isinstance(x, dict) and "__float__" in x else float(x)

    lo, hi = (num(x) for x in v)
    return [lo, hi]


def normalize_config(cfg: dict) -> dict:
    """Fill Hugging Face Mamba2Config defaults and check the derived widths."""
    c = {
        "num_heads": 128, "head_dim": 64, "state_size": 128, "expand": 2, "conv_kernel": 4, "n_groups": 8,
        "use_bias": False, "use_conv_bias": True, "hidden_act": "silu", "layer_norm_epsilon": 1e-5,
        "time_step_limit": [0.0, math.inf], "chunk_size": 256, "tie_word_embeddings": False,
        "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
    } | dict(cfg)
    c["time_step_limit"] = _limit(c["time_step_limit"])
    c.setdefault("intermediate_size", int(c["expand"] * c["hidden_size"]))
    if c["intermediate_size"] != c["num_heads"] * c["head_dim"]:
        raise ValueError(f"hidden_size * expand ({c['intermediate_size']}) must equal num_heads * head_dim ({c['num_heads'] * c['head_dim']})")
    if c["num_heads"] % c["n_groups"]:
        raise ValueError(f"n_groups {c['n_groups']} must divide num_heads {c['num_heads']}")
    return c


class Mamba2LM(MambaLM):
    """Mamba-2: the Mamba backbone and step loop with the SSD mixer; its own ArchSpec."""

    model_type = "mamba2"
    roles = frozenset({"in_proj", "out_proj", "lm_head"})
    prefill_max_tokens = SSD_MAX_TOKENS
    normalize_config = staticmethod(normalize_config)
    make_mixer = staticmethod(Mamba2Mixer)
    # the original state-spaces/mamba2-* config.json: no model_type, and these fields instead
    foreign_layout = (("ssm_cfg", "d_model", "n_layer"), "the original state-spaces/mamba layout (d_model, n_layer, ssm_cfg); "
                      "rnnquant reads transformers' Mamba2ForCausalLM layout: model_type 'mamba2', hidden_size, "
                      "num_hidden_layers, num_heads, head_dim, and backbone.* tensor names")

    def arch_spec(self) -> ArchSpec:
        c = self.config
        linears, pairs, rot, taps, states = {}, [], [], {}, []
        floats = ["backbone.embeddings.weight", "backbone.norm_f.weight"]
        conv_dim = c["intermediate_size"] + 2 * c["n_groups"] * c["state_size"]
        for i in range(c["num_hidden_layers"]):
            p = f"backbone.layers.{i}"
            m = f"{p}.mixer"
            linears |= {f"{m}.in_proj": "in_proj", f"{m}.out_proj": "out_proj"}
            pairs += [(f"{p}.norm", [f"{m}.in_proj"]), (f"{m}.norm", [f"{m}.out_proj"])]  # the gated norm's weight too
            rot.append(f"{m}.out_proj")
            taps |= {f"{m}.tap_{k}": f"ssm_{k}" for k in ("x", "dt", "B", "C", "y", "z")}
            floats += [f"{m}.{n}" for n in ("A_log", "D", "dt_bias", "conv1d.weight", "norm.weight")] + [f"{p}.norm.weight"]
            floats += [f"{m}.conv1d.bias"] if c["use_conv_bias"] else []
            states += [StateSpec(f"conv_{i}", (c["conv_kernel"] - 1, conv_dim), channel_dim=1, block=i),
                       StateSpec(f"ssm_{i}", (c["num_heads"], c["state_size"], c["head_dim"]), channel_dim=0, block=i)]
        linears["lm_head"] = "lm_head"
        layers = [f"backbone.layers.{i}" for i in range(c["num_hidden_layers"])]
        # heads are removable when one group holds them all: with n_groups > 1 each group would have
        # to lose the same heads' worth (its B, C and its norm group are shared by its heads)
        groups = {"heads": ChannelGroup("num_heads", [self._head_slices(f"{p}.mixer") for p in layers],
                                        scaled_keys=(("intermediate_size", c["head_dim"]),))} if c["n_groups"] == 1 else {}
        return ArchSpec(linears, pairs, rot, taps, floats, states, embedding="backbone.embeddings", channel_groups=groups,
                        layer_stack=layers, block_exits={p: (f"{p}.norm", f"{p}.mixer.out_proj") for p in layers})

    def _head_slices(self, m: str) -> ChannelLayer:
        """Head h: its head_dim rows of in_proj's z and x parts and one row of its dt part, its x
        channels of the conv, dt_bias / A_log / D entry, its gated-norm weights and out_proj
        columns. Scored by the RMS of out_proj's input x its column norms, over the head."""
        c = self.config
        E, P = c["intermediate_size"], c["head_dim"]
        conv_dim = E + 2 * c["n_groups"] * c["state_size"]
        rows = ((0, P), (E, P), (E + conv_dim, 1))
        s = [(f"{m}.in_proj.weight", 0, rows), (f"{m}.conv1d.weight", 0, ((0, P),)), (f"{m}.dt_bias", 0, (0,)), (f"{m}.A_log", 0, (0,)),
             (f"{m}.D", 0, (0,)), (f"{m}.norm.weight", 0, ((0, P),)), (f"{m}.out_proj.weight", 1, ((0, P),))]
        s += [(f"{m}.in_proj.bias", 0, rows)] if c["use_bias"] else []
        s += [(f"{m}.conv1d.bias", 0, ((0, P),))] if c["use_conv_bias"] else []
        return ChannelLayer(s, (f"{m}.out_proj.input",), f"{m}.out_proj.weight", block=P)
