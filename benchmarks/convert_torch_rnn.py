"""`rnnquant convert` on real torch.nn.LSTM / nn.GRU language models, trained here (docs/RESULTS.md).

    python benchmarks/convert_torch_rnn.py [--steps 300] [--threads 2] [--out DIR]

Trains, seeded, three models of the kinds users have, on the zoo corpus with the zoo tokenizer:
PyTorch's examples/word_language_model RNNModel (encoder -> nn.LSTM -> decoder with bias, untied),
the same with nn.GRU, and a tied word_language_model LSTM (--tied: nhid == emsize). Each is saved
as a plain ``state_dict`` .pt, then, through the CLI in fresh processes: convert -> ppl (compared
with the source module's own perplexity on the same windows) -> calibrate -> quantize
(w8a8-outlier, w4a16-gptq) -> export -> run -> compare. Writes
benchmarks/results/convert_torch_rnn.json.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from rnnquant.eval.windows import windows
from rnnquant.text import token_ids
from rnnquant.zoo import MODELS_DIR
from rnnquant.zoo.corpus import split_text
from rnnquant.zoo.train import token_stream

RESULTS = Path(__file__).parent / "results"
V = 4096


class RNNModel(nn.Module):
    """examples/word_language_model's RNNModel (dropout 0 at evaluation; sequence-first)."""

    def __init__(self, kind: str, ninp: int, nhid: int, nlayers: int, tie: bool):
        super().__init__()
        self.encoder = nn.Embedding(V, ninp)
        self.rnn = getattr(nn, kind)(ninp, nhid, nlayers, dropout=0.1)
        self.decoder = nn.Linear(nhid, V)
        if tie:
            self.decoder.weight = self.encoder.weight

    def forward(self, ids):  # [B,T] -> [B,T,V]
        out, _ = self.rnn(self.encoder(ids.T))
        return self.decoder(out).transpose(0, 1)


MODELS = {
    "wlm-lstm": ("LSTM", 256, 512, 2, False),
    "wlm-gru": ("GRU", 256, 512, 2, False),
    "wlm-lstm-tied": ("LSTM", 256, 256, 2, True),
}


def train(model, ids, steps: int, seq_len: int = 128, batch: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=steps, pct_start=0.1)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - seq_len - 1, (batch,), generator=g)
        x = torch.stack([ids[s : s + seq_len + 1] for s in starts.tolist()])
        loss = F.cross_entropy(model(x[:, :-1]).reshape(-1, V), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    return model.eval()


@torch.no_grad()
def source_ppl(model, ids, window: int = 512, batch: int = 8) -> float:
    """The source module's perplexity on rnnquant ppl's windows (fresh state per window)."""
    spans = windows(len(ids), window)
    total, count = 0.0, 0
    for i in range(0, len(spans), batch):
        group: dict[int, list] = {}
        for s, e in spans[i : i + batch]:
            group.setdefault(e - s, []).append(ids[s:e])
        for seqs in group.values():
            x = torch.stack(seqs)
            total += float(F.cross_entropy(model(x[:, :-1]).reshape(-1, V), x[:, 1:].reshape(-1), reduction="sum"))
            count += x.numel() - x.shape[0]
    return math.exp(total / count)


def cli(*args) -> str:
    res = subprocess.run([sys.executable, "-m", "rnnquant.cli", *map(str, args)], capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"rnnquant {' '.join(map(str, args))} failed: {res.stderr.strip().splitlines()[-1]}")
    return res.stdout + res.stderr


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("convert-out"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(MODELS_DIR / "tokenizer.json"))
    args.out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        (args.out / f"{split}.txt").write_text(split_text(split))
    # the source is scored on the very ids `rnnquant ppl --data test.txt` reads
    train_ids, test_ids = token_stream(tok, "train"), torch.from_numpy(token_ids(tok, args.out / "test.txt", 10**12)[0]).long()
    rows = {}
    for name, spec in MODELS.items():
        torch.manual_seed(0)
        t0 = time.perf_counter()
        model = train(RNNModel(*spec), train_ids, args.steps)
        train_s = time.perf_counter() - t0
        src = args.out / name / "src"
        src.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), src / "model.pt")
        shutil.copyfile(MODELS_DIR / "tokenizer.json", src / "tokenizer.json")
        ref = source_ppl(model, test_ids)
        d = args.out / name
        conv = cli("convert", src / "model.pt", "--out", d / "converted", "--force")
        test, train_txt = args.out / "test.txt", args.out / "train.txt"
        ppl = float(re.search(r"perplexity ([\d.]+)", cli("ppl", d / "converted", "--data", test)).group(1))
        cli("calibrate", d / "converted", "--data", train_txt, "--samples", 64, "--out", d / "calib", "--force")
        graphs = [d / "fp32.onnx"]
        cli("export", d / "converted", "--out", graphs[0], "--force")
        quant = {}
        for recipe in ("w8a8-outlier", "w4a16-gptq"):
            cli("quantize", d / "converted", "--calib", d / "calib", "--data", train_txt, "--recipe", recipe, "--out", d / recipe, "--force")
            quant[recipe] = float(re.search(r"perplexity ([\d.]+)", cli("ppl", d / recipe, "--data", test)).group(1))
            graphs.append(d / f"{recipe}.onnx")
            cli("export", d / recipe, "--out", graphs[-1], "--force")
        generated = cli("run", graphs[1], "--prompt", "The list data type", "--max-new-tokens", 24, "--threads", args.threads)
        cli("compare", "--float", d / "converted", *graphs, "--data", test, "--threads", args.threads, "--out", d / "report")
        report = json.loads((d / "report" / "report.json").read_text())
        rows[name] = {"source": f"{spec[0]} emb {spec[1]} hidden {spec[2]} x{spec[3]}" + (" tied" if spec[4] else " untied, head bias"),
                      "train_steps": args.steps, "train_s": round(train_s, 1), "mapping": conv.strip().splitlines(),
                      "source_ppl": ref, "converted_ppl": ppl, "rel_diff_pct": 100 * abs(ppl - ref) / ref, "quantized_ppl": quant,
                      "run": generated.strip().splitlines(), "compare": report}
        print(f"{name}: source {ref:.4f} converted {ppl:.4f} ({rows[name]['rel_diff_pct']:.4f} %); "
              + ", ".join(f"{k} {v:.3f}" for k, v in quant.items()), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "convert_torch_rnn.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
