"""What one scheme's run leaves behind: per scored frame its time, video and IoU counts; every
byte sent each way with its virtual time; when updates took effect; what the trainer spent.

Each run is saved on its own (``runs/<name>.npz`` + ``.json``) with the stream's signature, so
schemes can run separately (or concurrently) and the report merges whatever matches.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cloud_trainer.evaluation.scoring import miou_from_counts


@dataclass
class SchemeRun:
    name: str
    signature: dict[str, object]
    frame_t: list[float] = field(default_factory=list)
    frame_video: list[int] = field(default_factory=list)
    frame_counts: list[np.ndarray] = field(default_factory=list)  # (2, C) each
    uplink: list[tuple[float, int]] = field(default_factory=list)  # (sent at, bytes)
    downlink: list[tuple[float, int]] = field(default_factory=list)  # (arrived at, bytes)
    updates: list[float] = field(default_factory=list)  # arrival of each update (or label map)
    trainer_s: float = 0.0  # measured trainer compute (teacher at its measured cost)
    wall_s: float = 0.0
    duration_s: float = 0.0  # of the replayed stream
    command: str = ""  # the command line that made this run, and when it finished
    finished: str = ""
    extra: dict[str, object] = field(default_factory=dict)  # scheme-specific figures

    def add_frame(self, t: float, video: int, counts: np.ndarray) -> None:
        self.frame_t.append(t)
        self.frame_video.append(video)
        self.frame_counts.append(counts)

    def per_frame_miou(self, classes: tuple[int, ...]) -> np.ndarray:
        return np.asarray(miou_from_counts(np.stack(self.frame_counts), classes))

    def kbps(self, nbytes: float) -> float:
        """A byte count spread over the stream, in kilobits per second."""
        return nbytes * 8 / self.duration_s / 1000

    def summary(self, classes: tuple[int, ...], videos: list[str]) -> dict[str, object]:
        scores = self.per_frame_miou(classes)
        which = np.asarray(self.frame_video)
        up, down = sum(n for _, n in self.uplink), sum(n for _, n in self.downlink)
        # for the plots, not the tables
        series = ("sampling_fps", "t_update_s", "rebased_at", "reused_at", "scene_cut_at", "knobs")
        extra = {k: v for k, v in self.extra.items() if k not in series}
        # Model updates re-encoded as seed 002 sends them (fp16 values of the phase's mask),
        # and, for Just-In-Time, as the full-model float16 updates its paper numbers assume.
        if "ams_fp16_bytes" in extra:
            extra["ams_fp16_kbps"] = self.kbps(float(extra.pop("ams_fp16_bytes")))
        if "gradient_bytes" in extra:  # OneAdapt's DNNGrad maps, beside the updates
            extra["gradient_kbps"] = self.kbps(float(extra.pop("gradient_bytes")))
        if "full_fp16_bytes_per_update" in extra:
            full = float(extra["full_fp16_bytes_per_update"]) * len(self.updates)
            extra["full_fp16_kbps"] = self.kbps(full)
        return {
            "miou": float(scores.mean()),
            "per_video": {
                name: float(scores[which == i].mean())
                for i, name in enumerate(videos)
                if np.any(which == i)
            },
            "uplink_kbps": self.kbps(up),
            "downlink_kbps": self.kbps(down),
            "updates": len(self.updates),
            "bytes_per_update": down / len(self.updates) if self.updates else 0.0,
            "trainer_seconds": self.trainer_s,
            "wall_seconds": self.wall_s,
            "frames_scored": len(scores),
            **extra,
        }

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            directory / f"{self.name}.npz",
            t=np.asarray(self.frame_t),
            video=np.asarray(self.frame_video, np.int32),
            counts=np.stack(self.frame_counts).astype(np.int64),
        )
        meta = {
            "name": self.name,
            "signature": self.signature,
            "uplink": self.uplink,
            "downlink": self.downlink,
            "updates": self.updates,
            "trainer_s": self.trainer_s,
            "wall_s": self.wall_s,
            "duration_s": self.duration_s,
            "command": self.command,
            "finished": self.finished,
            "extra": self.extra,
        }
        (directory / f"{self.name}.json").write_text(json.dumps(meta, indent=1) + "\n")

    @classmethod
    def load(cls, directory: Path, name: str) -> SchemeRun:
        meta = json.loads((directory / f"{name}.json").read_text())
        arrays = np.load(directory / f"{name}.npz")
        return cls(
            name=meta["name"],
            signature=meta["signature"],
            frame_t=arrays["t"].tolist(),
            frame_video=arrays["video"].tolist(),
            frame_counts=list(arrays["counts"]),
            uplink=[(float(t), int(n)) for t, n in meta["uplink"]],
            downlink=[(float(t), int(n)) for t, n in meta["downlink"]],
            updates=[float(t) for t in meta["updates"]],
            trainer_s=float(meta["trainer_s"]),
            wall_s=float(meta["wall_s"]),
            duration_s=float(meta["duration_s"]),
            command=meta.get("command", ""),  # not in runs saved by earlier versions
            finished=meta.get("finished", ""),
            extra=meta["extra"],
        )
