"""The trainer process's settings: large blocks come from the heap, not from a fresh mmap per
allocation, once ``keep_freed_memory`` has run (cloud_trainer.memory); torch's OpenMP threads
spin briefly before they sleep unless the operator says otherwise (cloud_trainer/__init__.py)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

# Counts the mmapped blocks (glibc's mallinfo2().hblks) a 64 MB array adds while it lives, and
# those a 40 MB one adds in a thread (where the daemon trains: a thread's own arena).
_PROBE = """
import ctypes, sys, threading
import numpy as np
from cloud_trainer.memory import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                 "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "keep":
    assert keep_freed_memory()

def mapped(size, counts):
    before = libc.mallinfo2().hblks
    block = np.ones(size, np.uint8)
    counts.append(libc.mallinfo2().hblks - before)

counts = []
mapped(64 << 20, counts)
thread = threading.Thread(target=mapped, args=(40 << 20, counts))
thread.start()
thread.join()
print(*counts)
"""
_ALLOCATOR_VARIABLES = ("GLIBC_TUNABLES", "MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_")


def _mapped_blocks(mode: str) -> list[int]:
    env = {k: v for k, v in os.environ.items() if k not in _ALLOCATOR_VARIABLES}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], env=env, capture_output=True, text=True, check=True
    )
    return [int(n) for n in out.stdout.split()]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc allocator setting")
def test_a_large_block_comes_from_the_heap_once_freed_memory_is_kept() -> None:
    assert _mapped_blocks("default") == [1, 1]  # glibc's default: its own mmap, each time
    assert _mapped_blocks("keep") == [0, 0]


_SPIN = "import os, cloud_trainer; print(os.environ.get('GOMP_SPINCOUNT'))"


def _spin_count(**env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", _SPIN], env={**clean, **env},
                         capture_output=True, text=True, check=True)  # fmt: skip
    return out.stdout.strip()


def test_openmp_threads_spin_briefly_unless_the_operator_sets_a_policy() -> None:
    assert _spin_count() == "10000"
    assert _spin_count(GOMP_SPINCOUNT="300000") == "300000"
    assert _spin_count(OMP_WAIT_POLICY="PASSIVE") == "None"  # libgomp would let the count win
