"""Regenerate the RWKV-7 golden vectors from flash-linear-attention's own implementation.

fla has no CPU path: its Triton kernels run on CPU only under TRITON_INTERPRET=1, and fla 0.5.2 (the
wheel on this machine's disk) does not import with the triton 3.9 that rnnquant's venv has. So the
vectors are made once, in a separate environment, and committed beside this script:

    python -m venv /tmp/flavenv && /tmp/flavenv/bin/pip install torch==2.13.0 triton==3.8.0 \\
        flash-linear-attention==0.5.2 fla-core==0.5.2 einops transformers
    TRITON_INTERPRET=1 /tmp/flavenv/bin/python tests/data/rwkv7_fla/make.py

Two tiny random configs (fuse_norm off and on: fla's torch and fused norms), parameters perturbed
away from fla's init so every path matters. Writes, per config, ``<name>/config.json`` +
``model.safetensors`` (fla's config and state dict, as save_pretrained lays them out) and ``<name>/golden.st`` (safetensors; not named .safetensors, which the loader would read as weights): ids [1, 48],
``forward`` logits [1, 48, V] from one call, and ``steps`` logits [1, 16, V] for positions 32..47
fed one token at a time through fla's cache after a 32-token prefill. Both go through fla's fused
recurrent kernel: its chunked kernel (used from 64 tokens) fails in the Triton interpreter.
"""
import json
import sys
import warnings
from pathlib import Path

from triton.runtime.autotuner import Autotuner

_init = Autotuner.__init__
Autotuner.__init__ = lambda self, fn, arg_names, configs, *a, **kw: _init(self, fn, arg_names, configs[:1], *a, **kw)  # the interpreter cannot benchmark

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

warnings.filterwarnings("ignore")
from fla.models.rwkv7 import RWKV7Config, RWKV7ForCausalLM  # noqa: E402

HERE = Path(__file__).parent
CONFIGS = {
    "plain": dict(fuse_norm=False),
    "fused-tied": dict(fuse_norm=True, tie_word_embeddings=True, num_hidden_layers=3),
}


def make(name: str, extra: dict) -> None:
    torch.manual_seed(0)
    cfg = RWKV7Config(**(dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, head_dim=8, decay_low_rank_dim=8,
                              gate_low_rank_dim=16, a_low_rank_dim=8, v_low_rank_dim=8, intermediate_size=64,
                              fuse_cross_entropy=False, use_l2warp=False) | extra))
    tie = cfg.tie_word_embeddings
    cfg.tie_word_embeddings = False  # fla 0.5.2's tied-weight declaration fails under transformers 5: tie by hand
    model = RWKV7ForCausalLM(cfg).eval()
    if tie:
        model.lm_head.weight = model.model.embeddings.weight
        cfg.tie_word_embeddings = True
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        out_dir = HERE / name
        out_dir.mkdir(exist_ok=True)  # save_pretrained of fla 0.5.2 fails under transformers 5: the same two files by hand
        tied = {"lm_head.weight"} if tie else set()
        save_file({k: v.contiguous() for k, v in model.state_dict().items() if k not in tied}, out_dir / "model.safetensors")
        (out_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1, sort_keys=True))
        ids = torch.randint(0, 64, (1, 48), generator=torch.Generator().manual_seed(1))
        forward = model(ids).logits
        out = model(ids[:, :32], use_cache=True)
        cache, steps = out.past_key_values, []
        for t in range(32, 48):
            out = model(ids[:, t : t + 1], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            steps.append(out.logits[:, -1])
    save_file({"ids": ids, "forward": forward.contiguous(), "steps": torch.stack(steps, 1).contiguous()}, out_dir / "golden.st")
    print(name, json.loads((out_dir / "config.json").read_text())["model_type"], forward.shape, file=sys.stderr)


if __name__ == "__main__":
    for name, extra in CONFIGS.items():
        make(name, extra)
