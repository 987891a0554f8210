"""Thread priorities: background work yields the CPU to the frame loop."""

from __future__ import annotations

import contextlib
import os
import threading

BACKGROUND_NICE = 10


def lower_thread_priority(niceness: int = BACKGROUND_NICE) -> None:
    """Make the calling thread (only it: Linux nice is per thread) give way to the frame loop.

    Encoding, prefetching and model swaps have seconds of slack but compete with inference for
    the same cores; at a higher nice value they use the gaps inference leaves instead of
    slowing it. Lowering priority needs no privileges; where it is unsupported, nothing changes.
    """
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
