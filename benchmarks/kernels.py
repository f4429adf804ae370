"""Triton kernels vs their refs vs torch, on a CUDA machine: time and achieved bandwidth.

    python benchmarks/kernels.py [--peak-gbs 3350]

For the W8 / W4 GEMV at mamba-130m .. mamba-2.8b Linear shapes (batch 1), the selective-scan step
and chunk: median time of the Triton kernel, its PyTorch ref, and torch (cuBLAS on dequantized
weights for the GEMVs), and the kernel's bytes moved / time against the GPU's peak bandwidth.
Writes benchmarks/results/kernels.json. Needs CUDA; says so and exits otherwise.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

SHAPES = {"mamba-130m": (768, 1536), "mamba-370m": (1024, 2048), "mamba-1.4b": (2048, 4096), "mamba-2.8b": (2560, 5120)}


def timed(fn, reps: int = 50) -> float:
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2] / 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peak-gbs", type=float, default=3350.0, help="the GPU's peak memory bandwidth (H100 SXM: 3350)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/kernels.py needs a CUDA GPU; none is available here")
    from rnnquant.kernels.gemv import w4_gemv, w4_gemv_ref, w8_gemv, w8_gemv_ref
    from rnnquant.quant.primitives import quantize_weight_rtn
    from rnnquant.quant.serialize import pack_codes

    rows = []
    for name, (d, e) in SHAPES.items():
        for K, N in ((d, 2 * e), (e, d)):  # in_proj and out_proj
            w = torch.randn(N, K)
            x = torch.randn(1, K, device="cuda")
            q8 = quantize_weight_rtn(w, 8, "channel", 0, True)
            q, s = q8.q.to(torch.int8).cuda(), q8.scale[:, 0].cuda()
            q4 = quantize_weight_rtn(w, 4, "group", 128, False)
            p4, s4, z4 = pack_codes(q4).cuda(), q4.scale.cuda(), q4.zero.to(torch.uint8).cuda()
            wd = w.cuda()
            for kind, kern, ref, nbytes in (
                ("w8", lambda: w8_gemv(x, q, s), lambda: w8_gemv_ref(x, q, s), N * K + 4 * N),
                ("w4", lambda: w4_gemv(x, p4, s4, z4, 128), lambda: w4_gemv_ref(x, p4, s4, z4, 128), N * K // 2 + 5 * N * K // 128),
            ):
                t_k, t_r, t_t = timed(kern), timed(ref), timed(lambda: x @ wd.T)
                gbs = nbytes / t_k / 1e9
                rows.append({"shape": name, "N": N, "K": K, "kernel": kind, "triton_us": 1e6 * t_k, "ref_us": 1e6 * t_r,
                             "torch_fp32_us": 1e6 * t_t, "gbs": gbs, "pct_peak": 100 * gbs / args.peak_gbs})
                print(f"{name:10} {kind} {N:5d}x{K:5d}  triton {1e6 * t_k:7.1f} us  ref {1e6 * t_r:7.1f} us  torch {1e6 * t_t:7.1f} us  "
                      f"{gbs:7.1f} GB/s ({100 * gbs / args.peak_gbs:.0f}% of peak)", flush=True)
    out = Path(__file__).parent / "results" / "kernels.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "device": torch.cuda.get_device_name()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
