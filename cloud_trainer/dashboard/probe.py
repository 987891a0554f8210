"""The device's real accuracy, measured on the trainer without any extra traffic: the mirror
holds the exact file the device runs and the teacher has just labelled its uploaded frames, so
both models the dashboard compares (the device's and the pretrained one) label the same frames
through LiteRT, as the device does, and are scored against the teacher."""

from __future__ import annotations

import time
from collections.abc import Sequence

from cloud_trainer.ams.judging import FileJudge, mean_miou
from cloud_trainer.dashboard.records import FrameView, Probe
from cloud_trainer.sample_buffer import Sample


class AccuracyProbe:
    def __init__(self, judge: FileJudge, pretrained: bytes, frames: int) -> None:
        """``judge`` is the session's (its open files are the device's and the base's already);
        ``frames``: the newest of each segment's samples scored."""
        self._judge = judge
        self._pretrained = pretrained
        self._frames = frames

    def measure(
        self, model: bytes, version: int, samples: Sequence[Sample], classes: Sequence[int]
    ) -> tuple[Probe, FrameView]:
        """``model`` (the device's file, ``version``) and the pretrained file on the newest of
        ``samples``; the newest frame with both label maps for the overlay."""
        chosen = list(samples[-self._frames :])
        device = self._judge.labels(model, chosen)
        pretrained = self._judge.labels(self._pretrained, chosen)
        now = time.time()
        probe = Probe(
            at=now,
            version=version,
            miou=mean_miou(device, chosen, classes),
            pretrained=mean_miou(pretrained, chosen, classes),
            frames=len(chosen),
        )
        newest = chosen[-1]
        return probe, FrameView(now, version, newest.rgb, device[-1], newest.labels)
