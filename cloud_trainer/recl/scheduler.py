"""RECL's training scheduler (seed 003 §6.3.2, Algorithm 4): the training slot goes, one
micro-window at a time, to the session whose accuracy gained most per second of training in
its last micro-window.

The sessions measure those gains (``Session.phase_gain``: on the frames that come after a
phase, which it never trained on); a session without one for the request it trains for now is
served first (Algorithm 4 lines 10-12: every request gets one micro-window to measure its gain;
a session's request changes at a scene cut or a move to another model, and the gain it had
measured was another scene's or another model's); a session passed over ``max_wait`` times in a
row is served next whatever its gain, so none starves. Round-robin stays the daemon's default.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

# why a pick went where it did: a session passed over max_wait times, a request not measured
# yet (lines 10-12), the best measured gain (line 15)
REASONS = ("starving", "unmeasured", "gain")


class MarginalGain:
    def __init__(self, max_wait: int = 8) -> None:
        self.max_wait = max_wait
        self._waited: dict[str, int] = {}
        # picks by REASONS; where scenes change faster than the trainer comes round, hardly
        # ever by "gain"
        self.picks: Counter[str] = Counter()

    def pick(self, ready: Mapping[str, float | None]) -> str:
        """The session to train next among ``ready``, each with the accuracy its last
        micro-window gained per second, None where unmeasured (line 15: argmax gain)."""
        if not ready:
            raise ValueError("no session is ready")
        unmeasured = [s for s, gain in ready.items() if gain is None]
        starving = [s for s in ready if self._waited.get(s, 0) >= self.max_wait]
        if starving:  # before new requests too: sessions that keep moving starve no other
            chosen, why = max(starving, key=lambda s: self._waited[s]), "starving"
        elif unmeasured:  # in turn (lines 10-12), not in the order they are listed
            chosen, why = max(unmeasured, key=lambda s: self._waited.get(s, 0)), "unmeasured"
        else:
            chosen, why = max(ready, key=lambda s: ready[s] or 0.0), "gain"
        self.picks[why] += 1
        for s in ready:
            self._waited[s] = 0 if s == chosen else self._waited.get(s, 0) + 1
        return chosen

    def forget(self, session: str) -> None:
        self._waited.pop(session, None)
