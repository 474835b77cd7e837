"""Copies on transparent huge pages (`fast_tts.kernels.memory`): the same values, 2 MiB-aligned, advised to Linux."""

from __future__ import annotations

import gc
import mmap
from pathlib import Path

import pytest
import torch

from fast_tts.kernels.memory import ALIGN, HUGE_PAGE, REGION, _Regions, on_huge_pages

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
        assert h.data_ptr() != t.data_ptr() and h.data_ptr() % ALIGN == 0
        mode = Path("/sys/kernel/mm/transparent_hugepage/enabled")
        if mode.is_file() and "[never]" not in mode.read_text():
            assert _thp_eligible(h.data_ptr()) in (True, None)  # None: a kernel too old to say


@advisable
def test_copies_sit_side_by_side_and_a_region_goes_with_its_last_copy() -> None:
    regions = _Regions()
    first, second = regions.piece(3 << 20), regions.piece(1 << 20)
    assert first.data_ptr() % HUGE_PAGE == 0  # a fresh region starts on a huge page
    assert second.data_ptr() == first.data_ptr() + (3 << 20)  # the next copy follows (at a cache line)
    big = regions.piece(REGION + 1)  # does not fit what is left: a region of its own
    assert big.data_ptr() % HUGE_PAGE == 0 and big.numel() == REGION + 1
    area = regions._current
    assert area is not None and area() is not None
    del big
    gc.collect()
    assert area() is None  # unmapped: nothing cut from it is left


@advisable
def test_small_tensors_stay_where_they_are() -> None:
    small = torch.randn(8, 8)
    assert on_huge_pages(small) is small  # under half a huge page: not worth a page of its own
