"""RWKV-7 ("Goose") in the flash-linear-attention ``RWKV7ForCausalLM`` layout (fla-hub checkpoints),
rnnquant's own implementation.

Parameter names match fla's so its checkpoints load unchanged: ``model.embeddings``,
``model.layers.{i}.{pre_norm (layer 0), attn_norm, ffn_norm}``, ``model.layers.{i}.attn.{x_r, x_w,
x_k, x_v, x_a, x_g, k_k, k_a, r_k, r_proj, k_proj, v_proj, o_proj, w_lora, a_lora, v_lora (layers > 0),
g_lora, g_norm}``, ``model.layers.{i}.ffn.{x_k, key, value}``, ``model.norm``, ``lm_head``.

Glossary (Peng et al. 2025, "RWKV-7 Goose with Expressive Dynamic State Evolution"; fla's
``layers/rwkv7.py``). Per layer, x_t the normalised input [D], x_{t-1} the token-shift state:
    x_c = x_t + (x_{t-1} - x_t) * mu_c            c in r, w, k, v, a, g (mu = x_r ... x_g)
    r, k, v = W_r x_r, W_k x_k, W_v x_v           [H, N] per head (N = head_dim)
    w = -e^-0.5 sigmoid(lora_w(x_w))              log decay; the decay is exp(w) in (e^-e^-0.5, 1)
    v <- v + (v_first - v) sigmoid(lora_v(x_v))   value residual to layer 0's v (layer 0: v_first = v)
    a = sigmoid(lora_a(x_a)),  g = lora_g(x_g)    in-context learning rate, output gate
    kk = L2norm(k * k_k) per head;  k <- k (1 + (a - 1) k_a)
    S_t = diag(exp(w)) S + (kk a) ((-kk)^T S) + k v^T      the generalized delta rule, S [N_k, N_v] per head
    o = r^T S_t;  o = GroupNorm_H(o);  o = (o + (r . k . r_k) v) g;  out = W_o o
    FFN: W_value relu(W_key (x + (x_{t-1} - x) mu_k))^2

Between blocks the stream is [x | v_first] ([..., D + H N]): layer 0 writes v_first, the later
layers read it, so the block-by-block engine carries it like the residual stream.
State per layer: attn_shift [D], wkv [H, N, N] (float32 always), ffn_shift [D].

H is ``attn_heads`` (rnnquant's key; default hidden_size / head_dim, fla's only layout): head pruning
keeps H N < D. Every layer keeps the same heads, since each one reads layer 0's v_first head for head.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import ArchSpec, ChannelGroup, ChannelLayer, RecurrentLM, StateSpec, Tap

LOG_DECAY_SCALE = -0.6065306597126334  # -e^-0.5: fla's w = -e^-0.5 * sigmoid(...)


class LoRA(nn.Module):
    """fla's LoRA: Linear(D -> r, no bias), activation, Linear(r -> out)."""

    def __init__(self, dim: int, out: int, rank: int, activation: str | None, bias: bool = True):
        super().__init__()
        act = {"tanh": nn.Tanh(), "sigmoid": nn.Sigmoid(), None: nn.Identity()}[activation]
        self.lora = nn.Sequential(nn.Linear(dim, rank, bias=False), act, nn.Linear(rank, out, bias=bias))

    def forward(self, x):
        return self.lora(x)


def addcmul(x, t1, t2):
    """x + t1 t2. Under export as the two ops ONNX Runtime runs anyway: ``torch.addcmul`` traces a third,
    a Mul by its value 1 (the same numbers: multiplying by 1 is exact)."""
    return x + t1 * t2 if torch.onnx.is_in_onnx_export() else torch.addcmul(x, t1, t2)


def token_mix(x, prev, mu):
    """x + (x_{t-1} - x) mu; mu stored [1, 1, D] or [D], used [D] so that a step's [B, D] stays [B, D]."""
    return addcmul(x, prev - x, mu.reshape(mu.shape[-1]))


def split_heads(t, H: int):
    """[..., H N] -> [..., H, N]."""
    return t.reshape(*t.shape[:-1], H, t.shape[-1] // H)


def shifted(x, prev):
    """x [B,T,D], the previous position's x [B,D] -> x_{t-1} for every t [B,T,D]."""
    return torch.cat([prev.unsqueeze(1), x[:, :-1]], dim=1)


def delta_rule_step(S, r, w, k, v, kk, a):
    """One position of the generalized delta rule. S [B,H,N,N] (key x value); r, w, k, kk, a [B,H,N];
    v [B,H,N] -> (o [B,H,N], S')."""
    sa = (-kk).unsqueeze(-2) @ S  # (-kk)^T S: [B,H,1,N], from the S before decay (a matmul: one pass over S, no strided sum)
    S = S * torch.exp(w).unsqueeze(-1) + (kk * a).unsqueeze(-1) * sa + k.unsqueeze(-1) * v.unsqueeze(-2)
    return (r.unsqueeze(-2) @ S).squeeze(-2), S


CHUNK = 16  # positions per chunk of the parallel form


def delta_rule_chunked(S, r, w, k, v, kk, a, chunk: int = CHUNK):
    """The same recurrence over T positions, a chunk at a time (exact; no loop within a chunk).

    Within a chunk from state S_0, with G_t = sum_{i<=t} w_i (cumulative log decay) and the
    removal key a_t = -kk_t, write-back b_t = kk_t a_t, the read-out u_t = a_t^T S_{t-1} solves a
    unit lower-triangular system:
        u_t = (a_t e^{G_{t-1}})^T S_0 + sum_{j<t} [a_t e^{G_{t-1}-G_j} . b_j] u_j + [a_t e^{G_{t-1}-G_j} . k_j] v_j
    and then  o_t = (r_t e^{G_t})^T S_0 + sum_{j<=t} [r_t e^{G_t-G_j} . b_j] u_j + [r_t e^{G_t-G_j} . k_j] v_j,
    S_C = e^{G_C} S_0 + sum_j e^{G_C-G_j} (b_j u_j + k_j v_j^T).
    The pairwise decays e^{G_t-G_j} factor as e^{G_t} e^{-G_j} (plain matmuls, no [C, C, N]
    tensor): RWKV-7's log decay is in (-e^-0.5, 0), so over a chunk of 16 no factor exceeds
    e^{9.7} and float32 keeps its relative precision.
    S [B,H,N,N]; r, w, k, v, kk, a [B,T,H,N] -> (o [B,T,H,N], S')."""
    outs = []
    for s in range(0, r.shape[1], chunk):
        r_, w_, k_, v_, kk_, lr = (t[:, s : s + chunk].transpose(1, 2) for t in (r, w, k, v, kk, a))  # [B,H,C,N]
        G = w_.cumsum(2)  # [B,H,C,N]
        C = G.shape[2]
        up, back = torch.exp(G), torch.exp(-G)
        r_up, a_up = r_ * up, -kk_ * torch.exp(G - w_)  # e^{G_t}, e^{G_{t-1}} sides
        k_back, b_back = k_ * back, kk_ * lr * back  # e^{-G_j} side
        incl = torch.ones(C, C, dtype=torch.bool, device=G.device).tril()
        A_rk, A_rb = ((r_up @ x.transpose(-1, -2)).masked_fill(~incl, 0) for x in (k_back, b_back))  # j <= t
        A_ak, A_ab = ((a_up @ x.transpose(-1, -2)).tril(-1) for x in (k_back, b_back))  # j < t
        eye = torch.eye(C, dtype=G.dtype, device=G.device)
        U = torch.linalg.solve_triangular(eye - A_ab, A_ak @ v_ + a_up @ S, upper=False, unitriangular=True)  # [B,H,C,N]
        outs.append((r_up @ S + A_rb @ U + A_rk @ v_).transpose(1, 2))
        to_end = torch.exp(G[:, :, -1:] - G)  # [B,H,C,N]
        S = up[:, :, -1].unsqueeze(-1) * S + (kk_ * lr * to_end).transpose(-1, -2) @ U + (k_ * to_end).transpose(-1, -2) @ v_
    return torch.cat(outs, 1), S


PARALLEL_DOUBLINGS = 3  # chunks one parallel call composes: 2**3 chunks of CHUNK = 128 tokens, the runner's window
PARALLEL_MAX_TOKENS = CHUNK * 2**PARALLEL_DOUBLINGS


def _unit_lower_inverse(A):
    """(I - A)^-1 for A strictly lower triangular [..., Q, Q]. A is nilpotent (A^Q = 0), so the inverse
    is I + A + ... + A^{Q-1} = (I + A)(I + A^2)(I + A^4)...: log2 Q matmuls of squares, no
    triangular solve (ONNX has none)."""
    eye = torch.eye(A.shape[-1], dtype=A.dtype)
    inv, power = eye + A, A
    for _ in range(1, math.ceil(math.log2(A.shape[-1]))):
        power = power @ power
        inv = inv @ (eye + power)  # the factors are polynomials in A: they commute
    return inv


def _shift_chunks(x, d: int, head):
    """x [B,H,C,...] shifted d chunks later along axis 2, the first d filled from ``head`` (broadcast
    like x): static slices only, so a traced graph works for every number of chunks."""
    return torch.cat([(torch.zeros_like(x) + head)[:, :, :d], x[:, :, :-d]], 2)


def _compose_chunks(P, Qm):
    """Inclusive scan of S -> P_c S + Q_c over the chunks (axis 2 of [B,H,C,N,N]) from S = 0, a
    doubling (Hillis-Steele) scan: after k doublings each chunk has composed the 2**k ending at it,
    later after earlier: (P, Q) then (P', Q') = (P' P, P' Q + Q'). Returns (prod P, S)."""
    eye = torch.eye(P.shape[-1], dtype=P.dtype)
    for k in range(PARALLEL_DOUBLINGS):
        d = 2**k
        P, Qm = P @ _shift_chunks(P, d, eye), P @ _shift_chunks(Qm, d, 0.0) + Qm
    return P, Qm


def delta_rule_parallel(S, r, w, k, v, kk, a):
    """``delta_rule_chunked`` with no loop over chunks: what the ONNX prefill graph runs, exact for up
    to PARALLEL_MAX_TOKENS positions per call (the runner feeds longer prompts in pieces).

    Time is padded to whole chunks with identity positions (w = 0: no decay; r = k = v = kk = 0: no
    read, no write). Every chunk's read-outs are linear in its entry state S_in:
        U = U0 + W S_in,   U0 = (I - A_ab)^-1 A_ak V,   W = (I - A_ab)^-1 a_up
    (the unit triangular system of ``delta_rule_chunked``), so the chunk maps S_in to
        S_out = P S_in + Q,   P = diag(e^{G_C}) + B^T W,   Q = B^T U0 + K^T V
    with B = b e^{G_C - G}, K = k e^{G_C - G}. A doubling scan over the chunks' (P, Q) gives every
    entry state from S_0, then o = (r_up + A_rb W) S_in + A_rb U0 + A_rk V.
    S [B,H,N,N]; r, w, k, v, kk, a [B,T,H,N] -> (o [B,T,H,N], S')."""
    Bsz, T, H, N = r.shape
    Q = CHUNK
    pad = (-T) % Q
    r, w, k, v, kk, a = (F.pad(t, (0, 0, 0, 0, 0, pad)).reshape(Bsz, -1, Q, H, N).permute(0, 3, 1, 2, 4) for t in (r, w, k, v, kk, a))  # [B,H,C,Q,N]
    G = w.cumsum(3)  # cumulative log decay inside each chunk
    up, back = torch.exp(G), torch.exp(-G)
    r_up, a_up = r * up, -kk * torch.exp(G - w)  # e^{G_t}, e^{G_{t-1}} sides
    b = kk * a  # the write-back of the removed value
    k_back, b_back = k * back, b * back  # e^{-G_j} side
    incl = torch.ones(Q, Q, dtype=torch.bool).tril()
    strict = torch.ones(Q, Q, dtype=torch.bool).tril(-1)
    A_rk, A_rb = ((r_up @ x.transpose(-1, -2)).masked_fill(~incl, 0) for x in (k_back, b_back))  # j <= t  [B,H,C,Q,Q]
    A_ak, A_ab = ((a_up @ x.transpose(-1, -2)).masked_fill(~strict, 0) for x in (k_back, b_back))  # j < t
    inv = _unit_lower_inverse(A_ab)
    U0, W = inv @ (A_ak @ v), inv @ a_up  # [B,H,C,Q,N]
    to_end = torch.exp(G[:, :, :, -1:] - G)  # [B,H,C,Q,N]
    Bt, Kt = (b * to_end).transpose(-1, -2), (k * to_end).transpose(-1, -2)  # [B,H,C,N,Q]
    P = up[:, :, :, -1].unsqueeze(-1) * torch.eye(N, dtype=r.dtype) + Bt @ W  # [B,H,C,N,N]
    carry, S_c = _compose_chunks(P, Bt @ U0 + Kt @ v)
    S_out = carry @ S.unsqueeze(2) + S_c  # [B,H,C,N,N] state after each chunk
    S_in = torch.cat([S.unsqueeze(2), S_out[:, :, :-1]], 2)  # state entering each chunk
    o = (r_up + A_rb @ W) @ S_in + A_rb @ U0 + A_rk @ v  # [B,H,C,Q,N]
    return o.permute(0, 2, 3, 1, 4).reshape(Bsz, -1, H, N)[:, :T], S_out[:, :, -1]


class Attention(nn.Module):
    def __init__(self, cfg: dict, i: int):
        super().__init__()
        D, N = cfg["hidden_size"], cfg["head_dim"]
        self.H, self.first = cfg["attn_heads"], i == 0
        A = self.H * N  # the attention width: D unless heads were pruned
        self.eps = N * cfg["norm_eps"]  # fla's g_norm eps
        for c in "rwkvag":
            setattr(self, f"x_{c}", nn.Parameter(torch.zeros(1, 1, D)))
        self.k_k, self.k_a = nn.Parameter(torch.zeros(A)), nn.Parameter(torch.zeros(A))
        self.r_k = nn.Parameter(torch.zeros(self.H, N))
        self.r_proj, self.k_proj, self.v_proj = (nn.Linear(D, A, bias=False) for _ in range(3))
        self.o_proj = nn.Linear(A, D, bias=False)
        self.w_lora = LoRA(D, A, cfg["decay_low_rank_dim"], "tanh")
        if not self.first:
            self.v_lora = LoRA(D, A, cfg["v_low_rank_dim"], None)
        self.a_lora = LoRA(D, A, cfg["a_low_rank_dim"], None)
        self.g_lora = LoRA(D, A, cfg["gate_low_rank_dim"], "sigmoid", bias=False)
        self.g_norm = nn.GroupNorm(self.H, A, eps=self.eps)
        self.tap_r, self.tap_w, self.tap_k, self.tap_v, self.tap_a, self.tap_wkv, self.tap_g = (Tap() for _ in range(7))

    def _projections(self, x, prev):
        """x, prev [..., D] -> the Linears' outputs [..., H N]: r, w_l (w_lora), k, v, a_l (a_lora), g, and v_l
        (v_lora; None in layer 0)."""
        xr, xw, xk, xv, xa, xg = (token_mix(x, prev, getattr(self, f"x_{c}")) for c in "rwkvag")
        r, w_l, k, v = self.r_proj(xr), self.w_lora(xw), self.k_proj(xk), self.v_proj(xv)
        v_l = None if self.first else self.v_lora(xv)
        return r, w_l, k, v, self.a_lora(xa), self.g_lora(xg), v_l

    def _params(self):
        return self.k_k, self.k_a, self.r_k, self.g_norm.weight, self.g_norm.bias, self.eps

    def forward(self, x, v_first, shift, S):
        """x [B,T,D], v_first [B,T,H N] -> (out [B,T,D], v_first, shift', S')."""
        r, w_l, k, v, a_l, g, v_l = self._projections(x, shifted(x, shift))
        v_first = v if self.first else v_first
        delta_rule = delta_rule_parallel if torch.onnx.is_in_onnx_export() else delta_rule_chunked
        y, S = attention(S, r, w_l, k, v, a_l, g, *self._params(), v_first, v_l, delta_rule=delta_rule,
                         tap=lambda name, t: getattr(self, f"tap_{name}")(t))
        return self.o_proj(y), v_first, x[:, -1], S

    def step(self, x, v_first, shift, S):
        """x [B,D] -> (out [B,D], v_first, shift', S'): under ``export --fused`` one custom op from the
        Linears' outputs to W_o's input (``rnnquant.kernels.fused.Rwkv7AttentionStep``)."""
        from rnnquant.kernels.fused import Rwkv7AttentionStep, fusing

        r, w_l, k, v, a_l, g, v_l = self._projections(x, shift)
        v_first = v if self.first else v_first
        inputs = (S, r, w_l, k, v, a_l, g, *self._params(), None if self.first else v_first, v_l)
        y, S = Rwkv7AttentionStep.apply(*inputs) if fusing() else attention(*inputs)
        return self.o_proj(y), v_first, x, S


def _untapped(name, t):
    return t


def attention(S, r, w_l, k, v, a_l, g, k_k, k_a, r_k, gn_w, gn_b, eps: float, v_first=None, v_l=None,
              delta_rule=delta_rule_step, tap=_untapped):
    """Everything between a layer's Linears and W_o (the glossary's lines from w to the gate), over T
    positions with ``delta_rule`` (chunked / parallel) or one with ``delta_rule_step``.
    r, w_l, k, v, a_l, g, v_first, v_l [..., H N] (the Linears' outputs; v_first, v_l None in layer 0);
    k_k, k_a, gn_w, gn_b [H N], r_k [H, N]; S [B,H,N,N] -> (W_o's input [..., H N], S').
    ``tap(name, t)`` passes each activation point through its Tap (calibration hooks them)."""
    H = r_k.shape[0]
    w = tap("w", LOG_DECAY_SCALE * torch.sigmoid(w_l))
    if v_l is not None:
        v = torch.lerp(v, v_first, torch.sigmoid(v_l))
    a = tap("a", torch.sigmoid(a_l))
    kk = F.normalize(split_heads(k * k_k, H), dim=-1, p=2.0)
    k = tap("k", addcmul(k, k * (a - 1), k_a))
    r, w, k, v, a = (split_heads(t, H) for t in (tap("r", r), w, k, tap("v", v), a))
    o, S = delta_rule(S, r, w, k, v, kk, a)
    o = tap("wkv", o)
    mean = o.mean(-1, keepdim=True)
    var = (o - mean).pow(2).mean(-1, keepdim=True)
    o = ((o - mean) / torch.sqrt(var + eps)).flatten(-2) * gn_w + gn_b
    bonus = ((r * k * r_k).sum(-1, keepdim=True) * v).flatten(-2)
    return (o + bonus) * tap("g", g), S


class FeedForward(nn.Module):
    def __init__(self, D: int, F_: int):
        super().__init__()
        self.x_k = nn.Parameter(torch.zeros(D))
        self.key = nn.Linear(D, F_, bias=False)
        self.value = nn.Linear(F_, D, bias=False)

    def forward(self, x, prev):
        return self.value(torch.square(torch.relu(self.key(token_mix(x, prev, self.x_k)))))


class Block(nn.Module):
    def __init__(self, cfg: dict, i: int):
        super().__init__()
        D = cfg["hidden_size"]

        def norm():
            return nn.LayerNorm(D, eps=cfg["norm_eps"], bias=cfg["norm_bias"])

        if i == 0 and cfg["norm_first"]:
            self.pre_norm = norm()
        self.attn_norm, self.ffn_norm = norm(), norm()
        self.attn = Attention(cfg, i)
        self.ffn = FeedForward(D, cfg["intermediate_size"])


class Backbone(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.embeddings = nn.Embedding(cfg["vocab_size"], cfg["hidden_size"])
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg["num_hidden_layers"]))
        self.norm = nn.LayerNorm(cfg["hidden_size"], eps=cfg["norm_eps"], bias=cfg["norm_bias"])


def _lora_rank(given, scale: float, D: int, factor: float) -> int:
    """fla's default when a low-rank width is null: max(32, round(scale sqrt(D) factor / 32) 32)."""
    return int(given) if given is not None else max(32, int(round(scale * D**0.5 * factor / 32) * 32))


def normalize_config(cfg: dict) -> dict:
    """Fill fla's RWKV7Config defaults; refuse the layouts this adapter does not implement."""
    c = {"head_dim": 64, "num_heads": None, "hidden_ratio": 4, "intermediate_size": None, "decay_low_rank_dim": 64,
         "gate_low_rank_dim": 128, "a_low_rank_dim": 64, "v_low_rank_dim": 16, "hidden_act": "sqrelu", "norm_first": True,
         "norm_bias": True, "norm_eps": 1e-5, "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
         "value_dim": None, "attn": None} | dict(cfg)
    D = c["hidden_size"]
    if c["head_dim"] is None:
        c["head_dim"] = D // c["num_heads"]
    c["num_heads"] = D // c["head_dim"]
    if c["num_heads"] * c["head_dim"] != D:
        raise ValueError(f"head_dim {c['head_dim']} must divide hidden_size {D}")
    c["attn_heads"] = c.get("attn_heads") or c["num_heads"]
    if not 1 <= c["attn_heads"] <= c["num_heads"]:
        raise ValueError(f"attn_heads {c['attn_heads']} must be between 1 and hidden_size / head_dim = {c['num_heads']}")
    factor = c["head_dim"] / 64
    for key, scale, f in (("decay_low_rank_dim", 2.5, factor), ("gate_low_rank_dim", 5, 1.0), ("a_low_rank_dim", 2.5, factor),
                          ("v_low_rank_dim", 1.7, factor)):
        c[key] = _lora_rank(c[key], scale, D, f)
    if c["intermediate_size"] is None:
        c["intermediate_size"] = 32 * math.ceil(int(D * c["hidden_ratio"]) / 32)
    if c["hidden_act"] != "sqrelu":
        raise ValueError(f"hidden_act {c['hidden_act']!r} is not supported (only 'sqrelu')")
    if c["attn"] is not None:
        raise ValueError("hybrid layers (config 'attn': softmax attention in some layers) are not supported")
    vd = c["value_dim"]
    if vd is not None and any(v != D for v in (vd if isinstance(vd, list) else [vd])):
        raise ValueError(f"value_dim {vd!r} must equal hidden_size {D} (v_first is shared across layers)")
    return c


class Rwkv7LM(RecurrentLM):
    model_type = "rwkv7"
    roles = frozenset({"att_receptance", "att_key", "att_value", "att_output", "lora_in", "lora_out", "ffn_key", "ffn_value", "lm_head"})
    required_config = ("vocab_size", "hidden_size", "num_hidden_layers")
    parallel_prefill = True  # delta_rule_parallel under export
    prefill_max_tokens = PARALLEL_MAX_TOKENS

    def __init__(self, config: dict):
        super().__init__(normalize_config(config))
        cfg = self.config
        self.model = Backbone(cfg)
        self.lm_head = nn.Linear(cfg["hidden_size"], cfg["vocab_size"], bias=False)
        if cfg["tie_word_embeddings"]:
            self.lm_head.weight = self.model.embeddings.weight

    def stem(self, input_ids):
        x = self.model.embeddings(input_ids)
        v_first = x.new_zeros(*x.shape[:-1], self.config["attn_heads"] * self.config["head_dim"])
        return torch.cat([x, v_first], -1)  # [x | v_first]: layer 0 writes v_first

    def _layer(self, i, x, v_first, state, step: bool):
        layer = self.model.layers[i]
        attn_shift, S, ffn_shift = state
        if hasattr(layer, "pre_norm"):
            x = layer.pre_norm(x)
        attn = layer.attn.step if step else layer.attn
        a, v_first, attn_shift, S = attn(layer.attn_norm(x), v_first, attn_shift, S)
        x = x + a
        h = layer.ffn_norm(x)
        x = x + layer.ffn(h, ffn_shift if step else shifted(h, ffn_shift))
        return x, v_first, (attn_shift, S, h if step else h[:, -1])

    def block(self, i, xv, state):
        x, v_first = xv.split([self.config["hidden_size"], xv.shape[-1] - self.config["hidden_size"]], dim=-1)
        x, v_first, state = self._layer(i, x, v_first, state, step=False)
        return torch.cat([x, v_first], -1), state

    def tail(self, xv):
        return self.lm_head(self.model.norm(xv[..., : self.config["hidden_size"]]))

    def step(self, input_ids, state):
        x = self.model.embeddings(input_ids)  # [B,D]
        v_first, new_state = None, []  # layer 0 writes v_first before anyone reads it
        for i in range(len(self.model.layers)):
            x, v_first, s = self._layer(i, x, v_first, state[3 * i : 3 * i + 3], step=True)
            new_state += s
        return self.lm_head(self.model.norm(x)), tuple(new_state)

    def arch_spec(self) -> ArchSpec:
        c = self.config
        D, H, N = c["hidden_size"], c["attn_heads"], c["head_dim"]
        linears, pairs, rot, taps, states = {}, [], [], {}, []
        floats = ["model.embeddings.weight"] + [f"model.norm.{w}" for w in self._norm_params()]
        floats += [f"model.layers.0.pre_norm.{w}" for w in self._norm_params()] if c["norm_first"] else []
        for i in range(c["num_hidden_layers"]):
            p = f"model.layers.{i}"
            att, ffn = f"{p}.attn", f"{p}.ffn"
            linears |= {f"{att}.r_proj": "att_receptance", f"{att}.k_proj": "att_key", f"{att}.v_proj": "att_value",
                        f"{att}.o_proj": "att_output", f"{ffn}.key": "ffn_key", f"{ffn}.value": "ffn_value"}
            # the LoRAs' first Linears read attn_norm's output too; their rank-wide second ones read a
            # tanh / sigmoid / identity of it (no norm to fold into)
            loras = [f"{att}.{n}_lora" for n in ("w", "a", "g")] + ([f"{att}.v_lora"] if i else [])
            linears |= {f"{lo}.lora.0": "lora_in" for lo in loras} | {f"{lo}.lora.2": "lora_out" for lo in loras}
            # the token mix is linear per channel, so a norm's scale folds into every reader
            readers = [f"{att}.r_proj", f"{att}.k_proj", f"{att}.v_proj", *(f"{lo}.lora.0" for lo in loras)]
            pairs += [(f"{p}.attn_norm", readers), (f"{p}.ffn_norm", [f"{ffn}.key"])]
            rot += [f"{att}.o_proj", f"{ffn}.value"]
            taps |= {f"{att}.tap_{k}": f"wkv_{k}" for k in ("r", "w", "k", "v", "a", "wkv", "g")}
            floats += [f"{p}.{n}.{w}" for n in ("attn_norm", "ffn_norm") for w in self._norm_params()]
            floats += [f"{att}.{n}" for n in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "k_k", "k_a", "r_k", "g_norm.weight", "g_norm.bias")]
            floats.append(f"{ffn}.x_k")
            states += [StateSpec(f"attn_shift_{i}", (D,), block=i), StateSpec(f"wkv_{i}", (H, N, N), block=i),
                       StateSpec(f"ffn_shift_{i}", (D,), block=i)]
        linears["lm_head"] = "lm_head"
        layers = [f"model.layers.{i}" for i in range(c["num_hidden_layers"])]
        ffn_channels = ChannelGroup("intermediate_size", [self._ffn_slices(f"{b}.ffn") for b in layers])
        heads = ChannelGroup("attn_heads", [self._head_slices(f"{b}.attn", i) for i, b in enumerate(layers)], same_in_every_layer=True)
        return ArchSpec(linears, pairs, rot, taps, floats, states, embedding="model.embeddings",
                        channel_groups={"ffn": ffn_channels, "heads": heads}, layer_stack=layers,
                        fixed_blocks=[0],  # layer 0 alone has pre_norm and no v_lora: it is the value residual's source
                        # unstructured pruning leaves the LoRAs' rank-wide outputs dense: at 50 % magnitude / Wanda
                        # they cost the zoo model +17 / +13 points more (docs/RESULTS.md §25)
                        prune_dense=[n for n, role in linears.items() if role == "lora_out"])

    def _norm_params(self) -> tuple[str, ...]:
        return ("weight", "bias") if self.config["norm_bias"] else ("weight",)

    def _head_slices(self, att: str, i: int) -> ChannelLayer:
        """Head h: its head_dim rows of r/k/v_proj and of the LoRAs' outputs (w, a, g; v from layer 1
        on), its k_k / k_a / group-norm channels and r_k row, its o_proj columns. Scored by the RMS of
        o_proj's input x its column norms, over the head (Mamba-2's heads the same way)."""
        N = self.config["head_dim"]
        loras = ("w", "a", "g") + (("v",) if i else ())
        s = [(f"{att}.{n}.weight", 0, ((0, N),)) for n in ("r_proj", "k_proj", "v_proj")]
        s += [(f"{att}.{lo}_lora.lora.2.{w}", 0, ((0, N),)) for lo in loras for w in ("weight", "bias") if not (lo == "g" and w == "bias")]
        s += [(f"{att}.{n}", 0, ((0, N),)) for n in ("k_k", "k_a", "g_norm.weight", "g_norm.bias")]
        s += [(f"{att}.r_k", 0, ((0, 1),)), (f"{att}.o_proj.weight", 1, ((0, N),))]
        return ChannelLayer(s, (f"{att}.o_proj.input",), f"{att}.o_proj.weight", block=N)

    @staticmethod
    def _ffn_slices(f: str) -> ChannelLayer:
        """FFN channel j: row j of key, column j of value; scored by value's input RMS x its column norm."""
        return ChannelLayer([(f"{f}.key.weight", 0, (0,)), (f"{f}.value.weight", 1, (0,))], (f"{f}.value.input",), f"{f}.value.weight")
