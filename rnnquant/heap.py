"""glibc heap settings shared by the CLI, the ONNX Runtime runner and the block engine (torch-free,
numpy-free: the CLI calls them before anything heavy is imported). No-ops off glibc."""
from __future__ import annotations


def _libc():
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def release_large_frees() -> None:
    """A fixed 128 KiB mmap threshold (M_MMAP_THRESHOLD; the same as MALLOC_MMAP_THRESHOLD_=131072),
    so every large block goes back to the OS when freed. glibc otherwise raises the threshold (up to
    32 MB) each time a large block is freed, after which blocks of that size come from the heap and
    stay resident when freed: an ONNX Runtime session's RSS stayed at its load peak (loading frees
    many large protobuf buffers; 30 % less steady RSS on a mamba-130m-shape int8 step graph at the
    same latency, benchmarks/session_memory.py), and a stage that replaces a model's weights one
    Linear at a time held the old and the new (docs/RESULTS.md §15)."""
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(-3, 128 * 1024)


def trim_heap() -> None:
    """Hand the heap glibc keeps after frees back to the OS (malloc_trim): the block engine calls it
    once a block is done, whose replays free many tensors under the mmap threshold (at mamba-130m
    shape 0.38 GB of such freed heap stayed resident after an in-place quantization)."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
