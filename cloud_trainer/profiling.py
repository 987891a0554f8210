"""Where a session's time goes, stage by stage (decode, teacher, a phase's batch assembly,
forward, backward and optimizer, the write-back to the mirror, ...): summed per stage, so that
``bench-serve`` can report a phase's breakdown (issue 19)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class StageClock:
    def __init__(self, device: str = "cpu", seconds: dict[str, float] | None = None) -> None:
        """``device``: where the stages' torch work runs; on CUDA each stage's end waits for
        the GPU, or the clock would time kernel launches, not kernels. ``seconds``: the sums
        to add to (a new dict by default)."""
        self.seconds = {} if seconds is None else seconds
        self._sync = device.startswith("cuda")

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            if self._sync:
                torch.cuda.synchronize()
            self.add(name, time.perf_counter() - started)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
