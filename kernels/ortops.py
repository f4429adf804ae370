"""rnnquant's ONNX Runtime custom-op library (``ort/rnnquant_ops.cc``) for the opt-in fused step
(``rnnquant export --fused``): built here, registered with a session. Torch-free (the runner
uses it); the trace side, each op beside its PyTorch twin, is ``rnnquant.kernels.fused``.

    ConvSiluStep, GatedSelectiveStep, SSDStep, Rwkv7AttentionStep (domain ai.rnnquant): the step's
        recurrence of Mamba-1 / FalconMamba, Mamba-2 and RWKV-7 in one or two passes over the
        state, where the stock graph has ~38-80 nodes per layer (RWKV-7: the whole attention between its Linears)
    Int8Linear, Int4Linear: every architecture's int8 Linears (with ``--cpu vnni``) and 4-bit Linears
        with int8 activations, one op each over weights stored in the layout its VNNI loop reads

Building. ONNX Runtime's PyPI and npm packages carry no C/C++ headers; the one registry package
these machines reach that does is an npm package of ONNX Runtime's official mobile binaries
(``HEADERS_PACKAGE``, pinned with its integrity hash), whose iOS framework holds the headers of
ONNX Runtime 1.29 (C API version 29). ``build()`` unpacks only those headers into the cache and
compiles the library with the system's C++ compiler; the C API is append-only, so the library
loads into every runtime that serves API version 29 (1.29 and later: this project pins 1.32). The
library is built for this machine's CPU (``-march=native``): build it where it runs.

Cache: ``$RNNQUANT_CACHE`` or ``~/.cache/rnnquant``, then ``ortops/<hash of the source and flags>/``:
the same source gives the same library path, a changed one a new build.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from rnnquant.errors import RnnquantError

DOMAIN = "ai.rnnquant"
SOURCE = Path(__file__).with_name("ort") / "rnnquant_ops.cc"
HEADERS_PACKAGE = "com.github.asus4.onnxruntime@0.4.9"
HEADERS_INTEGRITY = "sha512-BkzxduSZ9IkeDP6Q8lz2TFU2ie7hSSvS7ZIfzMooExoq0CNzJnuuGaUJ7IsojBgqO4ouD1jXah8OYyJbCN29Fg=="
HEADERS_IN_PACKAGE = "package/Plugins/iOS~/onnxruntime.xcframework/ios-arm64/onnxruntime.framework/Headers/"
# -ffast-math for libmvec's vector expf, at compile time only: linked with it, GCC adds crtfastmath.o,
# which sets flush-to-zero for the whole process the moment the library loads (subnormals gone for
# numpy and torch too; tests/kernels/test_ortops.py checks they survive)
CXXFLAGS = ("-O3", "-march=native", "-ffast-math", "-fPIC", "-std=c++17")
LDFLAGS = ("-shared",)


def cache_dir() -> Path:
    return Path(os.environ.get("RNNQUANT_CACHE") or Path.home() / ".cache" / "rnnquant")


def _cxxflags(march: str) -> tuple[str, ...]:
    return tuple(f"-march={march}" if f == "-march=native" else f for f in CXXFLAGS)


def library_path(march: str = "native") -> Path:
    """Where this source's library is (or will be) built (``march``: the CPU it is built for; a
    test builds the portable loops a CPU without AVX-512 VNNI runs with "x86-64-v3")."""
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(_cxxflags(march) + LDFLAGS).encode()).hexdigest()[:16]
    return cache_dir() / "ortops" / digest / "librnnquant_ortops.so"


def _headers() -> Path:
    """The ONNX Runtime headers, unpacked once from ``HEADERS_PACKAGE`` (npm checks its integrity
    against the registry's; the pinned hash guards against a republished package)."""
    inc = cache_dir() / "ortops" / "include"
    if (inc / "onnxruntime_cxx_api.h").is_file():
        return inc
    if shutil.which("npm") is None:
        raise RnnquantError("cannot build the fused-op library: npm is needed to fetch ONNX Runtime's headers (apt-get install npm)")
    with tempfile.TemporaryDirectory(prefix="rnnquant-ortops-") as td:
        try:
            out = subprocess.run(["npm", "pack", HEADERS_PACKAGE, "--json", "--silent", "--pack-destination", td],
                                 capture_output=True, text=True, check=True, timeout=900)
            integrity = json.loads(out.stdout)[0]["integrity"]
        except (subprocess.SubprocessError, OSError, ValueError, LookupError) as e:
            raise RnnquantError(f"cannot build the fused-op library: npm could not fetch {HEADERS_PACKAGE} ({str(e).splitlines()[0][:120]})") from None
        if integrity != HEADERS_INTEGRITY:
            raise RnnquantError(f"cannot build the fused-op library: {HEADERS_PACKAGE} is not the package it was pinned to")
        staged = Path(td) / "include"
        staged.mkdir()
        with tarfile.open(next(Path(td).glob("*.tgz"))) as tar:
            for m in tar.getmembers():
                if m.isfile() and m.name.startswith(HEADERS_IN_PACKAGE) and m.name.endswith(".h"):
                    (staged / Path(m.name).name).write_bytes(tar.extractfile(m).read())
        shutil.rmtree(inc, ignore_errors=True)  # an incomplete one (a complete one returned above)
        try:
            os.replace(staged, inc)  # whole or not at all
        except OSError:
            if not (inc / "onnxruntime_cxx_api.h").is_file():  # (else another build unpacked them first)
                raise
    return inc


def build(march: str = "native") -> Path:
    """The library for this source, compiled if it is not in the cache (atomically: a library under
    its final name is a whole one)."""
    lib = library_path(march)
    if lib.is_file():
        return lib
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        raise RnnquantError("cannot build the fused-op library: no C++ compiler (apt-get install g++)")
    try:
        lib.parent.mkdir(parents=True, exist_ok=True)
        inc = _headers()
    except OSError as e:
        raise RnnquantError(f"cannot build the fused-op library: cannot write {cache_dir()} ({e.strerror or e}; set RNNQUANT_CACHE)") from None
    tmp, obj = (lib.with_name(f".{lib.name}.{os.getpid()}.{ext}") for ext in ("tmp", "o"))
    try:
        for cmd in ([cxx, *_cxxflags(march), f"-I{inc}", "-c", str(SOURCE), "-o", str(obj)], [cxx, *LDFLAGS, str(obj), "-o", str(tmp)]):
            subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=600)
        os.replace(tmp, lib)
    except subprocess.CalledProcessError as e:
        raise RnnquantError(f"cannot build the fused-op library: {cxx} failed ({(e.stderr or '').strip().splitlines()[-1][:160] if e.stderr else e.returncode})") from None
    finally:
        tmp.unlink(missing_ok=True)
        obj.unlink(missing_ok=True)
    return lib


def register(session_options) -> None:
    """Make the library's ops known to an ONNX Runtime session (building it first if need be)."""
    lib = build()
    try:
        session_options.register_custom_ops_library(str(lib))
    except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
        raise RnnquantError(f"ONNX Runtime cannot load the fused-op library {lib} ({str(e).splitlines()[0][:160]})") from None


def main(argv=None) -> None:
    """``python -m rnnquant.kernels.ortops``: build the library (once per source) and print its path."""
    import sys

    try:
        print(build())
    except RnnquantError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
