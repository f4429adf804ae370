"""What loading a checkpoint directory leaves in memory."""
from __future__ import annotations

from pathlib import Path

import pytest

from rnnquant.artifacts import load


def _mapped_ranges(path) -> list[tuple[int, int]]:
    """Address ranges of this process's mappings of ``path`` (Linux /proc)."""
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == str(path):
            lo, hi = (int(a, 16) for a in fields[0].split("-"))
            ranges.append((lo, hi))
    return ranges


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="needs Linux /proc")
def test_loaded_weights_are_not_served_from_a_mapping_of_the_file(tiny_dir):
    """Each weight is its own allocation: one mmap of the file would stay resident, every page
    of it, as long as any one of its tensors lives (quantize replaces them one by one)."""
    model = load(tiny_dir)
    ranges = _mapped_ranges((tiny_dir / "model.safetensors").resolve())
    inside = [n for n, t in model.state_dict().items() if any(lo <= t.data_ptr() < hi for lo, hi in ranges)]
    assert inside == []
