"""Thread priorities: background work yields the CPU to the frame loop."""

from __future__ import annotations

import contextlib
import os
import threading

BACKGROUND_NICE = 10
IDLE_FALLBACK_NICE = 19  # the lowest nice value, where SCHED_IDLE is missing


def lower_thread_priority(niceness: int = BACKGROUND_NICE) -> None:
    """Make the calling thread (only it: Linux nice is per thread) give way to the frame loop.

    Encoding, prefetching and model swaps have seconds of slack but compete with inference for
    the same cores; at a higher nice value they use the gaps inference leaves instead of
    slowing it. Lowering priority needs no privileges; where it is unsupported, nothing changes.
    """
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)


def idle_thread_priority() -> None:
    """Run the calling thread only on a core no other thread wants (Linux's SCHED_IDLE).

    A nice thread still takes its share of a core that inference wants; an idle one waits for
    a free core, and starves while other work keeps every core busy: only for work that the
    frame loop takes over when it falls behind. It cannot be undone without privileges.
    """
    try:
        os.sched_setscheduler(threading.get_native_id(), os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux, or refused
        lower_thread_priority(IDLE_FALLBACK_NICE)
