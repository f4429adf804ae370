"""Step-session memory and disk bytes of the embedding's lookup table: a tied one shared with the
head or its own copy; an untied one float or int8.

    python benchmarks/embedding_table.py [--arch mamba] [--work DIR] [--rounds 3] [--steps 64] [--variants fp32 int8 int8-vnni]

Exports the random-initialised model at ``step_latency.shape_model(--arch)``'s shape (the Mamba at
mamba-130m shape: tied head; ``--arch rwkv7``: RWKV-7 0.1B, untied) as step graphs with
``embedding_table="shared"`` and ``"own"`` (tied), or with the int8 variants' table as float
(``embedding_bits`` null) and as int8 rows (the default; untied; fp32 has the float table only),
for each variant: fp32, static int8
(``step_latency.static_int8``) with uint8 weights (``--cpu any``) and, where the CPU has VNNI / AMX,
int8 weights (``--cpu vnni``). Then runs each graph in fresh processes, round robin (session_memory's
probe: 1 thread, batch 1, zero state): peak RSS (VmHWM) and steady RSS after the steps, both over
the process's RSS before the session (the fixed runtime: Python + numpy + ONNX Runtime, reported
beside), as ratios to the graph's own bytes on disk and to the first table's graph's (tied: the
model's weights stored once). Writes benchmarks/results/embedding_table[_<arch>].json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from session_memory import PROBE  # noqa: E402
from step_latency import shape_model, static_int8  # noqa: E402

from rnnquant.exporters.onnx_export import EMBEDDING_TABLES, export_step  # noqa: E402
from rnnquant.exporters.prefill import step_bytes  # noqa: E402
from rnnquant.exporters.runner import u8s8_saturates_here  # noqa: E402
from rnnquant.zoo import MODELS_DIR  # noqa: E402

VARIANTS = {"fp32": "uint8", "int8": "uint8", "int8-vnni": "int8"}  # -> the export's int8_weights


UNTIED_TABLES = ("float", "int8")  # an untied table: embedding_bits null, 8


def export_all(work: Path, arch: str, variants: list[str]) -> dict[tuple[str, str], Path]:
    model = shape_model(arch)
    q = static_int8(model) if any(v.startswith("int8") for v in variants) else None
    tied, where = bool(model.tied_head_key()), model.arch_spec().embedding
    paths = {}
    for v in variants:
        for table in EMBEDDING_TABLES if tied else UNTIED_TABLES[: 1 if v == "fp32" else 2]:
            path = work / f"{arch}-{v}-{table}.onnx"
            m = model if v == "fp32" else q
            if not path.is_file():
                kept = m.get_submodule(where)  # (put back after: the next variant exports the int8 rows)
                if not tied and table == "float":  # the same quantized body with the float table (embedding_bits null)
                    m.set_submodule(where, model.get_submodule(where))
                export_step(m, path, MODELS_DIR / "tokenizer.json", prefill=False, int8_weights=VARIANTS[v],
                            embedding_table=table if tied else "shared")
                m.set_submodule(where, kept)
            paths[v, table] = path
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="mamba")
    ap.add_argument("--work", type=Path, default=Path("/tmp/rnnquant-embedding-table"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=sorted(VARIANTS))
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    args.out = args.out or Path(__file__).parent / "results" / ("embedding_table.json" if args.arch == "mamba" else f"embedding_table_{args.arch}.json")
    variants = [v for v in args.variants if v != "int8-vnni" or not u8s8_saturates_here()]
    args.work.mkdir(parents=True, exist_ok=True)
    paths = export_all(args.work, args.arch, variants)
    got = {k: [] for k in paths}
    for _ in range(args.rounds):
        for key, path in paths.items():
            out = subprocess.run([sys.executable, "-c", PROBE, str(path), "default", str(args.steps)], capture_output=True, text=True, check=True)
            got[key].append(json.loads(out.stdout.strip().splitlines()[-1]))
    rows = []
    for (v, table), runs in got.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        disk, stored_once = step_bytes(paths[v, table]), step_bytes(paths[next(k for k in paths if k[0] == v)])
        peak, steady = med["peak"] - med["base"], med["steady"] - med["base"]
        rows.append({"variant": v, "embedding_table": table, "disk_bytes": disk, "weights_once_bytes": stored_once, "base_bytes": med["base"],
                     "session_peak_bytes": peak, "session_steady_bytes": steady, "peak_over_disk": peak / disk,
                     "peak_over_weights_once": peak / stored_once, "steady_over_weights_once": steady / stored_once,
                     "p50_ms": med["p50_ms"], "runs": runs})
        print(f"{v:9} {table:6}  disk {disk / 2**20:7.1f} MiB  session peak {peak / 2**20:6.1f} MiB ({peak / disk:.2f}x disk, "
              f"{peak / stored_once:.2f}x weights once)  steady {steady / 2**20:6.1f} MiB ({steady / stored_once:.2f}x)  "
              f"runtime {med['base'] / 2**20:.0f} MiB  p50 {med['p50_ms']:.2f} ms", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "args": {k: str(v) for k, v in vars(args).items()}}, indent=1) + "\n")


if __name__ == "__main__":
    main()
