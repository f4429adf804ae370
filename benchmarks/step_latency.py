"""Per-token step latency at real shapes, rnnquant vs peers, ratios measured in one run.

    python benchmarks/step_latency.py [--arch mamba|mamba2|lstm|rwkv|rwkv7|recurrent_gemma|xlstm] [--threads 1 2] [--tokens 64] [--rounds 2]

Builds a random-initialised model at mamba-130m shape (d_model 768, 24 layers, vocab 50280,
d_state 16, expand 2; or an LSTM LM of similar size) and times, at batch 1:
  - Hugging Face transformers MambaForCausalLM fp32 (cached decode, one token per forward);
  - rnnquant's ORT float step graph;
  - ORT's quantize_dynamic applied to that float graph (the peer tool's default);
  - rnnquant's w8a8-dynamic, w8a8-smooth (static activation scales, calibrated on random tokens:
    right for timing, meaningless for accuracy), w4a16-rtn and w4a8-rtn step graphs; on a CPU with
    VNNI or AMX also both int8 graphs exported with `--cpu vnni` (int8 weights: U8S8), and where
    the architecture has rnnquant's fused step ops, the static int8 and w4a8 graphs with `--fused`;
  - the memory-bandwidth floor: weight bytes read per token / read bandwidth measured now, both
    by one numpy thread and by ONNX Runtime's own int8 MatMulInteger at the same thread count
    (`over_ort_floor`: each variant's time / the floor for its weight width);
  - llama.cpp (Mamba, Mamba-2 and RWKV-7) F32, Q8_0, Q4_0 and Q4_0 --pure with llama-bench, when benchmarks/peers/llamacpp.sh
    has built it (skipped with a message otherwise).
Prints ratios and writes benchmarks/results/step_latency_<arch>.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
import time
from pathlib import Path

import numpy as np
import torch

from rnnquant.errors import RnnquantError
from rnnquant.calibrate import CalibConfig, calibrate, calibration_batches
from rnnquant.exporters.measure import measure_in_process
from rnnquant.exporters.onnx_export import export_step
from rnnquant.exporters.prefill import step_bytes
from rnnquant.exporters.runner import VNNI_FLAGS, cpu_flags
from rnnquant.models import build, fingerprint
from rnnquant.quant import PRESETS, quantize
from rnnquant.zoo import MODELS_DIR

sys.path.insert(0, str(Path(__file__).parent))
from peers import llamacpp  # noqa: E402

OUT = Path(__file__).parent / "results"
# the w4a8 preset's integer path (MatMulNBits with int8 activations) without GPTQ and Hadamard, which
# need calibration text a random-init model has no use for
W4A8_RTN = replace(PRESETS["w4a8"], name="w4a8-rtn", hadamard=False, rules=[replace(r, w_method="rtn") for r in PRESETS["w4a8"].rules])
SHAPES = {
    "mamba": {"model_type": "mamba", "vocab_size": 50280, "hidden_size": 768, "num_hidden_layers": 24, "state_size": 16, "expand": 2},
    # mamba2-130m's shape (state-spaces/mamba2-130m): 24 heads of 64, d_state 128, one group; its vocabulary padded
    # to a multiple of 16 (50288) as the Hugging Face config has it, which llama.cpp's converter requires
    "mamba2": {"model_type": "mamba2", "vocab_size": 50288, "hidden_size": 768, "num_hidden_layers": 24, "state_size": 128, "expand": 2,
               "num_heads": 24, "head_dim": 64, "n_groups": 1, "tie_word_embeddings": True},
    "lstm": {"model_type": "lstm", "vocab_size": 50280, "embed_size": 768, "hidden_size": 1536, "num_layers": 3},
    # RWKV-4 169M (RWKV/rwkv-4-169m-pile) and RWKV-7 0.1B (BlinkDL's x070 World 0.1B: LoRA ranks 64 / 64 / 32 / 128)
    "rwkv": {"model_type": "rwkv", "vocab_size": 50277, "hidden_size": 768, "num_hidden_layers": 12, "intermediate_size": 3072},
    "rwkv7": {"model_type": "rwkv7", "vocab_size": 65536, "hidden_size": 768, "num_hidden_layers": 12, "head_dim": 64,
              "intermediate_size": 3072, "decay_low_rank_dim": 64, "a_low_rank_dim": 64, "v_low_rank_dim": 32, "gate_low_rank_dim": 128},
    # RecurrentGemma-2B's pattern (recurrent, recurrent, local MQA; window 2048; MLP 3x) scaled to d_model 768, 12 layers
    "recurrent_gemma": {"model_type": "recurrent_gemma", "vocab_size": 50280, "hidden_size": 768, "num_hidden_layers": 12,
                        "num_attention_heads": 12, "num_key_value_heads": 1, "lru_width": 768, "attention_window_size": 2048,
                        "intermediate_size": 4608},
    # xLSTM-7B's block (mLSTM, q/k at half width, SwiGLU x2.667) at d_model 768, 12 layers, 4 heads
    "xlstm": {"model_type": "xlstm", "vocab_size": 50280, "hidden_size": 768, "num_hidden_layers": 12, "num_heads": 4},
}
# the transformers class that is each architecture's reference peer (same config keys, same weights)
HF_PEERS = {"mamba": ("MambaForCausalLM", "MambaConfig"), "mamba2": ("Mamba2ForCausalLM", "Mamba2Config"), "rwkv": ("RwkvForCausalLM", "RwkvConfig"),
            "recurrent_gemma": ("RecurrentGemmaForCausalLM", "RecurrentGemmaConfig"), "xlstm": ("xLSTMForCausalLM", "xLSTMConfig")}


def shape_model(arch: str = "mamba"):
    """The random-initialised model at ``SHAPES[arch]`` every shape benchmark times (seed 0)."""
    torch.manual_seed(0)
    model = build(SHAPES[arch]).eval()
    model.provenance = model.provenance.derive(fingerprint=fingerprint(model))
    return model


def static_int8(model):
    """w8a8-smooth with static scales calibrated on 8 x 128 random tokens: right for timing a
    static-activation int8 graph, meaningless for accuracy."""
    ids = torch.randint(0, model.vocab_size, (8 * 128,), generator=torch.Generator().manual_seed(0))
    calib = calibrate(model, ids, CalibConfig(samples=8, seq_len=128))
    return quantize(model, PRESETS["w8a8-smooth"], calib, calibration_batches(ids, 8, 128, 4))


def read_bandwidth_gbs(mb: int = 1024, reps: int = 5) -> float:
    a = np.ones(mb * 2**20 // 8)
    a.sum()
    best = min(_timed(a.sum) for _ in range(reps))
    return a.nbytes / best / 1e9


def ort_int8_read_gbs(nbytes: int, threads: int, reps: int = 20) -> float:
    """Read bandwidth as ONNX Runtime's own int8 kernel sees it, with ``threads`` threads: one
    batch-1 ``MatMulInteger`` (u8 x s8, the step graphs' kernel) over an [K, N] int8 weight of
    ``nbytes``, best of ``reps`` (a GEMV: bound by reading the weight, not by its arithmetic)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    k = 4096
    n = max(nbytes // k, 1)
    w = numpy_helper.from_array(np.random.default_rng(0).integers(-127, 128, (k, n), dtype=np.int8), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["x", "w", "zx"], ["y"])], "floor",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, k])], [helper.make_tensor_value_info("y", TensorProto.INT32, [1, n])],
        initializer=[w, helper.make_tensor("zx", TensorProto.UINT8, [], [128])])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(), opts,
                                   providers=["CPUExecutionProvider"])
    feeds = {"x": np.full((1, k), 130, np.uint8)}
    session.run(None, feeds)
    best = min(_timed(lambda: session.run(None, feeds)) for _ in range(reps))
    return k * n / best / 1e9


# the floor each variant is held to: bytes per weight it reads
BITS = {"rnnquant fp32": 32, "llama.cpp F32": 32, "HF transformers fp32": 32, "ORT quantize_dynamic (int8)": 8, "rnnquant w8a8-dynamic": 8,
        "rnnquant w8a8-smooth (static)": 8, "rnnquant w8a8-dynamic --cpu vnni": 8, "rnnquant w8a8-smooth (static) --cpu vnni": 8,
        "rnnquant w8a8-smooth (static) --cpu vnni --fused": 8, "rnnquant w4a8-rtn --fused": 4, "llama.cpp Q8_0": 8, "rnnquant w4a16-rtn": 4, "rnnquant w4a8-rtn": 4, "llama.cpp Q4_0": 4,
        "llama.cpp Q4_0 --pure": 4}


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def hf_latency(cfg: dict, state_dict, tokens: int, threads: int) -> float | None:
    try:
        import transformers
    except ImportError:
        return None
    if cfg["model_type"] not in HF_PEERS:
        return None
    torch.set_num_threads(threads)
    model_cls, config_cls = (getattr(transformers, n) for n in HF_PEERS[cfg["model_type"]])
    hf = model_cls(config_cls(**{k: v for k, v in cfg.items() if k != "model_type"})).eval()
    missing, unexpected = hf.load_state_dict(state_dict, strict=False)
    assert not unexpected and all(k == "lm_head.weight" for k in missing), (missing, unexpected)  # the same weights
    ids = torch.tensor([[1]])
    with torch.no_grad():
        out = hf.generate(ids, max_new_tokens=8, do_sample=False)  # warm-up
        t0 = time.perf_counter()
        out = hf.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
        dt = time.perf_counter() - t0
    return 1e3 * dt / (out.shape[1] - 1)


def weight_bytes(model, bits: int) -> int:
    """Bytes read per token: every Linear at ``bits`` plus one embedding row (the tied head is a Linear)."""
    n = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return n * bits // 8


def ratios(ms: dict) -> dict:
    """How many times faster the first of each pair is (the issue's targets), where both were measured."""
    pairs = {
        "int8 vs llama.cpp Q8_0": ("rnnquant w8a8-dynamic", "llama.cpp Q8_0"),
        "int8 vs ORT quantize_dynamic": ("rnnquant w8a8-dynamic", "ORT quantize_dynamic (int8)"),
        "int8 static vs llama.cpp Q8_0": ("rnnquant w8a8-smooth (static)", "llama.cpp Q8_0"),
        "int8 static vs ORT quantize_dynamic": ("rnnquant w8a8-smooth (static)", "ORT quantize_dynamic (int8)"),
        "int8 --cpu vnni vs llama.cpp Q8_0": ("rnnquant w8a8-dynamic --cpu vnni", "llama.cpp Q8_0"),
        "int8 --cpu vnni vs ORT quantize_dynamic": ("rnnquant w8a8-dynamic --cpu vnni", "ORT quantize_dynamic (int8)"),
        "int8 static --cpu vnni vs llama.cpp Q8_0": ("rnnquant w8a8-smooth (static) --cpu vnni", "llama.cpp Q8_0"),
        "int8 static --cpu vnni vs ORT quantize_dynamic": ("rnnquant w8a8-smooth (static) --cpu vnni", "ORT quantize_dynamic (int8)"),
        "int8 static --cpu vnni --fused vs llama.cpp Q8_0": ("rnnquant w8a8-smooth (static) --cpu vnni --fused", "llama.cpp Q8_0"),
        "int8 static --cpu vnni --fused vs ORT quantize_dynamic": ("rnnquant w8a8-smooth (static) --cpu vnni --fused", "ORT quantize_dynamic (int8)"),
        "int8 static --cpu vnni --fused vs HF fp32": ("rnnquant w8a8-smooth (static) --cpu vnni --fused", "HF transformers fp32"),
        "int4 (w4a8) --fused vs llama.cpp Q4_0": ("rnnquant w4a8-rtn --fused", "llama.cpp Q4_0"),
        "int4 (w4a8) --fused vs llama.cpp Q4_0 --pure": ("rnnquant w4a8-rtn --fused", "llama.cpp Q4_0 --pure"),
        "int4 (w4a16) vs llama.cpp Q4_0": ("rnnquant w4a16-rtn", "llama.cpp Q4_0"),
        "int4 (w4a8) vs llama.cpp Q4_0": ("rnnquant w4a8-rtn", "llama.cpp Q4_0"),
        "fp32 vs llama.cpp F32": ("rnnquant fp32", "llama.cpp F32"),
        "int8 vs HF fp32": ("rnnquant w8a8-dynamic", "HF transformers fp32"),
    }
    return {k: ms[b] / ms[a] for k, (a, b) in pairs.items() if ms.get(a) and ms.get(b)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=sorted(SHAPES), default="mamba")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2, help="Interleaved rounds over the thread counts (each variant once per round).")
    args = ap.parse_args()
    model = shape_model(args.arch)
    results = {"arch": args.arch, "config": SHAPES[args.arch], "params": model.num_parameters(), "rows": []}
    bw = read_bandwidth_gbs()
    results["read_bandwidth_gbs"] = bw
    print(f"{args.arch}: {model.num_parameters() / 1e6:.1f}M params; read bandwidth {bw:.1f} GB/s", flush=True)
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        paths = {"rnnquant fp32": export_step(model, td / "fp32.onnx", MODELS_DIR / "tokenizer.json", prefill=False)}
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(paths["rnnquant fp32"]), str(td / "ort_dyn.onnx"), weight_type=QuantType.QInt8)
        paths["ORT quantize_dynamic (int8)"] = td / "ort_dyn.onnx"
        vnni = bool((cpu_flags() or set()) & set(VNNI_FLAGS))  # where U8S8 is exact (the runner refuses it elsewhere)
        int8 = {"rnnquant w8a8-dynamic": quantize(model, PRESETS["w8a8-dynamic"])}
        if model.arch_spec().smoothing_pairs:
            int8["rnnquant w8a8-smooth (static)"] = static_int8(model)
        for i, (name, q) in enumerate(int8.items()):
            paths[name] = export_step(q, td / f"w8_{i}.onnx", MODELS_DIR / "tokenizer.json", prefill=False)
            if vnni:
                paths[f"{name} --cpu vnni"] = export_step(q, td / f"w8_{i}_vnni.onnx", MODELS_DIR / "tokenizer.json", prefill=False, int8_weights="int8")
        paths["rnnquant w4a16-rtn"] = export_step(quantize(model, PRESETS["w4a16-rtn"]), td / "w4.onnx", MODELS_DIR / "tokenizer.json", prefill=False)
        w4a8 = quantize(model, W4A8_RTN)
        paths["rnnquant w4a8-rtn"] = export_step(w4a8, td / "w4a8.onnx", MODELS_DIR / "tokenizer.json", prefill=False)
        if vnni and "rnnquant w8a8-smooth (static)" in int8:  # `export --fused` (rnnquant's custom ops), where the architecture has them
            fused = {"rnnquant w8a8-smooth (static) --cpu vnni --fused": (int8["rnnquant w8a8-smooth (static)"], "int8"), "rnnquant w4a8-rtn --fused": (w4a8, "int8")}
            for i, (name, (q, weights)) in enumerate(fused.items()):
                try:
                    paths[name] = export_step(q, td / f"fused_{i}.onnx", MODELS_DIR / "tokenizer.json", prefill=False, int8_weights=weights, fused=True)
                except RnnquantError as e:  # this architecture's step has no fused op
                    print(f"no {name}: {e}", flush=True)
                    break
        ggufs = llamacpp.to_gguf(model, td) if llamacpp.supports(model) and llamacpp.available() else {}
        floors = {32: weight_bytes(model, 32), 8: weight_bytes(model, 8), 4: weight_bytes(model, 4)}
        results["file_bytes"] = {name: step_bytes(p) for name, p in paths.items()} | {f"llama.cpp {q}": g.stat().st_size for q, g in ggufs.items()}
        print("files: " + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in results["file_bytes"].items()), flush=True)
        for rnd in range(args.rounds):
            for threads in args.threads:
                row = {"threads": threads, "round": rnd, "ms": {}}
                for name, p in paths.items():
                    row["ms"][name] = measure_in_process(p, args.tokens, threads)["latency_ms"]["p50"]
                if args.arch in HF_PEERS:
                    row["ms"]["HF transformers fp32"] = hf_latency(SHAPES[args.arch], model.state_dict(), args.tokens, threads)
                for q, g in ggufs.items():
                    row["ms"][f"llama.cpp {q}"] = llamacpp.decode_ms(g, threads, args.tokens)
                row["floor_ms"] = {f"{b}-bit": 1e3 * n / (bw * 1e9) for b, n in floors.items()}
                ort_bw = ort_int8_read_gbs(floors[8], threads)
                row["ort_int8_read_gbs"] = ort_bw
                row["ort_floor_ms"] = {f"{b}-bit": 1e3 * n / (ort_bw * 1e9) for b, n in floors.items()}
                row["over_ort_floor"] = {k: v / row["ort_floor_ms"][f"{BITS[k]}-bit"] for k, v in row["ms"].items() if v and k in BITS}
                results["rows"].append(row)
                print(f"round {rnd}, threads {threads}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in row["ms"].items() if v is not None), flush=True)
                print(f"  ORT int8 read {ort_bw:.1f} GB/s; floors: " + ", ".join(f"{k} {v:.2f} ms" for k, v in row["ort_floor_ms"].items())
                      + "; x floor: " + ", ".join(f"{k} {v:.2f}" for k, v in row["over_ort_floor"].items()), flush=True)
                row["ratios"] = ratios(row["ms"])
                print("  speed-ups: " + ", ".join(f"{k} {v:.2f}x" for k, v in row["ratios"].items()), flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"step_latency_{args.arch}.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
