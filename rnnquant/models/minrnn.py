"""minGRU and minLSTM language models ("Were RNNs All We Needed?", Feng et al. 2024): rnnquant's layout.

The gates depend on the input only, so the recurrence is a first-order linear scan with
positive terms, computed in log space over all positions at once (no loop over time; the exported
prefill graph runs it as a doubling scan in plain space, ``scan_parallel``).

Glossary (the paper's section 3, its log-space appendix):
    x_t                  the block's normalised input [D];  E = intermediate_size (the cell width)
    g(u)                 u + 0.5 for u >= 0, sigmoid(u) otherwise: a positive h~ (log g is defined)
    minGRU   z_t = sigmoid(W_z x_t),  h~_t = g(W_h x_t),  h_t = (1 - z_t) h_{t-1} + z_t h~_t
    minLSTM  f_t, i_t = sigmoid(W_f x_t), sigmoid(W_i x_t);  f', i' = f / (f + i), i / (f + i)
             h_t = f'_t h_{t-1} + i'_t h~_t
    scan     h_t = a_t h_{t-1} + b_t  ->  log h_t = A_t + logcumsumexp_{j<=t}(log b_j - A_j),
             A_t = sum_{i<=t} log a_i, with log h_0 as the j = 0 term

Block i (the paper's language-model stack):  x += out_proj(cell(norm1(x)));  x += down(gelu(up(norm2(x))))
Layout: ``embed``, ``layers.{i}.{norm1, cell.in_proj, cell.out_proj, norm2, mlp.up, mlp.down}``,
``norm_f``, ``lm_head`` (tied by default). in_proj rows: minGRU [h | z], minLSTM [h | f | i].
State per layer: h_i [E] (non-negative).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import ArchSpec, ChannelGroup, ChannelLayer, RecurrentLM, StateSpec, Tap
from .mamba import RMSNorm
from .ssm import RECURRENCE_MAX_TOKENS, linear_recurrence

SCAN_CHUNK = 256  # positions per log-space scan: the cumulative log decay stays small enough for float32
TINY = 1e-30  # log of a zero state (the initial one): its term vanishes, as it should


def g(u):
    return torch.where(u >= 0, u + 0.5, torch.sigmoid(u))


def log_g(u):
    return torch.where(u >= 0, torch.log(F.relu(u) + 0.5), -F.softplus(-u))


def log_scan(log_a, log_b, h0):
    """h_t = a_t h_{t-1} + b_t for every t, from log a, log b [B,T,E] and h0 [B,E] >= 0 -> h [B,T,E].
    Under ONNX export, ``scan_parallel`` (ONNX has no logcumsumexp, and a loop over chunks would be
    unrolled at the traced length)."""
    if torch.onnx.is_in_onnx_export():
        return scan_parallel(log_a, log_b, h0)
    outs = []
    for s in range(0, log_a.shape[1], SCAN_CHUNK):
        la, lb = log_a[:, s : s + SCAN_CHUNK], log_b[:, s : s + SCAN_CHUNK]
        A = la.cumsum(1)
        terms = torch.cat([torch.log(h0.clamp_min(TINY)).unsqueeze(1), lb - A], 1)  # [B,1+C,E]
        h = torch.exp(A + torch.logcumsumexp(terms, 1)[:, 1:])
        outs.append(h)
        h0 = h[:, -1]
    return torch.cat(outs, 1)


def scan_parallel(log_a, log_b, h0):
    """``log_scan`` in plain space with no loop over time: what the prefill graph runs, exact for up
    to RECURRENCE_MAX_TOKENS positions per call. A doubling (Hillis-Steele) scan of the (a, b) pairs;
    a is in (0, 1) and b >= 0, so no product can overflow, and one that underflows is a contribution
    that has decayed away (the log form is for training's gradients, not needed here)."""
    return linear_recurrence(torch.exp(log_a), torch.exp(log_b), h0)


class MinGRUCell(nn.Module):
    parts = 2  # in_proj rows: [h | z]

    def __init__(self, D: int, E: int):
        super().__init__()
        self.E = E
        self.in_proj = nn.Linear(D, self.parts * E, bias=False)
        self.out_proj = nn.Linear(E, D, bias=False)
        self.tap_gate = Tap()

    def coefficients(self, u):
        """in_proj output -> (log a, log b): h = a h_prev + b."""
        hid, k = u.split(self.E, dim=-1)
        k = self.tap_gate(k)
        return -F.softplus(k), -F.softplus(-k) + log_g(hid)  # log(1 - z), log(z h~)

    def update(self, u, h):
        """One position, in plain (not log) space: u [B, parts*E], h [B,E] -> h'."""
        hid, k = u.split(self.E, dim=-1)
        z = torch.sigmoid(self.tap_gate(k))
        return (1 - z) * h + z * g(hid)


class MinLSTMCell(MinGRUCell):
    parts = 3  # in_proj rows: [h | f | i]

    def coefficients(self, u):
        hid, f, i = u.split(self.E, dim=-1)
        f, i = self.tap_gate(f), i
        diff = F.softplus(-f) - F.softplus(-i)  # log i - log f
        return -F.softplus(diff), -F.softplus(-diff) + log_g(hid)  # log f', log(i' h~)

    def update(self, u, h):
        hid, f, i = u.split(self.E, dim=-1)
        f, i = torch.sigmoid(self.tap_gate(f)), torch.sigmoid(i)
        return (f * h + i * g(hid)) / (f + i)


class MLP(nn.Module):
    def __init__(self, D: int, F_: int):
        super().__init__()
        self.up, self.down = nn.Linear(D, F_, bias=False), nn.Linear(F_, D, bias=False)

    def forward(self, x):
        return self.down(F.gelu(self.up(x)))


class Block(nn.Module):
    def __init__(self, cfg: dict, cell_cls):
        super().__init__()
        D, eps = cfg["hidden_size"], cfg["layer_norm_epsilon"]
        self.norm1, self.norm2 = RMSNorm(D, eps), RMSNorm(D, eps)
        self.cell = cell_cls(D, cfg["intermediate_size"])
        self.mlp = MLP(D, cfg["mlp_size"])


class _MinRNNLM(RecurrentLM):
    cell_cls: type[MinGRUCell] = MinGRUCell
    required_config = ("vocab_size", "hidden_size", "num_hidden_layers")
    roles = frozenset({"rnn_in", "rnn_out", "mlp_up", "mlp_down", "lm_head"})
    parallel_prefill = True  # scan_parallel under export
    prefill_max_tokens = RECURRENCE_MAX_TOKENS

    def __init__(self, config: dict):
        cfg = {"layer_norm_epsilon": 1e-5, "tie_word_embeddings": True, "bos_token_id": 0, "eos_token_id": 0} | dict(config)
        cfg.setdefault("intermediate_size", cfg["hidden_size"])
        cfg.setdefault("mlp_size", 4 * cfg["hidden_size"])
        super().__init__(cfg)
        D = cfg["hidden_size"]
        self.embed = nn.Embedding(cfg["vocab_size"], D)
        self.layers = nn.ModuleList(Block(cfg, self.cell_cls) for _ in range(cfg["num_hidden_layers"]))
        self.norm_f = RMSNorm(D, cfg["layer_norm_epsilon"])
        self.lm_head = nn.Linear(D, cfg["vocab_size"], bias=False)
        if cfg["tie_word_embeddings"]:
            self.lm_head.weight = self.embed.weight

    def stem(self, input_ids):
        return self.embed(input_ids)

    def block(self, i, x, state):
        layer = self.layers[i]
        log_a, log_b = layer.cell.coefficients(layer.cell.in_proj(layer.norm1(x)))
        h = log_scan(log_a, log_b, state[0])  # [B,T,E]
        x = x + layer.cell.out_proj(h)
        return x + layer.mlp(layer.norm2(x)), (h[:, -1],)

    def tail(self, x):
        return self.lm_head(self.norm_f(x))

    def step(self, input_ids, state):
        x = self.embed(input_ids)  # [B,D]
        new_state = []
        for layer, h in zip(self.layers, state):
            h = layer.cell.update(layer.cell.in_proj(layer.norm1(x)), h)
            x = x + layer.cell.out_proj(h)
            x = x + layer.mlp(layer.norm2(x))
            new_state.append(h)
        return self.tail(x), tuple(new_state)

    def arch_spec(self) -> ArchSpec:
        c = self.config
        linears, pairs, rot, taps, floats, states = {}, [], [], {}, ["embed.weight", "norm_f.weight"], []
        for i in range(c["num_hidden_layers"]):
            p = f"layers.{i}"
            linears |= {f"{p}.cell.in_proj": "rnn_in", f"{p}.cell.out_proj": "rnn_out", f"{p}.mlp.up": "mlp_up", f"{p}.mlp.down": "mlp_down"}
            pairs += [(f"{p}.norm1", [f"{p}.cell.in_proj"]), (f"{p}.norm2", [f"{p}.mlp.up"])]
            rot += [f"{p}.cell.out_proj", f"{p}.mlp.down"]
            taps[f"{p}.cell.tap_gate"] = "rnn_gate"
            floats += [f"{p}.norm1.weight", f"{p}.norm2.weight"]
            states.append(StateSpec(f"h_{i}", (c["intermediate_size"],), block=i))
        linears["lm_head"] = "lm_head"
        layers = [f"layers.{i}" for i in range(c["num_hidden_layers"])]
        E, parts = c["intermediate_size"], self.cell_cls.parts
        hidden = ChannelGroup("intermediate_size", [ChannelLayer(
            [(f"{p}.cell.in_proj.weight", 0, tuple(k * E for k in range(parts))), (f"{p}.cell.out_proj.weight", 1, (0,))],
            (f"{p}.cell.out_proj.input",), f"{p}.cell.out_proj.weight") for p in layers])
        mlp = ChannelGroup("mlp_size", [ChannelLayer([(f"{p}.mlp.up.weight", 0, (0,)), (f"{p}.mlp.down.weight", 1, (0,))],
                                                     (f"{p}.mlp.down.input",), f"{p}.mlp.down.weight") for p in layers])
        return ArchSpec(linears, pairs, rot, taps, floats, states, embedding="embed", channel_groups={"hidden": hidden, "mlp": mlp},
                        layer_stack=layers, block_exits={p: (f"{p}.norm2", f"{p}.mlp.down") for p in layers})


class MinGRULM(_MinRNNLM):
    model_type = "mingru"
    cell_cls = MinGRUCell


class MinLSTMLM(_MinRNNLM):
    model_type = "minlstm"
    cell_cls = MinLSTMCell
