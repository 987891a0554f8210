"""Label maps computed once per (model, picture) and kept on disk for every later scheme and run.

The teacher labels every scored frame and every frame a trainer receives; the pretrained
student labels every scored frame (No Customization, and every scheme until its first update
arrives). Both are slow on a CPU and identical across schemes, so they are cached by the
model's sha256 and the picture's content (a BLAKE2 digest of the RGB array): a decoded segment
frame and the source frame it came from are different pictures and get different entries, as
they should. Entries are zstd-compressed uint8 maps written atomically, so concurrent runs
share one cache safely.

Each cache also keeps the mean time a label map took to compute, so that a trainer whose
labels came from the cache can still be charged what its teacher would have cost.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import zstandard

from cloud_trainer.teacher import Teacher

LabelFn = Callable[[np.ndarray], np.ndarray]  # (N, H, W, 3) uint8 -> (N, H, W) labels
_COST = "cost.json"


class LabelCache:
    def __init__(self, root: Path, model: bytes, label: LabelFn) -> None:
        self.directory = root / hashlib.sha256(model).hexdigest()[:16]
        self.directory.mkdir(parents=True, exist_ok=True)
        self._label = label
        self.hits = self.misses = 0
        self._computed_s, self._computed = self._read_cost()

    @property
    def seconds_per_map(self) -> float:
        """Measured mean cost of one label map (0 until one has been computed, ever)."""
        return self._computed_s / self._computed if self._computed else 0.0

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """(N, H, W) uint8 labels of an (N, H, W, 3) uint8 batch."""
        keys = [_key(picture) for picture in rgb]
        out: list[np.ndarray | None] = [self._read(key) for key in keys]
        missing = [i for i, labels in enumerate(out) if labels is None]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            started = time.perf_counter()
            fresh = self._label(rgb[missing]).astype(np.uint8)
            self._record_cost(time.perf_counter() - started, len(missing))
            for i, labels in zip(missing, fresh, strict=True):
                self._write(keys[i], labels)
                out[i] = labels
        return np.stack(out)

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.zst"

    def _read(self, key: str) -> np.ndarray | None:
        path = self._path(key)
        if not path.is_file():
            return None
        raw = zstandard.ZstdDecompressor().decompress(path.read_bytes())
        height, width = np.frombuffer(raw[:8], "<u4")
        return np.frombuffer(raw[8:], np.uint8).reshape(height, width)

    def _write(self, key: str, labels: np.ndarray) -> None:
        path = self._path(key)
        path.parent.mkdir(exist_ok=True)
        header = np.array(labels.shape, "<u4").tobytes()
        _replace(path, zstandard.ZstdCompressor(level=3).compress(header + labels.tobytes()))

    def _read_cost(self) -> tuple[float, int]:
        try:
            saved = json.loads((self.directory / _COST).read_text())
            return float(saved["seconds"]), int(saved["maps"])
        except (OSError, ValueError, KeyError):
            return 0.0, 0

    def _record_cost(self, seconds: float, maps: int) -> None:
        self._computed_s += seconds
        self._computed += maps
        cost = {"seconds": self._computed_s, "maps": self._computed}
        _replace(self.directory / _COST, json.dumps(cost).encode())


def _replace(path: Path, data: bytes) -> None:
    """Write-then-rename under a per-process name: concurrent runs never see half an entry.
    No fsync: a cache entry lost to a crash is only computed again."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _key(picture: np.ndarray) -> str:
    digest = hashlib.blake2b(np.ascontiguousarray(picture).data, digest_size=16)
    digest.update(repr(picture.shape).encode())
    return digest.hexdigest()


class CachedTeacher(Teacher):
    """A teacher whose labels come from the cache where it has them. ``charged_s`` adds up what
    the labels it handed out cost (the cache's measured mean per map), ``wall_s`` what they took
    here: a trainer's compute is its wall time less ``wall_s`` plus ``charged_s``."""

    def __init__(self, teacher: Teacher, cache: LabelCache) -> None:
        self._teacher = teacher
        self.cache = cache
        self.charged_s = 0.0
        self.wall_s = 0.0

    @property
    def input_size(self) -> tuple[int, int]:
        return self._teacher.input_size

    def label(self, rgb: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        labels = self.cache(rgb)
        self.wall_s += time.perf_counter() - started
        self.charged_s += len(rgb) * self.cache.seconds_per_map
        return labels.astype(np.int64)


class ScoringTeacher(Teacher):
    """Labels from the cache, scores from ``scorer`` (the same teacher file imported into
    torch): what KL distillation needs in the evaluation. Scoring is trainer compute, uncached."""

    def __init__(self, labels: CachedTeacher, scorer: Teacher) -> None:
        self._labels = labels
        self._scorer = scorer

    @property
    def input_size(self) -> tuple[int, int]:
        return self._labels.input_size

    def label(self, rgb: np.ndarray) -> np.ndarray:
        return self._labels.label(rgb)

    def scores(self, rgb: np.ndarray) -> np.ndarray:
        return self._scorer.scores(rgb)
