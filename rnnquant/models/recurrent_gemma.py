"""RecurrentGemma / Griffin in the Hugging Face ``RecurrentGemmaForCausalLM`` layout, rnnquant's own
implementation, with an O(1) step: the local attention keeps a fixed window of keys in the state.

Parameter names match ``transformers``: ``model.embed_tokens``, ``model.layers.{i}.{temporal_pre_norm,
temporal_block, channel_pre_norm, mlp_block.{gate_proj, up_proj, down_proj}}``, ``model.final_norm``,
``lm_head`` (tied by default). A temporal block is, by the ``block_types`` pattern (recurrent,
recurrent, attention, ...), either a recurrent block ``{linear_y, linear_x, conv_1d, rg_lru.{recurrent_param,
input_gate_weight, input_gate_bias, recurrent_gate_weight, recurrent_gate_bias}, linear_out}`` or a
local multi-query attention block ``{q_proj, k_proj, v_proj, o_proj}``.

Glossary (De et al. 2024, "Griffin"; Botev et al. 2024, "RecurrentGemma"):
    RMSNorm        x / rms(x) * (1 + w)            (the weight is stored as an offset from 1)
    recurrent      y = gelu(W_y x);  u = conv1d(W_x x) (depthwise, width K);  h = RG-LRU(u);  out = W_out (h * y)
    RG-LRU         i_t, r_t = sigmoid(blockdiag(W_i) u_t + b_i), sigmoid(blockdiag(W_r) u_t + b_r)
                   log a_t = -8 r_t softplus(Λ);  h_t = a_t h_{t-1} + sqrt(1 - a_t^2) (i_t u_t)
                   at position 0: a = 0 and no sqrt(1 - a^2) factor (transformers' reset)
    attention      softmax(q k^T / sqrt(d)) v over the last W positions (W = attention_window_size),
                   rotary on the first half of each head (partial_rotary_factor), num_key_value_heads shared k/v
    MLP            W_down (gelu(W_gate x) * W_up x), width intermediate_size // 2
    embedding      scaled by sqrt(hidden_size) rounded to bfloat16 (transformers' normalizer);
                   logits soft-capped: cap tanh(logits / cap)
State: recurrent blocks conv [K-1, L] + h [L] (float32) + pos; attention blocks the last W-1 keys
and values [W-1, KV, d] (rotary applied) + pos. pos [1] is the block's count of tokens seen (int64):
every block keeps its own, so each block's state is whole by itself.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import ArchSpec, RecurrentLM, StateSpec, Tap
from .ssm import RECURRENCE_MAX_TOKENS, linear_recurrence


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * (1.0 + self.weight)


def gelu(x):
    return F.gelu(x, approximate="tanh")


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Rglru(nn.Module):
    def __init__(self, L: int, heads: int):
        super().__init__()
        bw = L // heads
        self.heads, self.bw = heads, bw
        self.recurrent_param = nn.Parameter(torch.zeros(L))
        self.input_gate_weight = nn.Parameter(torch.zeros(heads, bw, bw))
        self.input_gate_bias = nn.Parameter(torch.zeros(heads, bw))
        self.recurrent_gate_weight = nn.Parameter(torch.zeros(heads, bw, bw))
        self.recurrent_gate_bias = nn.Parameter(torch.zeros(heads, bw))
        self.tap_a = Tap()

    def coefficients(self, u, positions):
        """u [..., L], positions [...] -> (a, the normalised input) [..., L]: h = a h_prev + x."""
        ub = u.reshape(*u.shape[:-1], self.heads, self.bw)
        gate_i = torch.sigmoid(torch.einsum("...hi,hij->...hj", ub, self.input_gate_weight) + self.input_gate_bias).flatten(-2)
        gate_r = torch.sigmoid(torch.einsum("...hi,hij->...hj", ub, self.recurrent_gate_weight) + self.recurrent_gate_bias).flatten(-2)
        log_a = -8.0 * gate_r * F.softplus(self.recurrent_param)
        reset = (positions == 0).unsqueeze(-1)
        a = self.tap_a(torch.where(reset, 0.0, torch.exp(log_a)))
        mult = torch.where(reset, 1.0, torch.sqrt(1 - torch.exp(2 * log_a)))
        return a, u * gate_i * mult


class RecurrentBlock(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        D, L, K = cfg["hidden_size"], cfg["lru_width"], cfg["conv1d_width"]
        self.K = K
        self.linear_y, self.linear_x = nn.Linear(D, L), nn.Linear(D, L)
        self.linear_out = nn.Linear(L, D)
        self.conv_1d = nn.Conv1d(L, L, kernel_size=K, groups=L, padding=K - 1)
        self.rg_lru = Rglru(L, cfg["num_attention_heads"])

    def forward(self, x, conv, h, pos):
        """x [B,T,D], conv [B,K-1,L], h [B,L], pos [B,1] -> (out, conv', h', pos')."""
        T = x.shape[1]
        y = gelu(self.linear_y(x))
        conv_in = torch.cat([conv, self.linear_x(x)], dim=1)  # [B,K-1+T,L]
        u = F.conv1d(conv_in.transpose(1, 2), self.conv_1d.weight, self.conv_1d.bias, groups=conv_in.shape[-1]).transpose(1, 2)
        a, xn = self.rg_lru.coefficients(u, pos + torch.arange(T, device=x.device))
        if torch.onnx.is_in_onnx_export():  # the prefill graph: no loop over time (a in [0, 1): the products cannot grow)
            hs = linear_recurrence(a, xn, h)
        else:
            hs = []
            for t in range(T):
                h = a[:, t] * h + xn[:, t]
                hs.append(h)
            hs = torch.stack(hs, 1)
        return self.linear_out(hs * y), conv_in[:, conv_in.shape[1] - (self.K - 1) :], hs[:, -1], pos + T

    def step(self, x, conv, h, pos):
        y = gelu(self.linear_y(x))
        conv_in = torch.cat([conv, self.linear_x(x).unsqueeze(1)], dim=1)  # [B,K,L]
        u = (conv_in * self.conv_1d.weight.squeeze(1).T).sum(1) + self.conv_1d.bias
        a, xn = self.rg_lru.coefficients(u, pos[:, 0])
        h = a * h + xn
        return self.linear_out(h * y), conv_in[:, 1:], h, pos + 1


class LocalAttention(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        D, H, KV, hd = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
        self.H, self.KV, self.hd, self.W = H, KV, hd, cfg["attention_window_size"]
        bias = cfg["attention_bias"]
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(D, H * hd, bias=bias), nn.Linear(D, KV * hd, bias=bias), nn.Linear(D, KV * hd, bias=bias)
        self.o_proj = nn.Linear(H * hd, D, bias=True)
        self.rot, self.theta = int(hd * cfg["partial_rotary_factor"]), cfg["rope_theta"]  # made per call: a buffer would sit on the meta device of a loaded model

    def _rope(self, x, positions):
        """x [B,T,heads,hd], positions [B,T] -> rotary on the first ``rot`` dims of each head."""
        rot = self.rot
        inv_freq = 1.0 / (self.theta ** (torch.arange(0, rot, 2, dtype=torch.float32, device=x.device) / rot))
        freqs = positions.unsqueeze(-1).float() * inv_freq  # [B,T,rot/2]
        emb = torch.cat((freqs, freqs), dim=-1).unsqueeze(2)  # [B,T,1,rot]
        xr, xp = x[..., :rot], x[..., rot:]
        return torch.cat([xr * emb.cos() + rotate_half(xr) * emb.sin(), xp], dim=-1)

    def forward(self, x, k_cache, v_cache, pos):
        """x [B,T,D]; k_cache, v_cache [B,W-1,KV,hd] (the last W-1 positions, oldest first); pos [B,1]."""
        B, T, _ = x.shape
        positions = pos + torch.arange(T, device=x.device)  # [B,T]
        q = self._rope(self.q_proj(x).reshape(B, T, self.H, self.hd), positions)
        k = self._rope(self.k_proj(x).reshape(B, T, self.KV, self.hd), positions)
        v = self.v_proj(x).reshape(B, T, self.KV, self.hd)
        keys, values = torch.cat([k_cache, k], 1), torch.cat([v_cache, v], 1)  # [B,S,KV,hd], S = W-1+T
        key_pos = pos + torch.arange(-(self.W - 1), T, device=x.device)  # [B,S]; < 0: an empty slot
        d = positions.unsqueeze(-1) - key_pos.unsqueeze(1)  # [B,T,S]
        visible = (d >= 0) & (d < self.W) & (key_pos.unsqueeze(1) >= 0)
        # each key/value head serves its group of H / KV query heads as one matmul (head h reads
        # kv head h // rep): no copy of the window per query head
        rep, S = self.H // self.KV, keys.shape[1]
        qg = q.reshape(B, T, self.KV, rep, self.hd).permute(0, 2, 1, 3, 4)  # [B,KV,T,rep,hd]
        kt = keys.permute(0, 2, 3, 1).unsqueeze(2)  # [B,KV,1,hd,S]
        vg = values.permute(0, 2, 1, 3).unsqueeze(2)  # [B,KV,1,S,hd]
        scores = (qg @ kt) * self.hd**-0.5  # [B,KV,T,rep,S]
        scores = scores.masked_fill(~visible[:, None, :, None, :], -math.inf)
        out = (torch.softmax(scores, dim=-1) @ vg).permute(0, 2, 1, 3, 4).reshape(B, T, self.H * self.hd)  # [B,T,(KV,rep,hd)]
        return self.o_proj(out), keys[:, S - (self.W - 1) :], values[:, S - (self.W - 1) :], pos + T

    def step(self, x, k_cache, v_cache, pos):
        out, k_cache, v_cache, pos = self.forward(x.unsqueeze(1), k_cache, v_cache, pos)
        return out[:, 0], k_cache, v_cache, pos


class MLP(nn.Module):
    def __init__(self, D: int, F_: int):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = nn.Linear(D, F_), nn.Linear(D, F_), nn.Linear(F_, D)

    def forward(self, x):
        return self.down_proj(gelu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, cfg: dict, kind: str):
        super().__init__()
        D, eps = cfg["hidden_size"], cfg["rms_norm_eps"]
        self.kind = kind
        self.temporal_pre_norm, self.channel_pre_norm = RMSNorm(D, eps), RMSNorm(D, eps)
        self.temporal_block = RecurrentBlock(cfg) if kind == "recurrent" else LocalAttention(cfg)
        self.mlp_block = MLP(D, cfg["intermediate_size"] // 2)


class Backbone(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg["vocab_size"], cfg["hidden_size"])
        self.layers = nn.ModuleList(Layer(cfg, kind) for kind in cfg["layer_kinds"])
        self.final_norm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])


def normalize_config(cfg: dict) -> dict:
    """Fill transformers' RecurrentGemmaConfig defaults; head_dim is recomputed as it does."""
    c = {"num_attention_heads": 10, "attention_window_size": 2048, "conv1d_width": 4, "logits_soft_cap": 30.0, "rms_norm_eps": 1e-6,
         "hidden_activation": "gelu_pytorch_tanh", "block_types": ["recurrent", "recurrent", "attention"], "attention_bias": False,
         "tie_word_embeddings": True, "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2} | dict(cfg)
    D = c["hidden_size"]
    c.setdefault("intermediate_size", 3 * D)
    c["lru_width"] = c.get("lru_width") or D
    c["head_dim"] = D // c["num_attention_heads"]
    c["num_key_value_heads"] = c.get("num_key_value_heads") or c["num_attention_heads"]
    rope = c.get("rope_parameters") or {}
    c["rope_theta"] = float(rope.get("rope_theta", c.get("rope_theta", 10000.0)))
    c["partial_rotary_factor"] = float(rope.get("partial_rotary_factor", c.get("partial_rotary_factor", 0.5)))
    c["attention_window_size"] = int(c.get("sliding_window") or c["attention_window_size"])
    c["layer_kinds"] = (list(c["block_types"]) * c["num_hidden_layers"])[: c["num_hidden_layers"]]
    if c["hidden_activation"] != "gelu_pytorch_tanh":
        raise ValueError(f"hidden_activation {c['hidden_activation']!r} is not supported (only 'gelu_pytorch_tanh')")
    if set(c["layer_kinds"]) - {"recurrent", "attention"}:
        raise ValueError(f"block_types must be 'recurrent' or 'attention', got {c['block_types']!r}")
    if c["num_attention_heads"] % c["num_key_value_heads"] or c["lru_width"] % c["num_attention_heads"]:
        raise ValueError("num_key_value_heads and lru_width must divide by num_attention_heads")
    if c["attention_window_size"] < 2:
        raise ValueError(f"attention_window_size must be at least 2, got {c['attention_window_size']}")
    return c


class RecurrentGemmaLM(RecurrentLM):
    model_type = "recurrent_gemma"
    roles = frozenset({"rg_x", "rg_y", "rg_out", "attn_q", "attn_k", "attn_v", "attn_o", "mlp_gate", "mlp_up", "mlp_down", "lm_head"})
    required_config = ("vocab_size", "hidden_size", "num_hidden_layers")
    parallel_prefill = True  # the RG-LRU as linear_recurrence under export; attention over cache + prompt at once
    prefill_max_tokens = RECURRENCE_MAX_TOKENS

    def __init__(self, config: dict):
        super().__init__(normalize_config(config))
        cfg = self.config
        self.model = Backbone(cfg)
        self.lm_head = nn.Linear(cfg["hidden_size"], cfg["vocab_size"], bias=False)
        if cfg["tie_word_embeddings"]:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.normalizer = torch.tensor(cfg["hidden_size"] ** 0.5, dtype=torch.bfloat16, device="cpu").item()  # transformers rounds it to bf16

    def stem(self, input_ids):
        return self.model.embed_tokens(input_ids) * self.normalizer

    def _layer(self, i, x, state, step: bool):
        layer = self.model.layers[i]
        temporal = layer.temporal_block.step if step else layer.temporal_block
        out, *state = temporal(layer.temporal_pre_norm(x), *state)
        x = x + out
        return x + layer.mlp_block(layer.channel_pre_norm(x)), tuple(state)

    def block(self, i, x, state):
        return self._layer(i, x, state, step=False)

    def tail(self, x):
        cap = self.config["logits_soft_cap"]
        logits = self.lm_head(self.model.final_norm(x))
        return torch.tanh(logits / cap) * cap

    def step(self, input_ids, state):
        x = self.stem(input_ids)
        new_state = []
        for i, part in enumerate(self._state_slices()):
            x, s = self._layer(i, x, state[part], step=True)
            new_state += s
        return self.tail(x), tuple(new_state)

    def arch_spec(self) -> ArchSpec:
        c = self.config
        L, K, W, KV, hd = c["lru_width"], c["conv1d_width"], c["attention_window_size"], c["num_key_value_heads"], c["head_dim"]
        linears, rot, taps, states = {}, [], {}, []
        floats = ["model.embed_tokens.weight", "model.final_norm.weight"]
        pos = {"dtype": torch.int64, "channel_dim": 0}
        for i, kind in enumerate(c["layer_kinds"]):
            p, t = f"model.layers.{i}", f"model.layers.{i}.temporal_block"
            if kind == "recurrent":
                linears |= {f"{t}.linear_x": "rg_x", f"{t}.linear_y": "rg_y", f"{t}.linear_out": "rg_out"}
                rot.append(f"{t}.linear_out")
                taps[f"{t}.rg_lru.tap_a"] = "rglru_a"
                floats += [f"{t}.conv_1d.weight", f"{t}.conv_1d.bias"] + [f"{t}.rg_lru.{n}" for n in (
                    "recurrent_param", "input_gate_weight", "input_gate_bias", "recurrent_gate_weight", "recurrent_gate_bias")]
                states += [StateSpec(f"conv_{i}", (K - 1, L), channel_dim=1, block=i), StateSpec(f"h_{i}", (L,), block=i),
                           StateSpec(f"pos_{i}", (1,), block=i, **pos)]
            else:
                linears |= {f"{t}.{n}_proj": f"attn_{n}" for n in "qkvo"}
                rot.append(f"{t}.o_proj")
                states += [StateSpec(f"k_{i}", (W - 1, KV, hd), channel_dim=1, block=i), StateSpec(f"v_{i}", (W - 1, KV, hd), channel_dim=1, block=i),
                           StateSpec(f"pos_{i}", (1,), block=i, **pos)]
            linears |= {f"{p}.mlp_block.{n}_proj": f"mlp_{n}" for n in ("gate", "up", "down")}
            rot.append(f"{p}.mlp_block.down_proj")
            floats += [f"{p}.temporal_pre_norm.weight", f"{p}.channel_pre_norm.weight"]
        linears["lm_head"] = "lm_head"
        layers = [f"model.layers.{i}" for i in range(c["num_hidden_layers"])]
        # no smoothing pairs: the norms scale by (1 + w), which a per-channel factor on w does not scale;
        # no channel groups: the MLP is intermediate_size // 2 wide, a width no config field states
        return ArchSpec(linears, [], rot, taps, floats, states, embedding="model.embed_tokens", layer_stack=layers,
                        layer_pattern_keys=["block_types"],  # removing a block keeps every other block's kind
                        block_exits={p: (f"{p}.channel_pre_norm", f"{p}.mlp_block.down_proj") for p in layers})
