"""Copies on transparent huge pages (`fast_tts.kernels.memory`): the same values, 2 MiB-aligned, advised to Linux."""

from __future__ import annotations

import mmap
from pathlib import Path

import pytest
import torch

from fast_tts.kernels.memory import HUGE_PAGE, on_huge_pages

advisable = pytest.mark.skipif(not hasattr(mmap, "MADV_HUGEPAGE"), reason="no transparent huge pages on this OS")


def _thp_eligible(address: int) -> bool | None:
    """The THPeligible flag of the mapping holding `address` (None where smaps has no such field)."""
    lines = Path("/proc/self/smaps").read_text().splitlines()
    for i, line in enumerate(lines):
        span = line.split()[0]
        if "-" in span and all(c in "0123456789abcdef-" for c in span):
            low, high = (int(x, 16) for x in span.split("-"))
            if low <= address < high:
                for field in lines[i + 1 :]:
                    if field.startswith("THPeligible:"):
                        return field.split()[1] == "1"
                    if "-" in field.split()[0] and not field.split()[0].endswith(":"):
                        return None
    return None


@advisable
def test_copies_keep_values_shape_and_dtype_on_aligned_advised_memory() -> None:
    for t in (torch.randn(1500, 1024), torch.randn(768, 2304).to(torch.bfloat16), torch.arange(300000)):
        h = on_huge_pages(t)
        assert h.dtype == t.dtype and h.shape == t.shape and torch.equal(h, t)
        assert h.data_ptr() != t.data_ptr() and h.data_ptr() % HUGE_PAGE == 0
        mode = Path("/sys/kernel/mm/transparent_hugepage/enabled")
        if mode.is_file() and "[never]" not in mode.read_text():
            assert _thp_eligible(h.data_ptr()) in (True, None)  # None: a kernel too old to say


@advisable
def test_small_tensors_stay_where_they_are() -> None:
    small = torch.randn(8, 8)
    assert on_huge_pages(small) is small  # under half a huge page: not worth a page of its own
