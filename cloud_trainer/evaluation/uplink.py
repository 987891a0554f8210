"""``cloud-trainer evaluate --uplink``: OneAdapt's knobs against the fixed configuration,
AWStream-style profiling and a bitrate sweep (seed 000 §5; issue 15), on the same frames.

Each video is sampled at the device's rate and cut into intervals of T_update, one segment
each. A scheme chooses each segment's knobs; the segment is encoded as the device encodes it,
decoded as the trainer decodes it and labelled by the teacher at its input size. Its label
accuracy is the mIoU of those labels against the teacher's labels on the original frames (seed
000 §3.1: accuracy against the most expensive configuration), over the classes either map
holds, averaged over the segment's frames. Trainer compute is counted in teacher label maps
and DNNGrad backward passes (and their measured seconds).

- ``fixed``: the device's default, 200 kbps at the source's size; ``sweep``: fixed bitrates,
  the Pareto curve;
- ``awstream``: every ``profile_every_s``, the first ``profile_frames`` of the interval encoded
  at every point of a quality x resolution grid and labelled (and at the grid's best, for the
  reference accuracy is measured against), the point of best accuracy − λ·kbps kept until the
  next profile;
- ``oneadapt``: after each segment the trainer's DNNGrad on its last decoded frame and the
  device's InputGrad on its original (``edge_runtime.oneadapt``), then eq. 2, each knob moving
  at most a level; a run per λ (``oneadapt_lams``), the trade-off curve the paper varies.

On every ``cosine_every``-th interval the OutputGrad vector is set beside AccGrad measured by
its definition (each knob one level up on its own, the frame labelled by the teacher), and
their cosine similarity reported (seed 000 Fig. 6).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from cloud_trainer.evaluation.scoring import iou_counts, miou_from_counts
from cloud_trainer.oneadapt.dnngrad import DnnGrad
from edge_runtime.frames import Frame
from edge_runtime.h264 import decode_frames, encode_segment, even
from edge_runtime.oneadapt.input_grad import gradients, probe
from edge_runtime.oneadapt.knobs import KnobSpace, ascend, within_a_level
from edge_runtime.profile import KnobsSection
from edge_runtime.sources import open_source
from shared_schema.messages import EncoderKnobs

TeacherFn = Callable[[np.ndarray], np.ndarray]  # (N, H, W, 3) uint8 -> (N, H, W) labels


class UplinkSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sampling_fps: float = Field(1.0, gt=0.0, le=30.0)
    clip_s: float | None = Field(None, gt=0.0)  # seconds kept from the start of each video
    interval_s: float = Field(10.0, gt=0.0)  # T_update: one segment per interval
    lam: float = Field(1e-4, ge=0.0)  # AWStream's λ: accuracy (a fraction) one kbps is worth
    # OneAdapt's λ, in its own units (OutputGrad / z per kbps: OutputGrad bounds |Δz| from
    # above, so it runs larger than a change of accuracy); one run per value
    oneadapt_lams: tuple[float, ...] = (0.3, 1.0, 3.0)
    alpha: float = Field(0.01, gt=0.0)  # eq. 2's learning rate (a step is at most a level)
    fixed_kbps: float = 200.0
    sweep_kbps: tuple[float, ...] = (50.0, 100.0, 200.0, 400.0, 800.0)
    profile_every_s: float = Field(30.0, gt=0.0)
    profile_frames: int = Field(2, ge=1)
    profile_crf: tuple[float, ...] = (18.0, 24.0, 30.0, 36.0, 42.0)
    profile_scales: tuple[float, ...] = (0.5, 0.75, 1.0)
    roi_grid: tuple[int, int] = (4, 4)  # OneAdapt's per-region knobs; (0, 0): none
    scales: tuple[float, ...] = (0.5, 0.625, 0.75, 0.875, 1.0)  # OneAdapt's resolutions
    cosine_every: int = Field(4, ge=1)  # intervals; each costs 2 + regions teacher maps
    bounds: KnobsSection = KnobsSection(min_crf=18.0, max_crf=45.0)


@dataclass
class Interval:
    video: int
    t: float  # of its first frame, seconds from the video's start
    frames: list[Frame]  # the sampled originals
    reference: np.ndarray  # (N, H, W) the teacher's labels of the originals


@dataclass
class Record:
    """One interval of one scheme."""

    video: int
    t: float
    frames: int
    knobs: dict[str, object]
    bytes: int
    accuracy: float
    teacher_maps: int
    backward: int = 0
    gradient_bytes: int = 0
    cosine: float | None = None
    acc_grad: list[float] | None = None  # OneAdapt's estimate, per knob
    kbps_grad: list[float] | None = None


@dataclass
class Upload:
    labels: np.ndarray  # (N, H, W) teacher labels of the decoded frames
    rgb: np.ndarray  # (N, H, W, 3) the decoded frames at the teacher's input
    size: int  # bytes


class Uplink:
    """The frames, the teacher and the codec every scheme shares."""

    def __init__(self, teacher: TeacherFn, dnngrad: DnnGrad, settings: UplinkSettings) -> None:
        self.teacher = teacher
        self.dnngrad = dnngrad
        self.settings = settings
        self.num_classes = dnngrad.module.num_classes
        self.seconds = {"teacher": 0.0, "backward": 0.0}

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the teacher's input."""
        height, width = self.dnngrad.module.input_size
        return width, height

    def intervals(self, video: int, path: Path) -> Iterator[Interval]:
        frames = _sampled(path, self.settings.sampling_fps, self.settings.clip_s)
        per = max(1, round(self.settings.interval_s * self.settings.sampling_fps))
        for start in range(0, len(frames), per):
            chunk = frames[start : start + per]
            originals = np.stack([f.rgb(*self.size) for f in chunk])
            yield Interval(video, chunk[0].timestamp, chunk, self.label(originals))

    def label(self, rgb: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        labels = self.teacher(rgb)
        self.seconds["teacher"] += time.perf_counter() - started
        return labels

    def upload(self, frames: Sequence[Frame], knobs: EncoderKnobs) -> Upload:
        fps = self.settings.sampling_fps
        data = encode_segment(frames, knobs, fps)
        decoded = decode_frames(data, [f.timestamp for f in frames])
        rgb = np.stack([f.rgb(*self.size) for f in decoded])
        return Upload(self.label(rgb), rgb, len(data))

    def accuracy(self, labels: np.ndarray, reference: np.ndarray) -> float:
        """Mean over frames of the mIoU against the reference, over the classes either holds."""
        scores = []
        for got, want in zip(labels, reference, strict=True):
            counts = iou_counts(got, want, self.num_classes)
            scores.append(miou_from_counts(counts, np.flatnonzero(counts[1])))
        return float(np.mean(scores))

    def kbps(self, size: int, frames: int) -> float:
        return size * 8 * self.settings.sampling_fps / frames / 1000

    def record(self, interval: Interval, knobs: EncoderKnobs, maps: int = 0) -> Record:
        """The interval's segment at ``knobs``; ``maps``: teacher maps spent choosing them."""
        up = self.upload(interval.frames, knobs)
        accuracy = self.accuracy(up.labels, interval.reference)
        n = len(interval.frames)
        return Record(interval.video, interval.t, n, _knobs(knobs), up.size, accuracy, n + maps)

    def probe_accuracy(self, frame: Frame, knobs: EncoderKnobs, reference: np.ndarray) -> float:
        """The accuracy of one frame uploaded alone at ``knobs``."""
        pixels = probe(frame, knobs, self.size, self.settings.sampling_fps).pixels
        return self.accuracy(self.label(pixels[None].astype(np.uint8)), reference)


# -- the schemes ---------------------------------------------------------------------------


class Fixed:
    def __init__(self, kbps: float) -> None:
        self.knobs = EncoderKnobs(bitrate_kbps=kbps)

    def __call__(self, up: Uplink, interval: Interval) -> Record:
        return up.record(interval, self.knobs)


class AwStream:
    """Profiling (AWStream): the grid's best accuracy − λ·kbps on a short window."""

    def __init__(self) -> None:
        self.knobs: EncoderKnobs | None = None
        self.next_profile = 0.0
        self.video = -1

    def __call__(self, up: Uplink, interval: Interval) -> Record:
        maps = 0
        if self.knobs is None or interval.t >= self.next_profile or interval.video != self.video:
            self.knobs, maps = self._profile(up, interval)
            self.next_profile = interval.t + up.settings.profile_every_s
            self.video = interval.video
        return up.record(interval, self.knobs, maps=maps)

    def _profile(self, up: Uplink, interval: Interval) -> tuple[EncoderKnobs, int]:
        s = up.settings
        window = interval.frames[: s.profile_frames]
        best = _grid_knobs(min(s.profile_crf), 1.0, window[0])
        reference = up.upload(window, best).labels  # its most expensive configuration
        scored = []
        for crf in s.profile_crf:
            for scale in s.profile_scales:
                knobs = _grid_knobs(crf, scale, window[0])
                got = up.upload(window, knobs)
                value = up.accuracy(got.labels, reference) - s.lam * up.kbps(got.size, len(window))
                scored.append((value, knobs))
        chosen = max(scored, key=lambda v: v[0])[1]
        return chosen, len(window) * (1 + len(scored))


class OneAdapt:
    def __init__(self, lam: float) -> None:
        self.lam = lam
        self.u: np.ndarray | None = None
        self.space: KnobSpace | None = None
        self.intervals = 0

    def __call__(self, up: Uplink, interval: Interval) -> Record:
        s = up.settings
        last = interval.frames[-1]
        if self.space is None or self.space.source != (last.width, last.height):
            self.space = KnobSpace(s.bounds, (last.width, last.height), scales=s.scales,
                                   roi_grid=s.roi_grid)  # fmt: skip
            self.u = np.full(self.space.size, 0.5) if self.u is None else self.u[: self.space.size]
        assert self.u is not None
        knobs = self.space.knobs(self.u)
        sent = up.upload(interval.frames, knobs)
        accuracy = up.accuracy(sent.labels, interval.reference)
        started = time.perf_counter()
        grad_map, utility = up.dnngrad(sent.rgb[-1])  # the trainer's, on what it received
        up.seconds["backward"] += time.perf_counter() - started
        g = gradients(last, self.space, self.u, grad_map, utility, s.sampling_fps)
        cosine, maps = None, len(interval.frames)
        if self.intervals % s.cosine_every == 0:
            cosine = _cosine(g.acc, self._acc_grad(up, interval, knobs))
            maps += 1 + self.space.size
        self.intervals += 1
        record = Record(interval.video, interval.t, len(interval.frames), _knobs(knobs),
                        sent.size, accuracy, maps, backward=1,
                        gradient_bytes=grad_map.values.size, cosine=cosine,
                        acc_grad=g.acc.round(5).tolist(),
                        kbps_grad=g.kbps.round(2).tolist())  # fmt: skip
        u = self.space.vector(knobs)
        self.u = within_a_level(self.space, u, ascend(u, g.acc, g.kbps, s.alpha, self.lam))
        return record

    def _acc_grad(self, up: Uplink, interval: Interval, knobs: EncoderKnobs) -> np.ndarray:
        """AccGrad by its definition (seed 000 eq. 2): each knob one level up on its own, the
        last frame labelled, the change of its accuracy against the original's labels."""
        assert self.space is not None and self.u is not None
        frame, reference = interval.frames[-1], interval.reference[-1:]
        u = self.space.vector(knobs)
        base = up.probe_accuracy(frame, knobs, reference)
        steps, out = self.space.steps, np.zeros(self.space.size)
        for i in range(self.space.size):
            moved = u.copy()
            moved[i] = min(1.0, u[i] + steps[i])
            if moved[i] == u[i]:
                continue
            changed = up.probe_accuracy(frame, self.space.knobs(moved), reference)
            out[i] = (changed - base) / (moved[i] - u[i])
        return out


def _cosine(a: np.ndarray, b: np.ndarray) -> float | None:
    norms = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / norms) if norms > 0 else None


def _grid_knobs(crf: float, scale: float, frame: Frame) -> EncoderKnobs:
    width = None if scale == 1.0 else even(frame.width * scale)
    return EncoderKnobs(crf=crf, width=width)


def _knobs(knobs: EncoderKnobs) -> dict[str, object]:
    out = knobs.model_dump(exclude_none=True)
    if knobs.roi is not None:
        out["roi"] = {"grid": [knobs.roi.cols, knobs.roi.rows],
                      "mean_qoffset": float(np.mean(knobs.roi.qoffsets))}  # fmt: skip
    return out


def _sampled(path: Path, fps: float, clip_s: float | None) -> list[Frame]:
    """The frames a device sampling at ``fps`` takes from the video (its first ``clip_s``)."""
    frames, due = [], 0.0
    with open_source(str(path), strict=True) as source:
        for frame in source:
            if clip_s is not None and frame.timestamp >= clip_s:
                break
            if frame.timestamp + 1e-9 >= due:
                frames.append(frame)
                due += 1.0 / fps
    return frames


# -- the run and its report ----------------------------------------------------------------


@dataclass
class Run:
    name: str
    records: list[Record] = field(default_factory=list)

    def summary(self, up: Uplink) -> dict[str, object]:
        seconds = sum(r.frames for r in self.records) / up.settings.sampling_fps
        cosines = [r.cosine for r in self.records if r.cosine is not None]
        return {
            "uplink_kbps": sum(r.bytes for r in self.records) * 8 / seconds / 1000,
            "accuracy": float(np.mean([r.accuracy for r in self.records])),
            "teacher_maps": sum(r.teacher_maps for r in self.records),
            "backward_passes": sum(r.backward for r in self.records),
            "gradient_kbps": sum(r.gradient_bytes for r in self.records) * 8 / seconds / 1000,
            "cosine_mean": float(np.mean(cosines)) if cosines else None,
            "cosines": cosines,
        }


def run_uplink(up: Uplink, videos: Sequence[Path], schemes: Sequence[str]) -> dict[str, Run]:
    """Every scheme over every video's intervals (a sweep point is a run of its own)."""
    makers = {"fixed": lambda: {"fixed": Fixed(up.settings.fixed_kbps)},
              "sweep": lambda: {f"sweep_{k:g}": Fixed(k) for k in up.settings.sweep_kbps},
              "awstream": lambda: {"awstream": AwStream()},
              "oneadapt": lambda: {f"oneadapt_{lam:g}": OneAdapt(lam)
                                   for lam in up.settings.oneadapt_lams}}  # fmt: skip
    players = {name: p for scheme in schemes for name, p in makers[scheme]().items()}
    runs = {name: Run(name) for name in players}
    for index, path in enumerate(videos):
        for interval in up.intervals(index, path):
            for name, play in players.items():
                runs[name].records.append(play(up, interval))
    return runs


def write_uplink_report(out: Path, up: Uplink, runs: dict[str, Run], meta: dict) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    summaries = {name: run.summary(up) for name, run in runs.items()}
    records = {name: [r.__dict__ for r in run.records] for name, run in runs.items()}
    result = {**meta, "settings": up.settings.model_dump(mode="json"), "schemes": summaries,
              "seconds": up.seconds, "records": records}  # fmt: skip
    (out / "uplink.json").write_text(json.dumps(result, indent=1, default=str))
    lines = [
        "| scheme | uplink (Kbps) | label accuracy (%) | teacher maps | backward | "
        "DNNGrad (Kbps) | cos(OutputGrad, AccGrad) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in summaries.items():
        cosine = "" if s["cosine_mean"] is None else f"{s['cosine_mean']:.2f}"
        lines.append(f"| {name} | {s['uplink_kbps']:.1f} | {100 * s['accuracy']:.2f} | "
                     f"{s['teacher_maps']} | {s['backward_passes']} | {s['gradient_kbps']:.2f} "
                     f"| {cosine} |")  # fmt: skip
    (out / "uplink.md").write_text("\n".join(lines) + "\n")
    _plot(out / "uplink.png", runs, summaries)
    return result


def _plot(path: Path, runs: dict[str, Run], summaries: dict[str, dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (pareto, knobs) = plt.subplots(1, 2, figsize=(12, 4.5))
    sweep = sorted((s["uplink_kbps"], 100 * s["accuracy"]) for n, s in summaries.items()
                   if n.startswith("sweep_"))  # fmt: skip
    if sweep:
        pareto.plot(*zip(*sweep, strict=True), "o-", color="grey", label="bitrate sweep")
    for name, s in summaries.items():
        if not name.startswith("sweep_"):
            pareto.plot(s["uplink_kbps"], 100 * s["accuracy"], "s", label=name, markersize=8)
    pareto.set_xlabel("uplink (Kbps)")
    pareto.set_ylabel("label accuracy against the originals (%)")
    pareto.legend()
    adapting = [name for name in runs if name.startswith("oneadapt")]
    if adapting:
        records = runs[adapting[len(adapting) // 2]].records
        x = np.arange(len(records))
        knobs.plot(x, [r.knobs.get("crf", np.nan) for r in records], label="CRF")
        widths = [r.knobs.get("width") for r in records]
        knobs.plot(x, [np.nan if w is None else w / 20 for w in widths], label="width / 20")
        qoffsets = [r.knobs.get("roi", {}).get("mean_qoffset", 0.0) * 25 for r in records]
        knobs.plot(x, qoffsets, label="mean ROI offset (QP)")
        knobs.set_xlabel("interval")
        knobs.set_title(f"{adapting[len(adapting) // 2]}'s knobs")
        knobs.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
