"""The rebase rule (cloud_trainer.ams.rebase) and the buffer's restart; a session rebasing on
the real models is in test_session."""

from __future__ import annotations

import numpy as np

from cloud_trainer.ams.rebase import RebaseConfig, should_rebase
from cloud_trainer.sample_buffer import Sample, SampleBuffer


def _sample(t: float) -> Sample:
    return Sample(t, np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2), np.uint8))


def test_the_base_wins_only_by_more_than_the_margin():
    assert should_rebase(0.80, 0.75, margin=0.02)
    assert not should_rebase(0.77, 0.75, margin=0.02)  # two points: not more than the margin
    assert not should_rebase(0.75, 0.80, margin=0.0)
    assert not should_rebase(0.80, 0.80, margin=0.0)  # a tie keeps what training learnt
    assert RebaseConfig().enabled and RebaseConfig().margin == 0.02


def test_a_restarted_buffer_forgets_the_old_scene_and_keeps_forgetting_it():
    buffer = SampleBuffer(horizon_s=100.0)
    for t in (0.0, 10.0, 20.0, 30.0):
        buffer.add(_sample(t))
    buffer.restart(20.0)
    assert [s.timestamp for s in buffer.samples()] == [20.0, 30.0]
    buffer.add(_sample(15.0))  # a late segment of the old scene
    buffer.add(_sample(40.0))
    assert [s.timestamp for s in buffer.samples()] == [20.0, 30.0, 40.0]
    buffer.restart(5.0)  # never moves back
    assert buffer.start == 20.0
    buffer.add(_sample(125.0))  # the horizon still applies
    assert [s.timestamp for s in buffer.samples()] == [30.0, 40.0, 125.0]
