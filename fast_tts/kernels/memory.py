"""CPU tensors on transparent huge pages, for what a decode step streams through every step (packed weights, KV
caches).

Read through 4 KiB pages, such a stream costs a TLB walk per page and stops the hardware prefetchers at every page
boundary, which 2 MiB pages make 512 times rarer. The memory is fresh private
anonymous memory, aligned to 2 MiB and advised to the kernel (`madvise(MADV_HUGEPAGE)`, which Linux honours unless
transparent huge pages are off); it reads as zeros until written and is only backed where it is touched. Where the OS
offers no such advice, these are plain tensors.
"""

from __future__ import annotations

import contextlib
import math
import mmap
from collections.abc import Sequence

import torch

HUGE_PAGE = 2 << 20  # x86-64's transparent huge page


def _huge_bytes(nbytes: int) -> torch.Tensor | None:
    """`nbytes` zero bytes on huge pages, or None when that is under half a huge page or the OS cannot be advised."""
    if nbytes < HUGE_PAGE // 2 or not hasattr(mmap, "MADV_HUGEPAGE"):
        return None
    # private: shared anonymous memory is shmem, whose huge pages have a setting of their own
    area = mmap.mmap(-1, -(-nbytes // HUGE_PAGE) * HUGE_PAGE + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    with contextlib.suppress(OSError):  # a kernel without transparent huge pages: small pages still work
        area.madvise(mmap.MADV_HUGEPAGE)
    raw = torch.frombuffer(area, dtype=torch.uint8)  # the tensor keeps `area` alive
    start = -raw.data_ptr() % HUGE_PAGE
    return raw[start : start + nbytes]


def huge_page_zeros(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """A zero CPU tensor on huge pages (a plain `torch.zeros` where `_huge_bytes` gives none)."""
    numel = math.prod(shape)
    raw = _huge_bytes(numel * torch.empty(0, dtype=dtype).element_size())
    return torch.zeros(*shape, dtype=dtype) if raw is None else raw.view(dtype).view(*shape)


def on_huge_pages(t: torch.Tensor) -> torch.Tensor:
    """A copy of CPU tensor `t` on huge pages (`t` itself where `_huge_bytes` gives none)."""
    raw = _huge_bytes(t.numel() * t.element_size())
    return t if raw is None else raw.view(t.dtype).view(t.shape).copy_(t)
