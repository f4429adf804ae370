"""LSTM and GRU language models: rnnquant's layout, a superset of ``torch.nn.LSTM`` / ``nn.GRU`` LMs.

    embed [V, Ei] -> L x cell (input Linear ``ih`` over all T at once, recurrent Linear ``hh``
    per step, LSTMP's ``hr`` [H -> P]) -> optional proj [Ho -> Ei] -> lm_head [-> V] (+ bias)

Config (``model_type`` "lstm" or "gru"):
    vocab_size V, hidden_size H, num_layers L      required
    embed_size Ei          default H
    proj_size P            LSTM only, default 0: ``nn.LSTM(proj_size=P)``, h_t = W_hr h~_t is [P]
    rnn_bias               default true: the cells' b_ih / b_hh
    output_proj            default true: a Linear ``proj`` Ho -> Ei before the head (the zoo models)
    head_bias              default false: ``lm_head`` with a bias (``word_language_model``'s decoder)
    tie_word_embeddings    default true: lm_head.weight is embed.weight (needs head input == Ei)
Ho = P if P else H is what a layer outputs.

Gate order and equations are exactly ``torch.nn.LSTM`` / ``torch.nn.GRU``'s:
    LSTM: i, f, g, o = split(ih(x) + hh(h));  c' = s(f) c + s(i) tanh(g);  h' = s(o) tanh(c')  (LSTMP: h' = hr(...))
    GRU:  r, z, n from gi = ih(x), gh = hh(h);  n = tanh(gi_n + s(r) gh_n);  h' = (1 - z) n + z h
State per layer: LSTM (h_i [B,Ho], c_i [B,H]); GRU (h_i [B,H]).
"""
from __future__ import annotations

import torch
from torch import nn

from .base import ArchSpec, ChannelGroup, ChannelLayer, RecurrentLM, StateSpec

DEFAULTS = {"tie_word_embeddings": True, "bos_token_id": 0, "eos_token_id": 0, "proj_size": 0, "rnn_bias": True,
            "output_proj": True, "head_bias": False}


class _Cell(nn.Module):
    gates = 0

    def __init__(self, in_size: int, hidden: int, out_size: int, bias: bool):
        super().__init__()
        self.ih = nn.Linear(in_size, self.gates * hidden, bias=bias)
        self.hh = nn.Linear(out_size, self.gates * hidden, bias=bias)
        if out_size != hidden:  # LSTMP's recurrent projection
            self.hr = nn.Linear(hidden, out_size, bias=False)


class LSTMCell(_Cell):
    gates = 4

    def update(self, gi, h, c):
        """gi = ih(x) [B,4H]; h [B,Ho], c [B,H] -> (h', c')."""
        i, f, g, o = (gi + self.hh(h)).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return (self.hr(h) if hasattr(self, "hr") else h), c


class GRUCell(_Cell):
    gates = 3

    def update(self, gi, h):
        """gi = ih(x) [B,3H]; h [B,H] -> (h',)."""
        ir, iz, in_ = gi.chunk(3, dim=-1)
        hr, hz, hn = self.hh(h).chunk(3, dim=-1)
        r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
        n = torch.tanh(in_ + r * hn)
        return ((1 - z) * n + z * h,)


class _RNNLM(RecurrentLM):
    cell_cls: type[_Cell] = _Cell
    state_names: tuple[str, ...] = ()
    required_config = ("vocab_size", "hidden_size", "num_layers")
    roles = frozenset({"rnn_ih", "rnn_hh", "rnn_hr", "proj", "lm_head"})

    def __init__(self, config: dict):
        cfg = DEFAULTS | dict(config)
        cfg.setdefault("embed_size", cfg["hidden_size"])
        super().__init__(cfg)
        V, Ei, H, P = cfg["vocab_size"], cfg["embed_size"], cfg["hidden_size"], cfg["proj_size"]
        if P and self.cell_cls is not LSTMCell:
            raise ValueError("proj_size is an LSTM option")
        if not 0 <= P < H:
            raise ValueError(f"proj_size must be in [0, hidden_size), got {P}")
        Ho = P or H
        self.embed = nn.Embedding(V, Ei)
        self.layers = nn.ModuleList(self.cell_cls(Ei if i == 0 else Ho, H, Ho, cfg["rnn_bias"]) for i in range(cfg["num_layers"]))
        self.proj = nn.Linear(Ho, Ei) if cfg["output_proj"] else None
        head_in = Ei if cfg["output_proj"] else Ho
        self.lm_head = nn.Linear(head_in, V, bias=cfg["head_bias"])
        if cfg["tie_word_embeddings"]:
            if head_in != Ei:
                raise ValueError(f"tie_word_embeddings needs the head's input ({head_in}) to equal embed_size ({Ei})")
            self.lm_head.weight = self.embed.weight

    def stem(self, input_ids):
        return self.embed(input_ids)

    def block(self, i, x, state):
        cell = self.layers[i]
        gi = cell.ih(x)  # [B,T,G*H]: the input matmul for all positions at once
        outs = []
        for g in gi.unbind(1):  # unbind, not gi[:, t]: one stack in backward instead of T zero-fills
            state = cell.update(g, *state)
            outs.append(state[0])
        return torch.stack(outs, 1), state  # [B,T,Ho]

    def tail(self, h):
        return self.lm_head(h if self.proj is None else self.proj(h))

    def step(self, input_ids, state):
        x = self.embed(input_ids)  # [B,Ei]
        k = len(self.state_names)
        new_state = []
        for i, cell in enumerate(self.layers):
            s = cell.update(cell.ih(x), *state[k * i : k * (i + 1)])
            x = s[0]
            new_state += s
        return self.tail(x), tuple(new_state)

    def arch_spec(self) -> ArchSpec:
        H = self.config["hidden_size"]
        shapes = {"h": (self.config["proj_size"] or H,), "c": (H,)}
        linears, states = {}, []
        for i, cell in enumerate(self.layers):
            linears |= {f"layers.{i}.ih": "rnn_ih", f"layers.{i}.hh": "rnn_hh"}
            linears |= {f"layers.{i}.hr": "rnn_hr"} if hasattr(cell, "hr") else {}
            states += [StateSpec(f"{n}_{i}", shapes[n], block=i) for n in self.state_names]
        linears |= ({"proj": "proj"} if self.proj is not None else {}) | {"lm_head": "lm_head"}
        # a hidden unit of the last layer read by a tied head is a column of the embedding too: not removable
        removable = self.proj is not None or not self.config["tie_word_embeddings"]
        groups = {"hidden": ChannelGroup("hidden_size", [self._hidden_slices(i) for i in range(len(self.layers))])} if removable else {}
        stack = [f"layers.{i}" for i in range(len(self.layers))]
        return ArchSpec(linears, [], [], {}, ["embed.weight"], states, embedding="embed", channel_groups=groups,
                        layer_stack=stack,
                        num_layers_key="num_layers")

    def _reader(self, i: int) -> str:
        """The Linear that reads layer i's output h_i: the next layer's ih, proj or the head."""
        return f"layers.{i + 1}.ih" if i + 1 < len(self.layers) else ("proj" if self.proj is not None else "lm_head")

    def _hidden_slices(self, i: int) -> ChannelLayer:
        """Hidden unit k of layer i: row k of every gate in ih/hh (weights and biases), and the
        columns that read it: hh's and the next reader's (LSTMP: only hr's, since h is projected)."""
        H, G = self.config["hidden_size"], self.cell_cls.gates
        gates = tuple(g * H for g in range(G))
        params = ("weight", "bias") if self.config["rnn_bias"] else ("weight",)
        s = [(f"layers.{i}.{lin}.{p}", 0, gates) for lin in ("ih", "hh") for p in params]
        if self.config["proj_size"]:
            hr = f"layers.{i}.hr.weight"
            return ChannelLayer(s + [(hr, 1, (0,))], (f"state.c_{i}",), hr)
        nxt = f"{self._reader(i)}.weight"
        s += [(f"layers.{i}.hh.weight", 1, (0,)), (nxt, 1, (0,))]
        mods = dict(self.named_modules())
        readers = (f"layers.{i}.hh", self._reader(i))
        return ChannelLayer(s, (f"state.h_{i}",), nxt, compensate=tuple(r for r in readers if mods[r].bias is not None))


class LSTMLM(_RNNLM):
    model_type = "lstm"
    cell_cls = LSTMCell
    state_names = ("h", "c")


class GRULM(_RNNLM):
    model_type = "gru"
    cell_cls = GRUCell
    state_names = ("h",)
