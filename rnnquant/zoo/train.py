"""Train the reference zoo: a byte-level BPE tokenizer and small Mamba / LSTM LMs on the vendored corpus.

    python -m rnnquant.zoo.train tokenizer --out rnnquant/zoo/models/tokenizer.json
    python -m rnnquant.zoo.train model --arch mamba --tokenizer .../tokenizer.json --out DIR --steps 500
    python -m rnnquant.zoo.train metrics DIR      # test/valid perplexity + unigram baseline -> DIR/metrics.json

Seeded end to end (torch, sampling of windows); with the same arguments and thread count the
same checkpoint comes out. Runs on CPU; ``--threads`` sets intra-op threads.
"""
from __future__ import annotations

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F

from rnnquant.io import save_checkpoint
from rnnquant.models import build
from rnnquant.zoo.corpus import split_documents

EOT = "<|endoftext|>"

ARCHS = {
    "mamba": {"model_type": "mamba", "hidden_size": 256, "num_hidden_layers": 4, "state_size": 16, "expand": 2, "conv_kernel": 4},
    "mamba2": {"model_type": "mamba2", "hidden_size": 256, "num_hidden_layers": 4, "state_size": 64, "expand": 2, "conv_kernel": 4,
               "num_heads": 8, "head_dim": 64, "n_groups": 1, "tie_word_embeddings": True},
    "rwkv7": {"model_type": "rwkv7", "hidden_size": 256, "num_hidden_layers": 4, "head_dim": 64, "intermediate_size": 256, "tie_word_embeddings": True,
              "decay_low_rank_dim": 32, "gate_low_rank_dim": 64, "a_low_rank_dim": 32, "v_low_rank_dim": 32},
    "rwkv": {"model_type": "rwkv", "hidden_size": 256, "num_hidden_layers": 4, "intermediate_size": 384, "tie_word_embeddings": True},
    "mingru": {"model_type": "mingru", "hidden_size": 256, "num_hidden_layers": 4, "intermediate_size": 256, "mlp_size": 512},
    "minlstm": {"model_type": "minlstm", "hidden_size": 256, "num_hidden_layers": 4, "intermediate_size": 256, "mlp_size": 512},
    "xlstm": {"model_type": "xlstm", "hidden_size": 192, "num_hidden_layers": 4, "num_heads": 4},
    "recurrent_gemma": {"model_type": "recurrent_gemma", "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
                        "num_key_value_heads": 1, "lru_width": 256, "attention_window_size": 64, "intermediate_size": 768,
                        "block_types": ["recurrent", "recurrent", "attention"]},
    "lstm": {"model_type": "lstm", "embed_size": 256, "hidden_size": 512, "num_layers": 2},
    "gru": {"model_type": "gru", "embed_size": 256, "hidden_size": 512, "num_layers": 2},
}


def train_tokenizer(vocab_size: int = 4096):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOT], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(split_documents("train"), trainer=trainer)
    return tok


def token_stream(tok, split: str) -> torch.Tensor:
    eot = tok.token_to_id(EOT)
    ids = []
    for enc in tok.encode_batch(split_documents(split)):
        ids += enc.ids + [eot]
    return torch.tensor(ids, dtype=torch.long)


def init_mamba(model, n_layers: int):
    """The Mamba reference initialisation (Gu & Dao; also HF's): dt in [1e-3, 1e-1] via the
    inverse-softplus bias, S4D-real A, D = 1, out_proj rescaled by 1/sqrt(n_layers)."""
    torch.nn.init.normal_(model.backbone.embeddings.weight, std=0.02)
    for layer in model.backbone.layers:
        m = layer.mixer
        std = m.R**-0.5
        torch.nn.init.uniform_(m.dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(m.E) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)
        with torch.no_grad():
            m.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
            m.out_proj.weight.div_(math.sqrt(n_layers))


def init_mamba2(model, n_layers: int):
    """Mamba-2's reference initialisation (state-spaces/mamba, HF's): A = 1..H per head, D = 1,
    dt in [1e-3, 1e-1] via the inverse-softplus dt_bias, out_proj rescaled by 1/sqrt(n_layers)."""
    torch.nn.init.normal_(model.backbone.embeddings.weight, std=0.02)
    for layer in model.backbone.layers:
        m = layer.mixer
        dt = torch.exp(torch.rand(m.H) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)
        with torch.no_grad():
            m.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
            m.out_proj.weight.div_(math.sqrt(n_layers))


@torch.no_grad()
def init_rwkv7(model, n_layers: int):
    """RWKV-7's reference initialisation (BlinkDL's RWKV-LM v7, as fla's layers apply it): token-shift
    mixes ramped over channels and depth, the decay bias w0 from -6 to 0 over channels plus a
    per-head zigzag, k_k 0.71, k_a 1.02, r_k -0.04, zero LoRA inputs with small orthogonal outputs,
    orthogonal r/k/v (k at gain 0.1), zero o_proj and FFN value; the tiny embedding and a large
    orthogonal head of BlinkDL's code."""
    D = model.config["hidden_size"]
    n = torch.arange(D, dtype=torch.float32)
    ddd = n / D
    linear = n / (D - 1) - 0.5
    for i, layer in enumerate(model.model.layers):
        att, ffn = layer.attn, layer.ffn
        r01, r10 = i / max(n_layers - 1, 1), 1.0 - i / n_layers
        N = att.N
        zigzag = ((n % N) - (N - 1) / 2) / ((N - 1) / 2)
        zigzag = zigzag * zigzag.abs()
        www = -6 + 6 * (n / (D - 1)) ** (1 + r01**0.3)
        for c, power in zip("rwkvag", (0.2, 0.9, 0.7, 0.7, 0.9, 0.2)):
            getattr(att, f"x_{c}").copy_((1.0 - ddd ** (power * r10)).view(1, 1, D))
        att.k_k.copy_(0.71 - linear * 0.1)
        att.k_a.fill_(1.02)
        att.r_k.fill_(-0.04)
        loras = [att.w_lora, att.a_lora, att.g_lora] + ([att.v_lora] if hasattr(att, "v_lora") else [])
        for lora in loras:
            down, up = lora.lora[0], lora.lora[2]
            torch.nn.init.zeros_(down.weight)
            gain = math.sqrt(up.weight.shape[1] / up.weight.shape[0]) if up.weight.shape[1] > up.weight.shape[0] else 1
            torch.nn.init.orthogonal_(up.weight, gain=0.1 * gain)
        att.w_lora.lora[2].bias.copy_(www + 0.5 + zigzag * 2.5)
        att.a_lora.lora[2].bias.copy_(-0.19 + zigzag * 0.3 + linear * 0.4)
        if hasattr(att, "v_lora"):
            att.v_lora.lora[2].bias.copy_(0.73 - linear * 0.4)
        att.g_norm.weight.fill_(((i + 1) / n_layers) ** 0.7)
        att.g_norm.bias.zero_()
        for lin, gain in ((att.r_proj, 1.0), (att.k_proj, 0.1), (att.v_proj, 1.0)):
            torch.nn.init.orthogonal_(lin.weight, gain=gain)
        att.o_proj.weight.zero_()
        ffn.x_k.copy_(1.0 - ddd ** (r10**4))
        torch.nn.init.orthogonal_(ffn.key.weight)
        ffn.value.weight.zero_()
    torch.nn.init.uniform_(model.model.embeddings.weight, -1e-4, 1e-4)
    if not model.config["tie_word_embeddings"]:
        V = model.config["vocab_size"]
        torch.nn.init.orthogonal_(model.lm_head.weight, gain=0.5 * math.sqrt(V / D) if V > D else 0.5)


@torch.no_grad()
def init_rwkv(model, n_layers: int):
    """RWKV-4's reference initialisation (BlinkDL's RWKV-LM v4): decay speeds from -5 to 3 over the
    channels (steeper in deeper blocks), time_first log 0.3 with a zigzag of +-0.5, token-shift
    mixes ramped over channels and depth; zero attention key / receptance / output and FFN
    receptance / value, orthogonal attention value and FFN key; the tiny embedding of BlinkDL's
    code (and, untied, a large orthogonal head)."""
    D, A = model.config["hidden_size"], model.config["attention_hidden_size"]
    ramp = (torch.arange(D, dtype=torch.float32) / D).view(1, 1, D)
    h = torch.arange(A, dtype=torch.float32)
    for i, block in enumerate(model.rwkv.blocks):
        att, ffn = block.attention, block.feed_forward
        r01, r10 = i / max(n_layers - 1, 1), 1.0 - i / n_layers
        att.time_decay.copy_(-5 + 8 * (h / (A - 1)) ** (0.7 + 1.3 * r01))
        att.time_first.copy_(math.log(0.3) + 0.5 * ((h + 1) % 3 - 1))
        att.time_mix_key.copy_(ramp**r10)
        att.time_mix_value.copy_(ramp**r10 + 0.3 * r01)
        att.time_mix_receptance.copy_(ramp ** (0.5 * r10))
        ffn.time_mix_key.copy_(ramp**r10)
        ffn.time_mix_receptance.copy_(ramp**r10)
        for lin in (att.key, att.receptance, att.output, ffn.receptance, ffn.value):
            lin.weight.zero_()
        for lin in (att.value, ffn.key):
            rows, cols = lin.weight.shape
            torch.nn.init.orthogonal_(lin.weight, gain=math.sqrt(rows / cols) if rows > cols else 1.0)
    torch.nn.init.uniform_(model.rwkv.embeddings.weight, -1e-4, 1e-4)
    if not model.config["tie_word_embeddings"]:
        V = model.config["vocab_size"]
        torch.nn.init.orthogonal_(model.head.weight, gain=0.5 * math.sqrt(V / D) if V > D else 0.5)


@torch.no_grad()
def init_minrnn(model, n_layers: int):
    """GPT-2-style: embedding N(0, 0.02), the Linears that write the residual stream scaled by 1/sqrt(2 L)."""
    torch.nn.init.normal_(model.embed.weight, std=0.02)
    for layer in model.layers:
        layer.cell.out_proj.weight.div_(math.sqrt(2 * n_layers))
        layer.mlp.down.weight.div_(math.sqrt(2 * n_layers))


@torch.no_grad()
def init_xlstm(model, n_layers: int):
    """xLSTM-7B's gate initialisation (Beck et al. 2025): input gates start closed (bias -10), forget
    gates open (bias 3..6 over heads), gate weights 0; N(0, 0.02) embedding; residual writers / sqrt(2 L)."""
    torch.nn.init.normal_(model.backbone.embeddings.weight, std=0.02)
    for blk in model.backbone.blocks:
        m = blk.mlstm_layer
        for gate, bias in ((m.igate_preact, torch.full((m.H,), -10.0)), (m.fgate_preact, torch.linspace(3.0, 6.0, m.H))):
            gate.weight.zero_()
            gate.bias.copy_(bias)
        m.out_proj.weight.div_(math.sqrt(2 * n_layers))
        blk.ffn.proj_down.weight.div_(math.sqrt(2 * n_layers))


@torch.no_grad()
def init_recurrent_gemma(model, n_layers: int):
    """transformers' RecurrentGemma initialisation: Λ such that a = sigmoid(Λ)^8 starts in [0.9, 0.999]
    (softplus form: softplus(Λ) = -log(a) / 8 ... via -0.5 log u, u ~ U(0.81, 0.998)), gates N(0, 0.01 / width),
    zero biases and norm offsets, embedding N(0, 0.05)."""
    torch.nn.init.normal_(model.model.embed_tokens.weight, std=math.sqrt(0.01 / model.config["conv1d_width"]))
    for layer in model.model.layers:
        t = layer.temporal_block
        if layer.kind == "recurrent":
            lru = t.rg_lru
            u = torch.empty_like(lru.recurrent_param).uniform_(0.9**2 + 1e-8, 0.999**2 + 1e-8)
            lru.recurrent_param.copy_(torch.log(torch.exp(-0.5 * torch.log(u)) - 1.0))
            for w in (lru.input_gate_weight, lru.recurrent_gate_weight):
                torch.nn.init.normal_(w, std=math.sqrt(0.01 / lru.bw))
            t.linear_out.weight.div_(math.sqrt(2 * n_layers))
        else:
            t.o_proj.weight.div_(math.sqrt(2 * n_layers))
        layer.mlp_block.down_proj.weight.div_(math.sqrt(2 * n_layers))


def init_rnn(model, n_layers: int):
    torch.nn.init.normal_(model.embed.weight, std=0.05)


INITS = {"mamba": init_mamba, "mamba2": init_mamba2, "lstm": init_rnn, "gru": init_rnn, "rwkv": init_rwkv, "rwkv7": init_rwkv7, "mingru": init_minrnn, "minlstm": init_minrnn, "xlstm": init_xlstm,
         "recurrent_gemma": init_recurrent_gemma}


def train_model(args) -> None:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(args.tokenizer)
    eot = tok.token_to_id(EOT)
    cfg = ARCHS[args.arch] | {"vocab_size": tok.get_vocab_size(), "bos_token_id": eot, "eos_token_id": eot}
    model = build(cfg)
    INITS[args.arch](model, cfg.get("num_hidden_layers", 0))
    data = token_stream(tok, "train")
    valid = token_stream(tok, "valid")
    print(f"{args.arch}: {model.num_parameters() / 1e6:.2f}M params, {len(data)} train tokens", flush=True)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "A_log" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "A_log" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(args.seed)
    warmup = max(1, args.steps // 20)
    t0 = time.time()
    model.train()
    for step in range(args.steps):
        lr = args.lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / args.steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.randint(0, len(data) - args.seq_len - 1, (args.batch,), generator=gen)
        batch = torch.stack([data[s : s + args.seq_len + 1] for s in starts.tolist()])
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.3f}  lr {lr:.2e}  {time.time() - t0:.0f}s", flush=True)
    model.eval()
    from rnnquant.eval import perplexity_ids

    save_checkpoint(model, args.out, tokenizer_path=args.tokenizer)
    print(f"saved {args.out} in {time.time() - t0:.0f}s", flush=True)
    print(f"valid ppl {perplexity_ids(model, valid, window=512).ppl:.2f}", flush=True)


def unigram_perplexity(train: torch.Tensor, test: torch.Tensor, vocab_size: int) -> float:
    """Perplexity of an add-one-smoothed unigram model fitted on ``train``: the floor any LM must beat."""
    counts = torch.bincount(train, minlength=vocab_size).double() + 1
    logp = torch.log(counts / counts.sum())
    return math.exp(-logp[test[1:]].mean().item())  # the first token is not predicted by the LMs either


def write_metrics(model_dir: str, window: int = 512) -> dict:
    from rnnquant.eval import perplexity_ids
    from rnnquant.io import write_json
    from rnnquant.artifacts import load

    model = load(model_dir)
    train, test = token_stream(model.tokenizer, "train"), token_stream(model.tokenizer, "test")
    metrics = {
        "test_ppl": round(perplexity_ids(model, test, window=window).ppl, 4),
        "valid_ppl": round(perplexity_ids(model, token_stream(model.tokenizer, "valid"), window=window).ppl, 4),
        "unigram_test_ppl": round(unigram_perplexity(train, test, model.vocab_size), 4),
        "test_tokens": len(test) - 1,
        "window": window,
    }
    write_json(f"{model_dir}/metrics.json", metrics)
    return metrics


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tokenizer")
    t.add_argument("--out", required=True)
    t.add_argument("--vocab-size", type=int, default=4096)
    m = sub.add_parser("model")
    m.add_argument("--arch", choices=sorted(ARCHS), required=True)
    m.add_argument("--tokenizer", required=True)
    m.add_argument("--out", required=True)
    m.add_argument("--steps", type=int, default=1500)
    m.add_argument("--batch", type=int, default=16)
    m.add_argument("--seq-len", type=int, default=256)
    m.add_argument("--lr", type=float, default=3e-3)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--threads", type=int, default=1)
    e = sub.add_parser("metrics")
    e.add_argument("model_dir")
    args = ap.parse_args(argv)
    if args.cmd == "metrics":
        print(json.dumps(write_metrics(args.model_dir), indent=2))
    elif args.cmd == "tokenizer":
        tok = train_tokenizer(args.vocab_size)
        tok.save(args.out)
        print(f"tokenizer with {tok.get_vocab_size()} tokens -> {args.out}")
    else:
        train_model(args)


if __name__ == "__main__":
    main()
