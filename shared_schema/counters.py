"""Thread-safe named counters, and rejection logging that a flood of garbage cannot drown."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable


class Counters:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, int] = {}

    def inc(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] = self._values.get(name, 0) + n

    def get(self, name: str) -> int:
        with self._lock:
            return self._values.get(name, 0)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)


class RejectionLog:
    """Counts every rejection under ``rejected.<reason>``; logs at most one line per reason per
    ``interval_s``, saying how many were not logged in between."""

    def __init__(
        self,
        counters: Counters,
        logger: logging.Logger,
        interval_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._counters = counters
        self._logger = logger
        self._interval_s = interval_s
        self._clock = clock
        self._last: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def reject(self, reason: str, detail: str) -> None:
        name = f"rejected.{reason}"
        self._counters.inc(name)
        total = self._counters.get(name)
        now = self._clock()
        with self._lock:
            last_time, last_total = self._last.get(reason, (float("-inf"), 0))
            if now - last_time < self._interval_s:
                return
            self._last[reason] = (now, total)
        skipped = total - last_total - 1
        more = f" ({skipped} more since the last report)" if skipped > 0 else ""
        self._logger.warning("rejected (%s): %s%s", reason, detail, more)


class DuplicateFilter:
    """Remembers each sender's last ``capacity`` message keys; QoS 1 redeliveries are normal,
    not errors. Keys are tuples whose first item is the sender: one sender's flood only evicts
    its own keys, and the ``max_senders`` least recently heard senders are remembered."""

    # A redelivery is of a message not yet acknowledged: at most the Receive Maximum (the
    # inbound queue's bound, 256 by default) per sender; 1,024 senders of 256 keys: ~50 MB.
    def __init__(self, capacity: int = 256, max_senders: int = 1024) -> None:
        self._capacity = capacity
        self._max_senders = max_senders
        self._seen: OrderedDict[Hashable, OrderedDict[Hashable, None]] = OrderedDict()
        self._lock = threading.Lock()

    def seen(self, key: tuple[Hashable, ...]) -> bool:
        """True if ``key`` was seen before; records it either way."""
        with self._lock:
            sender = self._seen.setdefault(key[0], OrderedDict())
            self._seen.move_to_end(key[0])
            if len(self._seen) > self._max_senders:
                self._seen.popitem(last=False)
            if key in sender:
                sender.move_to_end(key)
                return True
            sender[key] = None
            if len(sender) > self._capacity:
                sender.popitem(last=False)
            return False
