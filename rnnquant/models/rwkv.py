"""RWKV-4 in the Hugging Face ``RwkvForCausalLM`` layout, rnnquant's own implementation.

Parameter names match ``transformers`` so its checkpoints load unchanged: ``rwkv.embeddings``,
``rwkv.blocks.{i}.{pre_ln (block 0), ln1, ln2}``, ``rwkv.blocks.{i}.attention.{time_decay,
time_first, time_mix_key, time_mix_value, time_mix_receptance, key, value, receptance, output}``,
``rwkv.blocks.{i}.feed_forward.{time_mix_key, time_mix_receptance, key, receptance, value}``,
``rwkv.ln_out``, ``head`` (untied by default).

Glossary (Peng et al. 2023, "RWKV: Reinventing RNNs for the Transformer Era"):
    x_t          the block's normalised input [D];  x_{t-1} the token-shift state (the previous one)
    mu           time_mix_*: token shift  k_in = x_t mu + x_{t-1} (1 - mu)
    k, v, r      key, value [A], receptance r = sigmoid(W_r r_in) [A]   (A = attention_hidden_size)
    w = -exp(time_decay)   the per-channel log decay (< 0);  u = time_first, the bonus of the current token
    wkv_t        = (sum_{i<t} e^{(t-1-i) w + k_i} v_i + e^{u + k_t} v_t) / (same without v)
                 computed in the exponent-stabilised form with state (num a, den b, running max p);
                 p starts at -1e38 (an empty sum: e^{p} = 0), which the contract's StateSpec.init carries
    out          = W_o (r * wkv);  FFN: r' * W_v relu(W_k k_in)^2, r' = sigmoid(W_r' r_in)

``rescale_every`` (transformers, inference only): block i's attention output and FFN value are
divided by 2^(i // rescale_every) and the stream halves after every rescale_every-th block. The
checkpoint keeps the training-scale weights; the division is a power of two on the Linear's output
(exactly transformers' result, which divides the weight), so quantization sees the stored weights.
State per layer: ffn_shift [D], att_shift [D], num [A], den [A], max [A] (transformers' five).
The exported prefill graph runs the WKV sums of a whole call at once (``wkv_parallel``).
"""
from __future__ import annotations

import torch
from torch import nn

from .base import ArchSpec, ChannelGroup, ChannelLayer, RecurrentLM, StateSpec, Tap

MAX_INIT = -1e38  # the running max of an empty sum (transformers' CPU path)


def wkv_step(w, u, k, v, num, den, pmax):
    """One position of transformers' ``rwkv_linear_attention_cpu``, operation for operation.
    w = -exp(time_decay), u = time_first [A]; k, v, num, den, pmax [B,A] -> (wkv, num', den', pmax')."""
    m_out = torch.maximum(pmax, k + u)
    e1, e2 = torch.exp(pmax - m_out), torch.exp(k + u - m_out)
    wkv = (e1 * num + e2 * v) / (e1 * den + e2)
    m_state = torch.maximum(pmax + w, k)
    e1, e2 = torch.exp(pmax + w - m_state), torch.exp(k - m_state)
    return wkv, e1 * num + e2 * v, e1 * den + e2, m_state


# positions per exported prefill call: the parallel WKV below is exact at any length, but its
# pairwise weights are [T, T, A] per call (12.6 MB at T = 64, A = 768)
PARALLEL_MAX_TOKENS = 64


def wkv_parallel(w, u, k, v, num, den, pmax):
    """``wkv_step`` over T positions with no loop over time: what the prefill graph runs.

    Unrolled, the state after position t stands for the sums e^{p_t} num_t = e^{p_0 + (t+1) w} num_0 +
    sum_{j<=t} e^{(t-j) w + k_j} v_j (den likewise, v = 1), and the recurrence's running max is the
    max of those exponents. So the output at t weighs the entry state by e^{p_0 + t w}, position j < t
    by e^{(t-1-j) w + k_j} and t itself by e^{u + k_t}, each over their max m_t (every weight <= 1),
    and the new state is the same sums at t = T - 1 with p_T their max: the representation stepping
    produces. w, u [A]; k, v [B,T,A]; num, den, pmax [B,A] -> (wkv [B,T,A], num', den', pmax')."""
    T = k.shape[1]
    t = torch.arange(T, device=k.device)
    lag = (t.unsqueeze(1) - 1 - t.unsqueeze(0)).to(k.dtype)  # [t, j]: t - 1 - j
    E = (lag.unsqueeze(-1) * w + k.unsqueeze(1)).masked_fill((t.unsqueeze(1) <= t.unsqueeze(0)).unsqueeze(-1), -torch.inf)  # [B,t,j,A], j < t
    E = torch.where((t.unsqueeze(1) == t.unsqueeze(0)).unsqueeze(-1), (u + k).unsqueeze(1), E)  # j = t: the bonus
    E0 = pmax.unsqueeze(1) + t.to(k.dtype).unsqueeze(-1) * w  # [B,t,A]: the entry state's exponent
    m = torch.maximum(E0, E.amax(2))  # [B,t,A]
    P, g = torch.exp(E - m.unsqueeze(2)), torch.exp(E0 - m)
    wkv = (g * num.unsqueeze(1) + (P * v.unsqueeze(1)).sum(2)) / (g * den.unsqueeze(1) + P.sum(2))
    E_end = (T - 1 - t).to(k.dtype).unsqueeze(-1) * w + k  # [B,j,A]: position j's exponent after the last
    E0_end = pmax + T * w  # [B,A]
    p_end = torch.maximum(E0_end, E_end.amax(1))
    Q, g_end = torch.exp(E_end - p_end.unsqueeze(1)), torch.exp(E0_end - p_end)
    return wkv, g_end * num + (Q * v).sum(1), g_end * den + Q.sum(1), p_end


def shifted(x, prev):
    """x [B,T,D], the previous position's x [B,D] -> x_{t-1} for every t [B,T,D]."""
    return torch.cat([prev.unsqueeze(1), x[:, :-1]], dim=1)


def mix(x, prev, mu):
    """The token shift x mu + x_{t-1} (1 - mu); mu is stored [1, 1, D] (transformers' layout), used [D]
    so that a step's [B, D] stays [B, D]."""
    mu = mu.reshape(mu.shape[-1])
    return x * mu + prev * (1 - mu)


class Attention(nn.Module):
    def __init__(self, D: int, A: int, out_scale: float):
        super().__init__()
        self.time_decay = nn.Parameter(torch.zeros(A))
        self.time_first = nn.Parameter(torch.zeros(A))
        self.time_mix_key, self.time_mix_value, self.time_mix_receptance = (nn.Parameter(torch.full((1, 1, D), 0.5)) for _ in range(3))
        self.key, self.value, self.receptance = (nn.Linear(D, A, bias=False) for _ in range(3))
        self.output = nn.Linear(A, D, bias=False)
        self.out_scale = out_scale  # 2^-(block // rescale_every): transformers' inference rescale
        self.tap_k, self.tap_v, self.tap_r, self.tap_wkv = (Tap() for _ in range(4))

    def _kvr(self, x, prev):
        k = self.tap_k(self.key(mix(x, prev, self.time_mix_key)))
        v = self.tap_v(self.value(mix(x, prev, self.time_mix_value)))
        r = self.tap_r(torch.sigmoid(self.receptance(mix(x, prev, self.time_mix_receptance))))
        return k, v, r

    def _out(self, r, wkv):
        out = self.output(r * self.tap_wkv(wkv))
        return out * self.out_scale if self.out_scale != 1 else out

    def forward(self, x, shift, num, den, pmax):
        """x [B,T,D] -> (out [B,T,D], shift', num', den', max')."""
        k, v, r = self._kvr(x, shifted(x, shift))  # [B,T,A] each
        w = -torch.exp(self.time_decay)
        if torch.onnx.is_in_onnx_export():
            wkv, num, den, pmax = wkv_parallel(w, self.time_first, k, v, num, den, pmax)
            return self._out(r, wkv), x[:, -1], num, den, pmax
        outs = []
        for kt, vt in zip(k.unbind(1), v.unbind(1)):
            wkv, num, den, pmax = wkv_step(w, self.time_first, kt, vt, num, den, pmax)
            outs.append(wkv)
        return self._out(r, torch.stack(outs, 1)), x[:, -1], num, den, pmax

    def step(self, x, shift, num, den, pmax):
        """x [B,D] -> (out [B,D], shift', num', den', max')."""
        k, v, r = self._kvr(x, shift)
        wkv, num, den, pmax = wkv_step(-torch.exp(self.time_decay), self.time_first, k, v, num, den, pmax)
        return self._out(r, wkv), x, num, den, pmax


class FeedForward(nn.Module):
    def __init__(self, D: int, F: int, out_scale: float):
        super().__init__()
        self.time_mix_key, self.time_mix_receptance = (nn.Parameter(torch.full((1, 1, D), 0.5)) for _ in range(2))
        self.key = nn.Linear(D, F, bias=False)
        self.receptance = nn.Linear(D, D, bias=False)
        self.value = nn.Linear(F, D, bias=False)
        self.out_scale = out_scale

    def forward(self, x, prev):
        """x, prev (x_{t-1}) [..., D] -> [..., D]."""
        k = torch.square(torch.relu(self.key(mix(x, prev, self.time_mix_key))))
        v = self.value(k)
        v = v * self.out_scale if self.out_scale != 1 else v
        return torch.sigmoid(self.receptance(mix(x, prev, self.time_mix_receptance))) * v


class Block(nn.Module):
    def __init__(self, cfg: dict, i: int):
        super().__init__()
        D, eps, every = cfg["hidden_size"], cfg["layer_norm_epsilon"], cfg["rescale_every"]
        if i == 0:
            self.pre_ln = nn.LayerNorm(D, eps=eps)
        self.ln1, self.ln2 = nn.LayerNorm(D, eps=eps), nn.LayerNorm(D, eps=eps)
        scale = 2.0 ** -(i // every) if every > 0 else 1.0
        self.attention = Attention(D, cfg["attention_hidden_size"], scale)
        self.feed_forward = FeedForward(D, cfg["intermediate_size"], scale)
        self.halve_after = every > 0 and (i + 1) % every == 0


class Backbone(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.embeddings = nn.Embedding(cfg["vocab_size"], cfg["hidden_size"])
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg["num_hidden_layers"]))
        self.ln_out = nn.LayerNorm(cfg["hidden_size"])  # transformers gives it the default eps, not layer_norm_epsilon


def normalize_config(cfg: dict) -> dict:
    """Fill Hugging Face RwkvConfig defaults and resolve derived widths."""
    c = {"layer_norm_epsilon": 1e-5, "rescale_every": 6, "tie_word_embeddings": False, "bos_token_id": 0, "eos_token_id": 0,
         "attention_hidden_size": None, "intermediate_size": None} | dict(cfg)
    c["attention_hidden_size"] = c["attention_hidden_size"] or c["hidden_size"]
    c["intermediate_size"] = c["intermediate_size"] or 4 * c["hidden_size"]
    if not isinstance(c["rescale_every"], int) or isinstance(c["rescale_every"], bool):
        raise ValueError(f"rescale_every must be an integer, got {c['rescale_every']!r}")
    return c


class RwkvLM(RecurrentLM):
    model_type = "rwkv"
    roles = frozenset({"att_key", "att_value", "att_receptance", "att_output", "ffn_key", "ffn_receptance", "ffn_value", "lm_head"})
    required_config = ("vocab_size", "hidden_size", "num_hidden_layers")
    STATES = ("ffn_shift", "att_shift", "num", "den", "max")
    parallel_prefill = True  # wkv_parallel under export
    prefill_max_tokens = PARALLEL_MAX_TOKENS

    def __init__(self, config: dict):
        super().__init__(normalize_config(config))
        cfg = self.config
        self.rwkv = Backbone(cfg)
        self.head = nn.Linear(cfg["hidden_size"], cfg["vocab_size"], bias=False)
        if cfg["tie_word_embeddings"]:
            self.head.weight = self.rwkv.embeddings.weight

    def stem(self, input_ids):
        return self.rwkv.embeddings(input_ids)

    def block(self, i, x, state):
        blk = self.rwkv.blocks[i]
        ffn_shift, att_shift, num, den, pmax = state
        if i == 0:
            x = blk.pre_ln(x)
        a, att_shift, num, den, pmax = blk.attention(blk.ln1(x), att_shift, num, den, pmax)
        x = x + a
        h = blk.ln2(x)
        x = x + blk.feed_forward(h, shifted(h, ffn_shift))
        return (x / 2 if blk.halve_after else x), (h[:, -1], att_shift, num, den, pmax)

    def tail(self, x):
        return self.head(self.rwkv.ln_out(x))

    def step(self, input_ids, state):
        x = self.rwkv.embeddings(input_ids)  # [B,D]
        new_state = []
        for i, blk in enumerate(self.rwkv.blocks):
            ffn_shift, att_shift, num, den, pmax = state[5 * i : 5 * i + 5]
            if i == 0:
                x = blk.pre_ln(x)
            a, att_shift, num, den, pmax = blk.attention.step(blk.ln1(x), att_shift, num, den, pmax)
            x = x + a
            h = blk.ln2(x)
            x = x + blk.feed_forward(h, ffn_shift)
            x = x / 2 if blk.halve_after else x
            new_state += [h, att_shift, num, den, pmax]
        return self.tail(x), tuple(new_state)

    def arch_spec(self) -> ArchSpec:
        c = self.config
        D, A = c["hidden_size"], c["attention_hidden_size"]
        linears, pairs, rot, taps, states = {}, [], [], {}, []
        floats = ["rwkv.embeddings.weight", "rwkv.ln_out.weight", "rwkv.ln_out.bias", "rwkv.blocks.0.pre_ln.weight", "rwkv.blocks.0.pre_ln.bias"]
        for i in range(c["num_hidden_layers"]):
            p = f"rwkv.blocks.{i}"
            att, ffn = f"{p}.attention", f"{p}.feed_forward"
            linears |= {f"{att}.{n}": f"att_{n}" for n in ("key", "value", "receptance", "output")}
            linears |= {f"{ffn}.{n}": f"ffn_{n}" for n in ("key", "receptance", "value")}
            # the token shift is linear per channel, so a norm's per-channel scale still folds into its readers
            pairs += [(f"{p}.ln1", [f"{att}.key", f"{att}.value", f"{att}.receptance"]), (f"{p}.ln2", [f"{ffn}.key", f"{ffn}.receptance"])]
            rot += [f"{att}.output", f"{ffn}.value"]
            taps |= {f"{att}.tap_{k}": f"wkv_{k}" for k in ("k", "v", "r", "wkv")}
            floats += [f"{p}.{ln}.{w}" for ln in ("ln1", "ln2") for w in ("weight", "bias")]
            floats += [f"{att}.{n}" for n in ("time_decay", "time_first", "time_mix_key", "time_mix_value", "time_mix_receptance")]
            floats += [f"{ffn}.time_mix_key", f"{ffn}.time_mix_receptance"]
            shapes = {"ffn_shift": D, "att_shift": D, "num": A, "den": A, "max": A}
            states += [StateSpec(f"{n}_{i}", (shapes[n],), init=MAX_INIT if n == "max" else 0.0, block=i) for n in self.STATES]
        linears["head"] = "lm_head"
        blocks = [f"rwkv.blocks.{i}" for i in range(c["num_hidden_layers"])]
        ffn_channels = ChannelGroup("intermediate_size", [self._ffn_slices(f"{b}.feed_forward") for b in blocks])
        return ArchSpec(linears, pairs, rot, taps, floats, states, embedding="rwkv.embeddings", head="head",
                        channel_groups={"ffn": ffn_channels}, layer_stack=blocks,
                        fixed_blocks=[0])  # block 0 alone has pre_ln

    @staticmethod
    def _ffn_slices(f: str) -> ChannelLayer:
        """FFN channel j: row j of key, column j of value; scored by value's input RMS x its column norm."""
        return ChannelLayer([(f"{f}.key.weight", 0, (0,)), (f"{f}.value.weight", 1, (0,))], (f"{f}.value.input",), f"{f}.value.weight")
