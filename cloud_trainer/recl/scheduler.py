"""RECL's training scheduler (seed 003 §6.3.2, Algorithm 4): the training slot goes, one
micro-window at a time, to the session whose accuracy gained most per second of training in
its last micro-window.

A session without an estimate for the request it trains for now is served first (Algorithm 4
lines 10-12: every request gets one micro-window to measure its gain; a session's request
changes at a scene cut or a move to another model, ``Session.requests``, and the gain it had
measured was another scene's or another model's); a session passed over ``max_wait`` times in a
row is served next whatever its gain, so none starves. Round-robin stays the daemon's default.
"""

from __future__ import annotations

from collections.abc import Mapping


class MarginalGain:
    def __init__(self, max_wait: int = 8) -> None:
        self.max_wait = max_wait
        # per session: the request its last micro-window trained for, and the accuracy gained
        # per second in it
        self.gain: dict[str, tuple[int, float]] = {}
        self.seconds: dict[str, float] = {}  # training time given, per session
        self._waited: dict[str, int] = {}

    def record(self, session: str, request: int, accuracy_gain: float, seconds: float) -> None:
        """Algorithm 4 line 9: (acc_f - acc_i) / μ of the micro-window ``session`` just had,
        training for its ``request``."""
        self.gain[session] = (request, accuracy_gain / max(seconds, 1e-9))
        self.seconds[session] = self.seconds.get(session, 0.0) + seconds

    def pick(self, ready: Mapping[str, int]) -> str:
        """The session to train next among ``ready``, each with the request it trains for now
        (line 15: argmax gain)."""
        if not ready:
            raise ValueError("no session is ready")
        unmeasured = [s for s, r in ready.items() if s not in self.gain or self.gain[s][0] != r]
        starving = [s for s in ready if self._waited.get(s, 0) >= self.max_wait]
        if starving:  # before new requests too: sessions that keep moving starve no other
            chosen = max(starving, key=lambda s: self._waited[s])
        elif unmeasured:
            chosen = unmeasured[0]
        else:
            chosen = max(ready, key=lambda s: self.gain[s][1])
        for s in ready:
            self._waited[s] = 0 if s == chosen else self._waited.get(s, 0) + 1
        return chosen

    def forget(self, session: str) -> None:
        for table in (self.gain, self.seconds, self._waited):
            table.pop(session, None)
