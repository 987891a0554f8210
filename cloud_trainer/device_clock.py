"""A device's segments on one clock that only goes forward.

A device stamps its frames with its own clock, which starts again at 0 when its runtime
restarts (with a new boot token in every envelope). The session's horizon (``sample_buffer``),
its rate control (``ams.asr``, ``ams.atr``) and its archive all take time to move forward, so
the timestamps of each new boot are shifted to continue just after the latest time seen.
"""

from __future__ import annotations

from dataclasses import dataclass, field

RESTART_GAP_S = 1.0  # between the last frame before a restart and the first after it
MAX_BOOTS = 8  # boots whose shift is remembered (a spooled segment of an older one may come)


@dataclass
class DeviceClock:
    shifts: dict[str, float] = field(default_factory=dict)  # boot -> seconds added, oldest first
    latest: float | None = None  # the latest time placed

    def place(self, boot: str, timestamps: tuple[float, ...]) -> tuple[float, ...]:
        """``timestamps`` of a segment from ``boot``, on the session's clock."""
        if boot not in self.shifts:
            behind = self.latest is not None and timestamps[0] <= self.latest
            self.shifts[boot] = self.latest - timestamps[0] + RESTART_GAP_S if behind else 0.0
            while len(self.shifts) > MAX_BOOTS:
                del self.shifts[next(iter(self.shifts))]
        placed = tuple(t + self.shifts[boot] for t in timestamps)
        self.latest = placed[-1] if self.latest is None else max(self.latest, placed[-1])
        return placed

    def state_dict(self) -> dict[str, object]:
        return {"shifts": list(self.shifts.items()), "latest": self.latest}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.shifts = dict(state["shifts"])  # type: ignore[call-overload]
        self.latest = state["latest"]  # type: ignore[assignment]
