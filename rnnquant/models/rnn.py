"""LSTM and GRU language models in rnnquant's own layout.

    embed [V, Ei] -> L x cell (input Linear ``ih`` over all T at once, recurrent Linear ``hh``
    per step) -> proj [H -> Ei] -> lm_head [Ei -> V] (tied to embed by default)

Gate order and equations follow ``torch.nn.LSTM`` / ``torch.nn.GRU``:
    LSTM: i, f, g, o = split(ih(x) + hh(h));  c' = s(f) c + s(i) tanh(g);  h' = s(o) tanh(c')
    GRU:  r, z, n from gi = ih(x), gh = hh(h);  n = tanh(gi_n + s(r) gh_n);  h' = (1 - z) n + z h
State per layer: LSTM (h_i [B,H], c_i [B,H]); GRU (h_i [B,H]).
"""
from __future__ import annotations

import torch
from torch import nn

from .base import ArchSpec, ChannelGroup, ChannelLayer, RecurrentLM, StateSpec


class _Cell(nn.Module):
    gates = 0

    def __init__(self, in_size: int, hidden: int):
        super().__init__()
        self.ih = nn.Linear(in_size, self.gates * hidden)
        self.hh = nn.Linear(hidden, self.gates * hidden)


class LSTMCell(_Cell):
    gates = 4

    def update(self, gi, h, c):
        """gi = ih(x) [B,4H]; (h, c) [B,H] -> (h', c')."""
        i, f, g, o = (gi + self.hh(h)).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


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

    def __init__(self, config: dict):
        cfg = {"tie_word_embeddings": True, "bos_token_id": 0, "eos_token_id": 0} | dict(config)
        cfg.setdefault("embed_size", cfg["hidden_size"])
        super().__init__(cfg)
        V, Ei, H = cfg["vocab_size"], cfg["embed_size"], cfg["hidden_size"]
        self.embed = nn.Embedding(V, Ei)
        self.layers = nn.ModuleList(self.cell_cls(Ei if i == 0 else H, H) for i in range(cfg["num_layers"]))
        self.proj = nn.Linear(H, Ei)
        self.lm_head = nn.Linear(Ei, V, bias=False)
        if cfg["tie_word_embeddings"]:
            self.lm_head.weight = self.embed.weight

    def _head(self, h):
        return self.lm_head(self.proj(h))

    def forward_with_state(self, input_ids, state, last_only: bool = False):
        x = self.embed(input_ids)  # [B,T,Ei]
        k = len(self.state_names)
        new_state = []
        for i, cell in enumerate(self.layers):
            gi = cell.ih(x)  # [B,T,G*H]: the input matmul for all positions at once
            s = state[k * i : k * (i + 1)]
            outs = []
            for g in gi.unbind(1):  # unbind, not gi[:, t]: one stack in backward instead of T zero-fills
                s = cell.update(g, *s)
                outs.append(s[0])
            x = torch.stack(outs, 1)  # [B,T,H]
            new_state += s
        return self._head(x[:, -1] if last_only else x), tuple(new_state)

    def step(self, input_ids, state):
        x = self.embed(input_ids)  # [B,Ei]
        k = len(self.state_names)
        new_state = []
        for i, cell in enumerate(self.layers):
            s = cell.update(cell.ih(x), *state[k * i : k * (i + 1)])
            x = s[0]
            new_state += s
        return self._head(x), tuple(new_state)

    def arch_spec(self) -> ArchSpec:
        H = self.config["hidden_size"]
        linears, states = {}, []
        for i in range(len(self.layers)):
            linears |= {f"layers.{i}.ih": "rnn_ih", f"layers.{i}.hh": "rnn_hh"}
            states += [StateSpec(f"{n}_{i}", (H,)) for n in self.state_names]
        linears |= {"proj": "proj", "lm_head": "lm_head"}
        hidden = ChannelGroup("hidden_size", [self._hidden_slices(i) for i in range(len(self.layers))])
        stack = [f"layers.{i}" for i in range(len(self.layers))]
        return ArchSpec(linears, [], [], {}, ["embed.weight"], states, embedding="embed", channel_groups={"hidden": hidden},
                        layer_stack=stack, layer_inputs=[f"{b}.ih" for b in stack] + ["proj"])

    def _hidden_slices(self, i: int) -> ChannelLayer:
        """Hidden unit k of layer i: row k of every gate in ih/hh (weights and biases), column k of
        hh, and column k of whatever reads h_i (the next layer's ih, or proj)."""
        H, G = self.config["hidden_size"], self.cell_cls.gates
        gates = tuple(g * H for g in range(G))
        nxt = f"layers.{i + 1}.ih.weight" if i + 1 < len(self.layers) else "proj.weight"
        s = [(f"layers.{i}.{lin}.{p}", 0, gates) for lin in ("ih", "hh") for p in ("weight", "bias")]
        s += [(f"layers.{i}.hh.weight", 1, (0,)), (nxt, 1, (0,))]
        return ChannelLayer(s, (f"state.h_{i}",), nxt, compensate=(f"layers.{i}.hh", nxt.removesuffix(".weight")))


class LSTMLM(_RNNLM):
    model_type = "lstm"
    cell_cls = LSTMCell
    state_names = ("h", "c")


class GRULM(_RNNLM):
    model_type = "gru"
    cell_cls = GRUCell
    state_names = ("h",)
