"""Tensors on transparent huge pages (`fast_tts.kernels.memory`): the same values, 2 MiB-aligned, advised to Linux."""

from __future__ import annotations

import mmap
from pathlib import Path

import pytest
import torch

from fast_tts.kernels.memory import HUGE_PAGE, huge_page_zeros, on_huge_pages
from fast_tts.models.transformer import DecoderConfig, KVCache

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
def test_zeros_and_small_tensors() -> None:
    z = huge_page_zeros((4, 3, 1000, 64), torch.float32)
    assert z.shape == (4, 3, 1000, 64) and z.dtype == torch.float32 and not z.any()
    z[1, 2] = 5.0  # writable, and only that block changes
    assert int((z == 5.0).sum()) == 1000 * 64
    small = torch.randn(8, 8)
    assert on_huge_pages(small) is small  # under half a huge page: not worth a page of its own
    assert huge_page_zeros((8, 8), torch.bfloat16).dtype == torch.bfloat16


def test_a_cpu_kv_cache_starts_at_zero_and_takes_writes() -> None:
    cache = KVCache(DecoderConfig(64, 128, 2, 4, 2), max_rows=3, max_seq=512, dtype=torch.float32)
    assert cache.k.shape == (2, 3, 2, 512, 16) and not cache.k.any() and not cache.v.any()
    cache.k[1, 2, 0, 7] = 1.0
    cache.copy_row(2, 0, 8)
    assert torch.equal(cache.k[1, 0, 0, 7], torch.ones(16))
