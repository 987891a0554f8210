"""Sharing one GPU (or CPU) between sessions: round-robin (seed 002 appendix E).

Sessions with work queue up; the worker gives the session at the front one step (one segment
labelled, or one training phase) and sends it to the back if it has more. A slow session
therefore delays each other session by at most one of its steps per round, never more.
Housekeeping that must not race a step (checkpoints) is queued as a call between steps.
With ``choose``, the worker asks it which of the queued sessions goes next (RECL's
marginal-gain scheduler, ``recl.scheduler``); calls still run as they come.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

log = logging.getLogger(__name__)


class RoundRobin:
    def __init__(
        self,
        step: Callable[[str], bool],
        choose: Callable[[list[str]], str] | None = None,
    ) -> None:
        """``step(session_id)`` does one piece of work and says whether more is waiting;
        ``choose(queued)`` picks the next session among those queued (default: the first)."""
        self._step = step
        self._choose = choose
        self._ready: deque[str | Callable[[], None]] = deque()
        self._queued: set[str] = set()
        self._cond = threading.Condition()
        self._stopped = False
        self._busy = False
        self.steps: dict[str, int] = {}

    @property
    def idle(self) -> bool:
        with self._cond:
            return not self._ready and not self._busy

    def notify(self, session_id: str) -> None:
        """The session has work; it joins the back of the queue unless already in it."""
        with self._cond:
            if session_id not in self._queued:
                self._queued.add(session_id)
                self._ready.append(session_id)
                self._cond.notify()

    def call(self, task: Callable[[], None]) -> None:
        """Run ``task`` on the worker, between two steps."""
        with self._cond:
            self._ready.append(task)
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def run(self) -> None:
        """The worker loop; returns after ``stop``."""
        while (item := self._next()) is not None:
            try:
                if callable(item):
                    item()
                    continue
                more = self._step(item)
                self.steps[item] = self.steps.get(item, 0) + 1
                if more:
                    self.notify(item)
            except Exception:
                log.exception("scheduled work for %s failed", item)
            finally:
                with self._cond:
                    self._busy = False

    def _next(self) -> str | Callable[[], None] | None:
        with self._cond:
            while not self._ready and not self._stopped:
                self._cond.wait()
            if self._stopped:
                return None
            item = self._ready[0]
            queued = [i for i in self._ready if isinstance(i, str)]
            self._busy = True
        if isinstance(item, str) and self._choose is not None and len(queued) > 1:
            # outside the lock: choosing looks into sessions, whose threads notify this one;
            # only this worker takes items out, so the chosen one is still queued after
            item = self._choose(queued)
        with self._cond:
            self._ready.remove(item)
            if isinstance(item, str):
                self._queued.discard(item)
            return item
