"""When a reply reaches the device, on the virtual clock.

The links and the trainer are first-in-first-out servers: a job starts when it is ready and the
server is free, and holds it for its service time. A downlink message of ``n`` bytes is served
in ``8 n / rate``; the trainer, by default, in no time at all (seed 002's emulation: an update
leaves at the end of the T_update interval that produced it), or with ``--charge-compute F`` in
F × the compute it really took here.
"""

from __future__ import annotations


class FifoServer:
    def __init__(self) -> None:
        self.free_at = 0.0

    def serve(self, ready_s: float, service_s: float) -> float:
        """When a job ready at ``ready_s`` that takes ``service_s`` is done."""
        self.free_at = max(ready_s, self.free_at) + service_s
        return self.free_at


class Link(FifoServer):
    def __init__(self, mbps: float) -> None:
        super().__init__()
        self.bits_per_s = mbps * 1e6

    def send(self, ready_s: float, nbytes: int) -> float:
        """Arrival time of ``nbytes`` handed to the link at ``ready_s``."""
        return self.serve(ready_s, nbytes * 8 / self.bits_per_s)


class Trainer(FifoServer):
    def __init__(self, charge: float) -> None:
        super().__init__()
        self.charge = charge

    def finish(self, ready_s: float, compute_s: float) -> float:
        """When the trainer's reply to work handed over at ``ready_s`` can leave."""
        return self.serve(ready_s, compute_s * self.charge)
