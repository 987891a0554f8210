"""The trainer process's allocator: freed activations stay in the heap for the next step.

glibc serves every block over its mmap threshold (32 MB at most) with a fresh mmap and unmaps it
on free, so the next step's activation of the same size page-faults all of its pages in again.
At the default settings a training step allocates several such tensors (a batch of 4 at 321x321:
the logits and their resize, 35 MB; 96 channels at 161x161, 40 MB) and many just under it. On the
2-core machine a new 40 MB tensor took 11 ms where computing into an existing one took 1 ms.
Turning the mmap path off and raising the trim threshold keeps freed blocks for reuse: the
process's resident size stays near its peak instead of falling back between steps. A thread
other than the main one (the daemon trains in one) allocates from an arena of its own, made of
64 MiB heaps: a block larger than that is still mapped afresh (a batch of 8 at 321x321 has
69 MB logits).
"""

from __future__ import annotations

import ctypes
import logging
import platform

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # glibc malloc.h
_M_MMAP_MAX = -4
TRIM_THRESHOLD = 1 << 30  # freed memory at the top of the heap beyond this goes back to the OS


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep large freed blocks (see the module); call it before the
    process allocates its tensors. False, and nothing changed, where libc is not glibc."""
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    kept = (
        libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    )
    if not kept:
        log.warning("glibc refused mallopt: large tensors are mapped afresh on every step")
    return kept
