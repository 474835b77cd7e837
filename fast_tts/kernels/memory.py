"""Copies of CPU tensors on transparent huge pages, for the packed weights that a decode step streams through every
step.

Read through 4 KiB pages, such a stream costs a TLB walk per page and stops the hardware prefetchers at every page
boundary, which 2 MiB pages make 512 times rarer. The copies are cut from regions of fresh private anonymous memory,
aligned to 2 MiB and advised to the kernel (`madvise(MADV_HUGEPAGE)`, which Linux honours unless transparent huge
pages are off), one after another, so that weights loaded together sit side by side and only the end of a region's
last page goes unused. They are written once, when a model loads: a first write to such a page may wait for the
kernel to compact memory into a free 2 MiB block, which is why KV caches (written during generation) stay on
ordinary pages. Where the OS offers no such advice, tensors are returned as they are.
"""

from __future__ import annotations

import contextlib
import mmap
import threading
import weakref

import torch

HUGE_PAGE = 2 << 20  # x86-64's transparent huge page
REGION = 64 << 20  # bytes reserved at a time; only what copies fill is ever backed by memory
ALIGN = 64  # each copy starts on a cache line


def _region(nbytes: int) -> mmap.mmap:
    """A fresh mapping of `nbytes` bytes and a huge page more (for the 2 MiB alignment), advised as huge pages."""
    # private: shared anonymous memory is shmem, whose huge pages have a setting of their own
    area = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    with contextlib.suppress(OSError):  # a kernel without transparent huge pages: small pages still work
        area.madvise(mmap.MADV_HUGEPAGE)
    return area


class _Regions:
    """Hands out aligned pieces of the current region, and a new region when a piece does not fit. Every piece
    keeps its region's mapping alive; this keeps only a weak reference, so a region is unmapped once the last
    tensor cut from it is gone."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current: weakref.ref[mmap.mmap] | None = None
        self._start = self._used = self._size = 0

    def piece(self, nbytes: int) -> torch.Tensor:
        with self._lock:
            area = self._current() if self._current is not None else None
            if area is None or self._used + nbytes > self._size:
                self._size = max(REGION, nbytes)
                area, self._used = _region(self._size), 0
                self._current = weakref.ref(area)
                self._start = -torch.frombuffer(area, dtype=torch.uint8).data_ptr() % HUGE_PAGE
            first = self._start + self._used
            self._used += -(-nbytes // ALIGN) * ALIGN
            return torch.frombuffer(area, dtype=torch.uint8)[first : first + nbytes]  # keeps `area` alive


_REGIONS = _Regions()


def on_huge_pages(t: torch.Tensor) -> torch.Tensor:
    """A copy of CPU tensor `t` on huge pages; `t` itself when it is under half a huge page (not worth a TLB entry
    of its own) or the OS cannot be advised."""
    nbytes = t.numel() * t.element_size()
    if nbytes < HUGE_PAGE // 2 or t.device.type != "cpu" or not hasattr(mmap, "MADV_HUGEPAGE"):
        return t
    return _REGIONS.piece(nbytes).view(t.dtype).view(t.shape).copy_(t)
