"""xLSTM (the mLSTM blocks of xLSTM-7B) in the Hugging Face ``xLSTMForCausalLM`` layout, rnnquant's own
implementation.

Parameter names match ``transformers``: ``backbone.embeddings``, ``backbone.blocks.{i}.{norm_mlstm,
mlstm_layer.{q, k, v, ogate_preact, igate_preact, fgate_preact, multihead_norm, out_proj}, norm_ffn,
ffn.{proj_up_gate, proj_up, proj_down}}`` (``weight_mode`` "single", xLSTM-7B's),
``backbone.out_norm``, ``lm_head`` (always separate: transformers ignores ``tie_word_embeddings``).

Glossary (Beck et al. 2024, "xLSTM"; Beck et al. 2025, "xLSTM 7B"), per head:
    q, k [d_qk], v [d_v]       projections of the block's normalised input x_t
    i~, f~                     input / forget gate pre-activations, soft-capped: cap tanh(. / cap)
    m_t = max(log sigmoid(f~_t) + m_{t-1}, i~_t)            the stabiliser (starts at 0, as transformers')
    f_t = exp(log sigmoid(f~_t) + m_{t-1} - m_t),  i_t = exp(i~_t - m_t)
    C_t = f_t C_{t-1} + i_t k v^T  [d_qk, d_v];   n_t = f_t n_{t-1} + i_t k  [d_qk]
    h_t = (q' C_t) / (max(|q' . n_t|, exp(-m_t)) + eps),  q' = q / sqrt(d_qk)
    out = W_o (sigmoid(o~) * MultiHeadLayerNorm(h));  FFN: W_down (SiLU(W_gate x) * W_up x)
Logits are soft-capped at ``output_logit_soft_cap``. The forward (prefill, calibration, training) runs
the chunkwise-parallel form (``mlstm_chunked``), the step the recurrence; they are the same function.
The exported prefill graph runs each call (up to PARALLEL_MAX_TOKENS) as one chunk: no loop over time. State per layer: C [H, d_qk, d_v], n [H, d_qk],
m [H] (all float32). d_qk = int(hidden_size * qk_dim_factor) / H, d_v likewise: the layer's own
widths (transformers' cache rounds the q/k width up to a multiple of 64, which breaks its own step
at other widths; this adapter does not inherit that).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import ArchSpec, ChannelGroup, ChannelLayer, RecurrentLM, StateSpec, Tap


def soft_cap(x, cap):
    return x if cap is None else cap * torch.tanh(x / cap)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None
        self.eps = eps

    def forward(self, x):
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight
        return x if self.bias is None else x + self.bias


class MultiHeadLayerNorm(nn.Module):
    """Layer norm over each head's d_v channels, then one weight (and bias) over all of them."""

    def __init__(self, heads: int, dim: int, eps: float, bias: bool):
        super().__init__()
        self.heads, self.eps = heads, eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, h):
        """h [..., H, d_v] -> [..., H * d_v]."""
        h = (h - h.mean(-1, keepdim=True)) * torch.rsqrt(h.var(-1, keepdim=True, unbiased=False) + self.eps)
        h = h.flatten(-2) * self.weight
        return h if self.bias is None else h + self.bias


def mlstm_step(q, k, v, i_pre, f_pre, C, n, m, eps: float):
    """One position of transformers' ``mlstm_recurrent_step_native``. q, k [B,H,d_qk], v [B,H,d_v],
    i_pre, f_pre, m [B,H] -> (h [B,H,d_v], C', n', m')."""
    log_f = F.logsigmoid(f_pre)
    m_new = torch.maximum(log_f + m, i_pre)
    f = torch.exp(log_f + m - m_new).unsqueeze(-1)
    i = torch.exp(i_pre - m_new).unsqueeze(-1)
    q = q * q.shape[-1] ** -0.5
    C = f.unsqueeze(-1) * C + i.unsqueeze(-1) * (k.unsqueeze(-1) * v.unsqueeze(-2))
    n = f * n + i * k
    num = (q.unsqueeze(-1) * C).sum(-2)  # q' C: [B,H,d_v]
    denom = torch.maximum((q * n).sum(-1, keepdim=True).abs(), torch.exp(-m_new).unsqueeze(-1)) + eps
    return num / denom, C, n, m_new


CHUNK = 64  # positions per chunk of the parallel form
# under export the whole prefill call is one chunk (a loop over chunks would be unrolled at the
# traced length): its [T, T] weights per head stay small up to the runner's window
PARALLEL_MAX_TOKENS = 128


def mlstm_chunked(q, k, v, i_pre, f_pre, C, n, m, eps: float, chunk: int = CHUNK):
    """The same recurrence over T positions, a chunk at a time (exact; no loop within a chunk).

    Within a chunk from (C_0, n_0, m_0), with b_t = sum_{l<=t} log sigmoid(f~_l) and the pairwise
    log weights D_tj = b_t - b_j + i~_j (j <= t), the stabiliser is m_t = max(b_t + m_0, max_j D_tj)
    (the recurrence's max, unrolled), and
        q'C_t = e^{b_t + m_0 - m_t} q'C_0 + sum_j e^{D_tj - m_t} (q'.k_j) v_j,   q'.n_t likewise;
    every exponent is <= 0. The chunk's end state is the same sums at t = C.
    q, k [B,T,H,d_qk], v [B,T,H,d_v], i_pre, f_pre [B,T,H]; C [B,H,d_qk,d_v], n [B,H,d_qk], m [B,H]
    -> (h [B,T,H,d_v], C', n', m')."""
    scale = q.shape[-1] ** -0.5
    outs = []
    for s in range(0, q.shape[1], chunk):
        q_, k_, v_ = (x[:, s : s + chunk].transpose(1, 2) for x in (q, k, v))  # [B,H,c,d]
        ig, lf = i_pre[:, s : s + chunk].transpose(1, 2), F.logsigmoid(f_pre[:, s : s + chunk]).transpose(1, 2)  # [B,H,c]
        b = lf.cumsum(-1)
        c = b.shape[-1]
        causal = torch.ones(c, c, dtype=torch.bool, device=q.device).tril()
        D = (b.unsqueeze(-1) - b.unsqueeze(-2) + ig.unsqueeze(-2)).masked_fill(~causal, -torch.inf)  # [B,H,t,j]
        inter = b + m.unsqueeze(-1)  # [B,H,c]
        m_t = torch.maximum(inter, D.amax(-1))
        g = torch.exp(inter - m_t)
        qs = q_ * scale
        S = (qs @ k_.transpose(-1, -2)) * torch.exp(D - m_t.unsqueeze(-1))  # [B,H,t,j]
        num = g.unsqueeze(-1) * (qs @ C) + S @ v_  # [B,H,c,d_v]
        qn = g * (qs @ n.unsqueeze(-1)).squeeze(-1) + S.sum(-1)  # [B,H,c]
        outs.append((num / (torch.maximum(qn.abs(), torch.exp(-m_t)) + eps).unsqueeze(-1)).transpose(1, 2))
        m_end = m_t[..., -1]
        w_end = torch.exp(b[..., -1:] - b + ig - m_end.unsqueeze(-1)).unsqueeze(-1)  # [B,H,c,1]
        g_end = torch.exp(b[..., -1] + m - m_end)  # [B,H]
        C = g_end[..., None, None] * C + (k_ * w_end).transpose(-1, -2) @ v_
        n = g_end.unsqueeze(-1) * n + (k_ * w_end).sum(-2)
        m = m_end
    return torch.cat(outs, 1), C, n, m


class MLSTMLayer(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        D, H, bias = cfg["hidden_size"], cfg["num_heads"], cfg["use_bias"]
        self.H, self.qk, self.vd = H, int(D * cfg["qk_dim_factor"]), int(D * cfg["v_dim_factor"])
        self.cap, self.eps = cfg["gate_soft_cap"], cfg["eps"]
        self.q, self.k = nn.Linear(D, self.qk, bias=bias), nn.Linear(D, self.qk, bias=bias)
        self.v, self.ogate_preact = nn.Linear(D, self.vd, bias=bias), nn.Linear(D, self.vd, bias=bias)
        self.igate_preact, self.fgate_preact = nn.Linear(D, H, bias=True), nn.Linear(D, H, bias=True)
        self.multihead_norm = MultiHeadLayerNorm(H, self.vd, cfg["norm_eps"], bias)
        self.out_proj = nn.Linear(self.vd, D, bias=bias)
        self.tap_i, self.tap_f, self.tap_h = Tap(), Tap(), Tap()

    def _inputs(self, x):
        """x [..., D] -> q, k [..., H, d_qk], v [..., H, d_v], o~ [..., d_v], i~, f~ [..., H]."""
        q, k, v, o = self.q(x), self.k(x), self.v(x), self.ogate_preact(x)
        i, f = soft_cap(self.igate_preact(x), self.cap), soft_cap(self.fgate_preact(x), self.cap)
        heads = (lambda t: t.reshape(*t.shape[:-1], self.H, -1))  # noqa: E731
        return heads(q), heads(k), heads(v), o, self.tap_i(i), self.tap_f(f)

    def _out(self, h, o):
        return self.out_proj(torch.sigmoid(o) * self.multihead_norm(self.tap_h(h)))

    def forward(self, x, C, n, m):
        """x [B,T,D] -> (out [B,T,D], C', n', m')."""
        q, k, v, o, i, f = self._inputs(x)
        chunk = PARALLEL_MAX_TOKENS if torch.onnx.is_in_onnx_export() else CHUNK
        h, C, n, m = mlstm_chunked(q, k, v, i, f, C, n, m, self.eps, chunk)
        return self._out(h, o), C, n, m

    def step(self, x, C, n, m):
        q, k, v, o, i, f = self._inputs(x)
        h, C, n, m = mlstm_step(q, k, v, i, f, C, n, m, self.eps)
        return self._out(h, o), C, n, m


class FeedForward(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        D, bias = cfg["hidden_size"], cfg["use_bias"]
        F_ = cfg["ffn_dim"]
        self.proj_up_gate, self.proj_up = nn.Linear(D, F_, bias=bias), nn.Linear(D, F_, bias=bias)
        self.proj_down = nn.Linear(F_, D, bias=bias)

    def forward(self, x):
        return self.proj_down(F.silu(self.proj_up_gate(x)) * self.proj_up(x))


class Block(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        D, eps, bias = cfg["hidden_size"], cfg["norm_eps"], cfg["use_bias"]
        self.norm_mlstm, self.norm_ffn = RMSNorm(D, eps, bias), RMSNorm(D, eps, bias)
        self.mlstm_layer = MLSTMLayer(cfg)
        self.ffn = FeedForward(cfg)


class Backbone(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.embeddings = nn.Embedding(cfg["vocab_size"], cfg["hidden_size"])
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg["num_hidden_layers"]))
        self.out_norm = RMSNorm(cfg["hidden_size"], cfg["norm_eps"], False)


def normalize_config(cfg: dict) -> dict:
    """Fill transformers' xLSTMConfig defaults; the widths are the layers' own (not the cache's rounded ones)."""
    c = {"num_heads": 8, "use_bias": False, "norm_eps": 1e-6, "qk_dim_factor": 0.5, "v_dim_factor": 1.0, "eps": 1e-6,
         "ffn_proj_factor": 2.667, "ffn_round_up_to_multiple_of": 64, "gate_soft_cap": 15.0, "output_logit_soft_cap": 30.0,
         "weight_mode": "single", "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1} | dict(cfg)
    c["hidden_size"] = c.get("hidden_size") or c.get("embedding_dim")
    c["num_hidden_layers"] = c.get("num_hidden_layers") or c.get("num_blocks")
    c["embedding_dim"], c["num_blocks"] = c["hidden_size"], c["num_hidden_layers"]
    c["tie_word_embeddings"] = False  # transformers ignores the flag: its head is always its own
    m = c["ffn_round_up_to_multiple_of"]
    c.setdefault("ffn_dim", int(((c["hidden_size"] * c["ffn_proj_factor"] + m - 1) // m) * m))  # transformers rounding; a pruned model keeps its own
    D, H = c["hidden_size"], c["num_heads"]
    for key in ("qk_dim_factor", "v_dim_factor"):
        if int(D * c[key]) % H:
            raise ValueError(f"hidden_size x {key} ({int(D * c[key])}) must be a multiple of num_heads ({H})")
    if c["weight_mode"] != "single":
        raise ValueError(f"weight_mode {c['weight_mode']!r} is not supported (only 'single', xLSTM-7B's)")
    return c


class XLSTMLM(RecurrentLM):
    model_type = "xlstm"
    roles = frozenset({"mlstm_qkvo", "mlstm_gates", "mlstm_out", "ffn_up", "ffn_down", "lm_head"})
    required_config = ("vocab_size",)
    parallel_prefill = True  # one chunk of mlstm_chunked per call under export
    prefill_max_tokens = PARALLEL_MAX_TOKENS

    def __init__(self, config: dict):
        super().__init__(normalize_config(config))
        self.backbone = Backbone(self.config)
        self.lm_head = nn.Linear(self.config["hidden_size"], self.config["vocab_size"], bias=False)

    def stem(self, input_ids):
        return self.backbone.embeddings(input_ids)

    def block(self, i, x, state):
        blk = self.backbone.blocks[i]
        out, C, n, m = blk.mlstm_layer(blk.norm_mlstm(x), *state)
        x = x + out
        return x + blk.ffn(blk.norm_ffn(x)), (C, n, m)

    def tail(self, x):
        return soft_cap(self.lm_head(self.backbone.out_norm(x)), self.config["output_logit_soft_cap"])

    def step(self, input_ids, state):
        x = self.backbone.embeddings(input_ids)
        new_state = []
        for i, blk in enumerate(self.backbone.blocks):
            out, C, n, m = blk.mlstm_layer.step(blk.norm_mlstm(x), *state[3 * i : 3 * i + 3])
            x = x + out
            x = x + blk.ffn(blk.norm_ffn(x))
            new_state += [C, n, m]
        return self.tail(x), tuple(new_state)

    def arch_spec(self) -> ArchSpec:
        c = self.config
        H = c["num_heads"]
        dqk, dv = int(c["hidden_size"] * c["qk_dim_factor"]) // H, int(c["hidden_size"] * c["v_dim_factor"]) // H
        linears, pairs, rot, taps, states = {}, [], [], {}, []
        floats = ["backbone.embeddings.weight", "backbone.out_norm.weight"]
        bias = ("weight", "bias") if c["use_bias"] else ("weight",)
        for i in range(c["num_hidden_layers"]):
            p = f"backbone.blocks.{i}"
            m, f = f"{p}.mlstm_layer", f"{p}.ffn"
            mix, gates = [f"{m}.{n}" for n in ("q", "k", "v", "ogate_preact")], [f"{m}.igate_preact", f"{m}.fgate_preact"]
            ups = [f"{f}.proj_up_gate", f"{f}.proj_up"]
            linears |= {n: "mlstm_qkvo" for n in mix} | {n: "mlstm_gates" for n in gates} | {f"{m}.out_proj": "mlstm_out"}
            linears |= {n: "ffn_up" for n in ups} | {f"{f}.proj_down": "ffn_down"}
            pairs += [(f"{p}.norm_mlstm", mix + gates), (f"{p}.norm_ffn", ups)]
            rot += [f"{m}.out_proj", f"{f}.proj_down"]
            taps |= {f"{m}.tap_i": "mlstm_igate", f"{m}.tap_f": "mlstm_fgate", f"{m}.tap_h": "mlstm_h"}
            floats += [f"{p}.{nm}.{w}" for nm in ("norm_mlstm", "norm_ffn") for w in bias] + [f"{m}.multihead_norm.{w}" for w in bias]
            states += [StateSpec(f"C_{i}", (H, dqk, dv), block=i), StateSpec(f"n_{i}", (H, dqk), block=i), StateSpec(f"m_{i}", (H,), block=i)]
        linears["lm_head"] = "lm_head"
        layers = [f"backbone.blocks.{i}" for i in range(c["num_hidden_layers"])]
        ffn = ChannelGroup("ffn_dim", [ChannelLayer(
            [(f"{b}.ffn.proj_up_gate.weight", 0, (0,)), (f"{b}.ffn.proj_up.weight", 0, (0,)), (f"{b}.ffn.proj_down.weight", 1, (0,))]
            + ([(f"{b}.ffn.proj_up_gate.bias", 0, (0,)), (f"{b}.ffn.proj_up.bias", 0, (0,))] if c["use_bias"] else []),
            (f"{b}.ffn.proj_down.input",), f"{b}.ffn.proj_down.weight") for b in layers])
        return ArchSpec(linears, pairs, rot, taps, floats, states, embedding="backbone.embeddings", channel_groups={"ffn": ffn},
                        layer_stack=layers, block_exits={p: (f"{p}.norm_ffn", f"{p}.ffn.proj_down") for p in layers})
