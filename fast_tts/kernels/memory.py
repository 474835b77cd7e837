"""CPU tensors on transparent huge pages, for the packed weights that a decode step streams through every step.

Read through 4 KiB pages, such a stream costs a TLB walk per page and stops the hardware prefetchers at every page
boundary, which 2 MiB pages make 512 times rarer. The memory is fresh private anonymous memory, aligned to 2 MiB and
advised to the kernel (`madvise(MADV_HUGEPAGE)`, which Linux honours unless transparent huge pages are off), and
written once, when the model loads: a first write to such a page may wait for the kernel to compact memory into a
free 2 MiB block, which is why KV caches (written during generation) stay on ordinary pages. Where the OS offers
no such advice, the tensor is returned as it is.
"""

from __future__ import annotations

import contextlib
import mmap

import torch

HUGE_PAGE = 2 << 20  # x86-64's transparent huge page


def on_huge_pages(t: torch.Tensor) -> torch.Tensor:
    """A copy of CPU tensor `t` on huge pages; `t` itself when it is under half a huge page or the OS cannot be
    advised."""
    nbytes = t.numel() * t.element_size()
    if nbytes < HUGE_PAGE // 2 or not hasattr(mmap, "MADV_HUGEPAGE"):
        return t
    # private: shared anonymous memory is shmem, whose huge pages have a setting of their own
    area = mmap.mmap(-1, -(-nbytes // HUGE_PAGE) * HUGE_PAGE + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    with contextlib.suppress(OSError):  # a kernel without transparent huge pages: small pages still work
        area.madvise(mmap.MADV_HUGEPAGE)
    raw = torch.frombuffer(area, dtype=torch.uint8)  # the tensor keeps `area` alive
    start = -raw.data_ptr() % HUGE_PAGE
    return raw[start : start + nbytes].view(t.dtype).view(t.shape).copy_(t)
