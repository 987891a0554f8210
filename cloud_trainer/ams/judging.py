"""Models judged as the device runs them: a TFLite file labels teacher-labelled samples through
LiteRT, and its score is the mean per-frame mIoU against the teacher over the stream's classes.
The regression gate (a phase's model against the device's) and the rebase rule (the base model
against the device's) both judge with it."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from cloud_trainer.sample_buffer import Sample
from edge_runtime.backends.base import Engine
from edge_runtime.backends.litert import LiteRtConfig
from shared_schema.envelope import sha256_hex
from shared_schema.metrics import miou

# The device's model, the base model and one candidate: the files a phase judges.
_OPEN_FILES = 3


def per_sample_miou(
    labels: Sequence[np.ndarray], samples: Sequence[Sample], classes: Sequence[int]
) -> list[float]:
    """The mIoU of each of ``labels`` (one map per sample) against the sample's teacher labels."""
    return [miou(p, s.labels, classes) for p, s in zip(labels, samples, strict=True)]


def mean_miou(
    labels: Sequence[np.ndarray], samples: Sequence[Sample], classes: Sequence[int]
) -> float:
    """A file's score: the mean over ``samples`` of ``per_sample_miou``."""
    return float(np.mean(per_sample_miou(labels, samples, classes)))


class FileJudge:
    """Scores model files; the few it is asked about again (the device's, the base) stay open."""

    def __init__(self, threads: int) -> None:
        self._backend = LiteRtConfig(threads=threads)
        self._open: OrderedDict[str, Engine] = OrderedDict()  # by sha256, least recent first

    def score(self, data: bytes, samples: Sequence[Sample], classes: Sequence[int]) -> float:
        return mean_miou(self.labels(data, samples), samples, classes)

    def per_sample(
        self, data: bytes, samples: Sequence[Sample], classes: Sequence[int]
    ) -> list[float]:
        return per_sample_miou(self.labels(data, samples), samples, classes)

    def labels(self, data: bytes, samples: Sequence[Sample]) -> list[np.ndarray]:
        """The label map the file ``data`` gives each sample's frame."""
        engine = self._engine(data)
        return [engine.infer(s.rgb) for s in samples]

    def _engine(self, data: bytes) -> Engine:
        sha = sha256_hex(data)
        if sha in self._open:
            self._open.move_to_end(sha)
            return self._open[sha]
        while len(self._open) >= _OPEN_FILES:
            self._open.popitem(last=False)[1].close()
        engine = self._open[sha] = self._backend.open(data)
        return engine

    def close(self) -> None:
        while self._open:
            self._open.popitem()[1].close()
