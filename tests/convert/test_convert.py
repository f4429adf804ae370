"""`rnnquant convert`: real torch.nn.LSTM / nn.GRU language models, in the namings found in the
wild, convert to directories whose logits equal the source module's; bad sources are refused."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from rnnquant.artifacts import load
from tests.conftest import TOKENIZER, VOCAB
from tests.helpers import assert_one_line_error, run_cli


class WordLanguageModel(nn.Module):
    """PyTorch's examples/word_language_model RNNModel (encoder / rnn / decoder, sequence-first)."""

    def __init__(self, kind="LSTM", ninp=24, nhid=32, nlayers=2, tie=False):
        super().__init__()
        self.encoder = nn.Embedding(VOCAB, ninp)
        self.rnn = getattr(nn, kind)(ninp, nhid, nlayers)
        self.decoder = nn.Linear(nhid, VOCAB)
        if tie:
            self.decoder.weight = self.encoder.weight

    def forward(self, ids):  # ids [B,T] -> logits [B,T,V]
        out, _ = self.rnn(self.encoder(ids.T))
        return self.decoder(out).transpose(0, 1)


class Other(nn.Module):
    """The other common naming, batch-first: embedding / lstm / head; optionally LSTMP."""

    def __init__(self, kind="LSTM", proj_size=0, bias=True):
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, 16)
        kw = {"proj_size": proj_size} if proj_size else {}
        self.lstm = getattr(nn, kind)(16, 40, 2, batch_first=True, bias=bias, **kw)
        self.head = nn.Linear(proj_size or 40, VOCAB)

    def forward(self, ids):
        return self.head(self.lstm(self.embedding(ids))[0])


class Stacked(nn.Module):
    """AWD-LSTM-style: a numbered list of one-layer LSTMs and a tied decoder with a bias."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Embedding(VOCAB, 24)
        self.rnns = nn.ModuleList(nn.LSTM(24, 24) for _ in range(3))
        self.decoder = nn.Linear(24, VOCAB)
        self.decoder.weight = self.encoder.weight

    def forward(self, ids):
        x = self.encoder(ids.T)
        for r in self.rnns:
            x = r(x)[0]
        return self.decoder(x).transpose(0, 1)


def _perturbed(module):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return module.eval()


SOURCES = {
    "wlm-lstm": lambda: WordLanguageModel("LSTM"),
    "wlm-gru": lambda: WordLanguageModel("GRU"),
    "wlm-lstm-tied": lambda: WordLanguageModel("LSTM", ninp=32, tie=True),
    "other-lstm": lambda: Other("LSTM"),
    "other-gru-nobias": lambda: Other("GRU", bias=False),
    "other-lstmp": lambda: Other("LSTM", proj_size=12),
    "stacked": Stacked,
}


def _convert(capsys, tmp_path, module, fmt=".pt", *flags):
    tmp_path.mkdir(exist_ok=True)
    src = tmp_path / f"src{fmt}"
    sd = module.state_dict()
    if fmt == ".safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, src)
    else:
        torch.save(sd, src)
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "convert", src, "--tokenizer", TOKENIZER, "--out", out, *flags)
    assert code == 0, err
    return out, stdout


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_converted_logits_equal_the_source_module(capsys, tmp_path, name):
    src = _perturbed(SOURCES[name]())
    out, _ = _convert(capsys, tmp_path, src)
    ids = torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (load(out)(ids) - src(ids)).abs().max() <= 1e-5


def test_a_dict_holding_the_state_dict_and_safetensors_both_convert(capsys, tmp_path):
    src = _perturbed(WordLanguageModel("LSTM"))
    torch.save({"epoch": 3, "state_dict": src.state_dict(), "lr": 0.1}, tmp_path / "ckpt.pth")
    code, _, err = run_cli(capsys, "convert", tmp_path / "ckpt.pth", "--tokenizer", TOKENIZER, "--out", tmp_path / "a")
    assert code == 0, err
    b, _ = _convert(capsys, tmp_path / "st", src, ".safetensors")
    ids = torch.randint(0, VOCAB, (1, 20))
    with torch.no_grad():
        assert torch.equal(load(tmp_path / "a")(ids), load(b)(ids))


def test_the_mapping_is_printed_and_the_config_says_what_was_found(capsys, tmp_path):
    out, stdout = _convert(capsys, tmp_path, _perturbed(WordLanguageModel("GRU")))
    assert "encoder.weight [4096, 24] -> embed.weight" in stdout and "decoder.weight + bias -> lm_head" in stdout
    cfg = load(out).config
    assert (cfg["output_proj"], cfg["head_bias"], cfg["tie_word_embeddings"], cfg["num_layers"]) == (False, True, False, 2)


def test_flags_pick_among_several_rnns(capsys, tmp_path):
    src = WordLanguageModel("LSTM")
    sd = src.state_dict() | {f"aux.{k}": v for k, v in nn.LSTM(24, 8).state_dict().items()}
    torch.save(sd, tmp_path / "two.pt")
    assert_one_line_error(capsys, "convert", tmp_path / "two.pt", "--tokenizer", TOKENIZER, "--out", tmp_path / "o", match="pass --rnn PREFIX")
    # naming the RNN leaves the other one's tensors without a place: still refused, now saying which
    assert_one_line_error(capsys, "convert", tmp_path / "two.pt", "--tokenizer", TOKENIZER, "--rnn", "rnn", "--out", tmp_path / "o",
                          match="no place for: aux.bias_hh_l0")
    assert not (tmp_path / "o").exists()


def _refused(capsys, tmp_path, obj, match, *flags, name="m.pt"):
    torch.save(obj, tmp_path / name)
    assert_one_line_error(capsys, "convert", tmp_path / name, "--tokenizer", TOKENIZER, "--out", tmp_path / "o", *flags, match=match)
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o*"))


def test_bidirectional_is_refused(capsys, tmp_path):
    sd = {"emb.weight": torch.randn(VOCAB, 8)} | {f"rnn.{k}": v for k, v in nn.LSTM(8, 8, bidirectional=True).state_dict().items()}
    _refused(capsys, tmp_path, sd, "not a causal language model")


def test_a_pickled_module_is_refused(capsys, tmp_path):
    _refused(capsys, tmp_path, WordLanguageModel(), "needs pickle code")


def test_a_missing_head_is_refused(capsys, tmp_path):
    sd = {k: v for k, v in WordLanguageModel().state_dict().items() if not k.startswith("decoder")}
    _refused(capsys, tmp_path, sd, "candidates for the head")


def test_extra_computation_is_refused(capsys, tmp_path):
    sd = WordLanguageModel().state_dict() | {"norm.weight": torch.ones(32), "norm.bias": torch.zeros(32)}
    _refused(capsys, tmp_path, sd, "no place for: norm.bias, norm.weight")


def test_a_wrong_type_flag_is_refused(capsys, tmp_path):
    _refused(capsys, tmp_path, WordLanguageModel("GRU").state_dict(), "--type lstm, but the shapes are a GRU", "--type", "lstm")


def test_no_rnn_and_no_tokenizer_are_refused(capsys, tmp_path):
    _refused(capsys, tmp_path, {"w": torch.zeros(3)}, "no converter recognises")
    torch.save(WordLanguageModel().state_dict(), tmp_path / "m.pt")
    assert_one_line_error(capsys, "convert", tmp_path / "m.pt", "--out", tmp_path / "o", match="pass --tokenizer FILE")


def test_a_damaged_file_is_not_called_a_pickled_module(capsys, tmp_path):
    (tmp_path / "m.pt").write_bytes(b"not a checkpoint at all")
    err = assert_one_line_error(capsys, "convert", tmp_path / "m.pt", "--tokenizer", TOKENIZER, "--out", tmp_path / "o",
                                match="not a readable torch checkpoint")
    assert "pickle code" not in err and not (tmp_path / "o").exists()
