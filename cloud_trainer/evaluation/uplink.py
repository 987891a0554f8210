"""``cloud-trainer evaluate --uplink``: OneAdapt's knobs against the fixed configuration,
AWStream-style profiling and a bitrate sweep (seed 000 §5; issue 15), on the same frames.

Each video is sampled at the device's rate and cut into intervals of T_update, one segment
each. A scheme chooses each segment's knobs; the segment is encoded as the device encodes it,
decoded as the trainer decodes it and labelled by the teacher at its input size. Its label
accuracy is the mIoU of those labels against the teacher's labels on the original frames (seed
000 §3.1: accuracy against the most expensive configuration), over the classes either map
holds, averaged over the segment's frames. Trainer compute is counted in teacher label maps
and DNNGrad passes (and their measured seconds): a backward pass, or the forward alone where
no pixel of the teacher's output passes θ (``DnnGrad``).

- ``fixed``: the device's default, 200 kbps at the source's size; ``sweep``: fixed bitrates,
  the Pareto curve;
- ``awstream``: every ``profile_every_s``, the first ``profile_frames`` of the interval encoded
  as one segment at every point of a quality x resolution grid and labelled (and at the grid's
  best, for the reference accuracy is measured against), the point of best accuracy − λ·kbps
  kept until the next profile; a run per λ (``awstream_lams``);
- ``oneadapt``: after each segment the trainer's DNNGrad on its last decoded frame and the
  device's step on its original (``edge_runtime.oneadapt.step``, the profile section
  ``knobs`` says which knobs adapt); a run per λ (``oneadapt_lams``), the trade-off curve the
  paper varies.

Extra compute is what a scheme spends beyond labelling its own uploads: AWStream's profiling
maps, OneAdapt's DNNGrad passes, in seconds at the measured mean cost of each kind. On every
``cosine_every``-th interval OneAdapt's OutputGrad vector is set beside AccGrad measured by its
definition (each knob a level up on its own, the interval's segment uploaded and labelled by
the teacher), and their cosine similarity reported (seed 000 Fig. 6), with the share of knobs
whose signs agree and, over the intervals, the correlation of the two for the quality knob;
that measurement is not the scheme's compute.

The costs of a teacher map, a backward pass and a forward alone are measured side by side,
``calibration`` times on the first interval and once more on each interval after it: the
machine's noise, and its drift over the run, hit them alike.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from cloud_trainer.evaluation.scoring import iou_counts, miou_from_counts
from cloud_trainer.oneadapt.dnngrad import DnnGrad
from edge_runtime.frames import Frame
from edge_runtime.h264 import decode_frames, encode_segment, even
from edge_runtime.oneadapt.input_grad import neighbour
from edge_runtime.oneadapt.knobs import KnobSpace
from edge_runtime.oneadapt.step import step
from edge_runtime.profile import KnobsSection, OneAdaptSection
from edge_runtime.sources import open_source
from shared_schema.gradient import GradientMap
from shared_schema.messages import EncoderKnobs

TeacherFn = Callable[[np.ndarray], np.ndarray]  # (N, H, W, 3) uint8 -> (N, H, W) labels


class UplinkSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sampling_fps: float = Field(1.0, gt=0.0, le=30.0)
    clip_s: float | None = Field(None, gt=0.0)  # seconds kept from the start of each video
    interval_s: float = Field(10.0, gt=0.0)  # T_update: one segment per interval
    # AWStream's λ: the accuracy (a fraction) one kbps is worth; one run per value
    awstream_lams: tuple[float, ...] = (1e-4, 3e-4)
    # OneAdapt's λ, in its own units (OutputGrad / z per kbps: OutputGrad bounds |Δz| from
    # above, so it runs larger than a change of accuracy); one run per value
    oneadapt_lams: tuple[float, ...] = (0.1, 0.16, 0.2)
    # the device's [oneadapt] (its λ replaced by each of oneadapt_lams): the knobs it adapts
    knobs: OneAdaptSection = OneAdaptSection(enabled=True)
    fixed_kbps: float = 200.0
    sweep_kbps: tuple[float, ...] = (50.0, 100.0, 200.0, 400.0, 800.0)
    profile_every_s: float = Field(30.0, gt=0.0)
    profile_frames: int = Field(5, ge=1)  # one segment: an IDR and P-frames, as uploads
    profile_crf: tuple[float, ...] = (18.0, 24.0, 30.0, 36.0, 42.0)
    profile_scales: tuple[float, ...] = (0.5, 0.75, 1.0)
    cosine_every: int = Field(2, ge=1)  # intervals; each costs a segment's maps per knob
    calibration: int = Field(5, ge=1)  # of each, timed alternately at the start (then 1/interval)
    bounds: KnobsSection = KnobsSection()  # the device profile's [knobs]


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
    teacher_maps: int  # the uploads' and those spent choosing the knobs
    backward: int = 0  # DNNGrad passes that ran a backward
    forward_only: int = 0  # ... that found no confident pixel and stopped after the forward
    measure_maps: int = 0  # spent measuring AccGrad by its definition (not the scheme's)
    gradient_bytes: int = 0
    cosine: float | None = None
    acc_grad: list[float] | None = None  # OneAdapt's estimate, per knob
    measured: list[float] | None = None  # AccGrad by its definition, where measured
    kbps_grad: list[float] | None = None


@dataclass
class Upload:
    labels: np.ndarray  # (N, H, W) teacher labels of the decoded frames
    rgb: np.ndarray  # (N, H, W, 3) the decoded frames at the teacher's input
    size: int  # bytes


class Uplink:
    """The frames, the teacher and the codec every scheme shares."""

    def __init__(
        self,
        teacher: TeacherFn,
        dnngrad: DnnGrad,
        settings: UplinkSettings,
        uncached: TeacherFn | None = None,
    ) -> None:
        """``uncached``: the teacher itself where ``teacher`` is a cache of its labels (whose
        hits cost nothing), for the calibration."""
        self.teacher = teacher
        self._uncached = uncached or teacher
        self.timings: dict[str, list[float]] = {}  # seconds of each map / DNNGrad pass timed
        self.dnngrad = dnngrad
        # the two kinds of pass, for the timings: at θ = 0 every pixel counts, so the backward
        # always runs; above 1 none does, so it never does
        module, background = dnngrad.module, dnngrad.background
        self._passes = {"backward": DnnGrad(module, 0.0, background),
                        "forward": DnnGrad(module, 1.0, background)}  # fmt: skip
        self.settings = settings
        self.num_classes = dnngrad.module.num_classes
        self.seconds = {"teacher": 0.0, "backward": 0.0, "forward": 0.0}
        self.counts = {"teacher": 0, "backward": 0, "forward": 0}

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
            self.calibrate(originals[0], 1 if self.timings else self.settings.calibration)
            yield Interval(video, chunk[0].timestamp, chunk, self.label(originals))

    def label(self, rgb: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        labels = self.teacher(rgb)
        self.seconds["teacher"] += time.perf_counter() - started
        self.counts["teacher"] += len(rgb)
        return labels

    def dnngrad_of(self, rgb: np.ndarray) -> tuple[GradientMap, float, bool]:
        """The DNNGrad of ``rgb``, its utility, and whether its pass ran a backward."""
        started = time.perf_counter()
        grad_map, utility = self.dnngrad(rgb)
        backward = DnnGrad.backward_runs(utility)
        kind = "backward" if backward else "forward"
        self.seconds[kind] += time.perf_counter() - started
        self.counts[kind] += 1
        return grad_map, utility, backward

    def calibrate(self, rgb: np.ndarray, repeats: int) -> None:
        """Time a teacher map and both kinds of DNNGrad pass on ``rgb`` (H, W, 3), alternately,
        ``repeats`` times, the first time after one untimed call of each: a long-running
        trainer pays their steady cost, not the first call's set-up."""
        runs = {kind: partial(dnngrad, rgb) for kind, dnngrad in self._passes.items()}
        runs = {"teacher": partial(self._uncached, rgb[None]), **runs}
        warm = bool(self.timings)
        for repeat in range(repeats + (not warm)):
            for kind, run in runs.items():
                started = time.perf_counter()
                run()
                if warm or repeat:
                    self.timings.setdefault(kind, []).append(time.perf_counter() - started)

    @property
    def costs(self) -> dict[str, float]:
        """The mean cost of one teacher map, backward pass or forward alone, as timed."""
        return {kind: float(np.mean(seconds)) for kind, seconds in self.timings.items()}

    def mean_seconds(self, kind: str) -> float:
        """The mean cost of one ``kind`` ("teacher", "backward", "forward")."""
        return self.costs[kind]

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


# -- the schemes ---------------------------------------------------------------------------


class Fixed:
    def __init__(self, kbps: float) -> None:
        self.knobs = EncoderKnobs(bitrate_kbps=kbps)

    def __call__(self, up: Uplink, interval: Interval) -> Record:
        return up.record(interval, self.knobs)


class AwStream:
    """Profiling (AWStream): the grid's best accuracy − λ·kbps on a short window."""

    def __init__(self, lam: float) -> None:
        self.lam = lam
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
                kbps = up.kbps(got.size, len(window))
                value = up.accuracy(got.labels, reference) - self.lam * kbps
                scored.append((value, knobs))
        chosen = max(scored, key=lambda v: v[0])[1]
        return chosen, len(window) * (1 + len(scored))


class OneAdapt:
    def __init__(self, config: OneAdaptSection) -> None:
        self.config = config
        self.knobs: EncoderKnobs | None = None
        self.intervals = 0

    def __call__(self, up: Uplink, interval: Interval) -> Record:
        s, last = up.settings, interval.frames[-1]
        space = KnobSpace.of(self.config, s.bounds, (last.width, last.height))
        knobs = self.knobs or space.knobs(space.vector(EncoderKnobs()))  # as a device starts
        sent = up.upload(interval.frames, knobs)
        accuracy = up.accuracy(sent.labels, interval.reference)
        grad_map, utility, backward = up.dnngrad_of(sent.rgb[-1])  # on what the trainer got
        self.knobs, g = step(self.config, s.bounds, last, knobs, grad_map, utility,
                             s.sampling_fps)  # fmt: skip
        measured, maps = None, 0
        if self.intervals % s.cosine_every == 0:
            measured, maps = self._acc_grad(up, space, interval, knobs, accuracy)
        self.intervals += 1
        return Record(interval.video, interval.t, len(interval.frames), _knobs(knobs),
                      sent.size, accuracy, len(interval.frames), backward=int(backward),
                      forward_only=int(not backward),
                      measure_maps=maps,
                      gradient_bytes=grad_map.values.size,
                      cosine=None if measured is None else _cosine(g.acc, measured),
                      acc_grad=g.acc.round(5).tolist(),
                      measured=None if measured is None else measured.round(5).tolist(),
                      kbps_grad=g.kbps.round(2).tolist())  # fmt: skip

    @staticmethod
    def _acc_grad(
        up: Uplink, space: KnobSpace, interval: Interval, knobs: EncoderKnobs, base: float
    ) -> tuple[np.ndarray, int]:
        """AccGrad by its definition (seed 000 eq. 2): each knob a level up on its own (down
        at its top level), the interval's segment uploaded and labelled, the change of its
        accuracy from ``base`` (the segment's at ``knobs``); and the teacher maps it took."""
        u = space.vector(knobs)
        steps, out, maps = space.steps, np.zeros(space.size), 0
        for i in range(space.size):
            moved = neighbour(u, [i], steps)  # as the device's InputGrad moves it
            if moved[i] == u[i]:
                continue  # a knob of one level
            got = up.upload(interval.frames, space.knobs(moved))
            maps += len(interval.frames)
            out[i] = (up.accuracy(got.labels, interval.reference) - base) / (moved[i] - u[i])
        return out, maps


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
        frames = sum(r.frames for r in self.records)
        seconds = frames / up.settings.sampling_fps
        cosines = [r.cosine for r in self.records if r.cosine is not None]
        maps = sum(r.teacher_maps for r in self.records)
        backward = sum(r.backward for r in self.records)
        forward = sum(r.forward_only for r in self.records)
        extra = ((maps - frames) * up.mean_seconds("teacher")
                 + backward * up.mean_seconds("backward")
                 + forward * up.mean_seconds("forward"))  # fmt: skip
        return {
            "uplink_kbps": sum(r.bytes for r in self.records) * 8 / seconds / 1000,
            "accuracy": float(np.mean([r.accuracy for r in self.records])),
            "teacher_maps": maps,
            "backward_passes": backward,
            "forward_only_passes": forward,
            # beyond labelling its uploads, at the measured mean cost of a map / a pass
            "extra_compute_s": extra,
            "labelling_s": frames * up.mean_seconds("teacher"),
            "gradient_kbps": sum(r.gradient_bytes for r in self.records) * 8 / seconds / 1000,
            "cosine_mean": float(np.mean(cosines)) if cosines else None,
            "cosines": cosines,
            "sign_agreement": _sign_agreement(self.records),
            "quality_correlation": _quality_correlation(self.records),
        }


def _sign_agreement(records: list[Record]) -> float | None:
    """The share of measured knobs whose OutputGrad has AccGrad's sign (for one knob, the
    cosine is ±1 and says just this)."""
    pairs = [(a, m) for r in records if r.measured is not None
             for a, m in zip(r.acc_grad or [], r.measured, strict=True) if m != 0.0]  # fmt: skip
    return float(np.mean([np.sign(a) == np.sign(m) for a, m in pairs])) if pairs else None


def _quality_correlation(records: list[Record]) -> float | None:
    """Over the measured intervals, the correlation of OutputGrad with AccGrad for the quality
    knob: whether the estimate tells a steep interval from a flat one."""
    pairs = np.array([(r.acc_grad[0], r.measured[0]) for r in records
                      if r.measured is not None and r.acc_grad])  # fmt: skip
    if len(pairs) < 3 or np.ptp(pairs, axis=0).min() == 0:
        return None
    return float(np.corrcoef(pairs.T)[0, 1])


def comparisons(summaries: dict[str, dict], within: float = 0.01) -> list[dict[str, object]]:
    """Each OneAdapt run against the fixed configuration and each AWStream run: whether its
    accuracy is at least theirs less ``within`` (the issue's "equal accuracy": a run that is
    more accurate is not worse for it), its uplink saving and its share of their extra
    compute."""
    out = []
    for name, mine in summaries.items():
        if not name.startswith("oneadapt"):
            continue
        for other, theirs in summaries.items():
            if other != "fixed" and not other.startswith("awstream"):
                continue
            out.append({
                "oneadapt": name, "against": other,
                "equal_accuracy": mine["accuracy"] >= theirs["accuracy"] - within,
                "accuracy_points": 100 * (mine["accuracy"] - theirs["accuracy"]),
                "uplink_saving": 1 - mine["uplink_kbps"] / theirs["uplink_kbps"],
                "compute_share": mine["extra_compute_s"] / theirs["extra_compute_s"]
                if theirs["extra_compute_s"] > 0 else None,
            })  # fmt: skip
    return out


def run_uplink(up: Uplink, videos: Sequence[Path], schemes: Sequence[str]) -> dict[str, Run]:
    """Every scheme over every video's intervals (a sweep point is a run of its own)."""
    knobs = up.settings.knobs
    makers = {
        "fixed": lambda: {"fixed": Fixed(up.settings.fixed_kbps)},
        "sweep": lambda: {f"sweep_{k:g}": Fixed(k) for k in up.settings.sweep_kbps},
        "awstream": lambda: {
            f"awstream_{lam:g}": AwStream(lam) for lam in up.settings.awstream_lams
        },
        "oneadapt": lambda: {
            f"oneadapt_{lam:g}": OneAdapt(knobs.model_copy(update={"lam": lam}))
            for lam in up.settings.oneadapt_lams
        },
    }
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
    compared = comparisons(summaries)
    records = {name: [r.__dict__ for r in run.records] for name, run in runs.items()}
    result = {**meta, "settings": up.settings.model_dump(mode="json"), "schemes": summaries,
              "comparisons": compared, "costs_s": up.costs, "timings_s": up.timings,
              "seconds": up.seconds,
              "counts": up.counts,
              "records": records}  # fmt: skip
    (out / "uplink.json").write_text(json.dumps(result, indent=1, default=str))
    (out / "uplink.md").write_text(_markdown(summaries, compared))
    _plot(out / "uplink.png", runs, summaries)
    return result


def _markdown(summaries: dict[str, dict], compared: list[dict[str, object]]) -> str:
    lines = [
        "| scheme | uplink (Kbps) | label accuracy (%) | extra compute (s) | teacher maps | "
        "backward / forward only | DNNGrad (Kbps) | cos(OutputGrad, AccGrad) | same sign | "
        "quality: correlation |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in summaries.items():
        cosine = "" if s["cosine_mean"] is None else f"{s['cosine_mean']:.2f}"
        sign = "" if s["sign_agreement"] is None else f"{100 * s['sign_agreement']:.0f} %"
        corr = "" if s["quality_correlation"] is None else f"{s['quality_correlation']:.2f}"
        lines.append(
            f"| {name} | {s['uplink_kbps']:.1f} | {100 * s['accuracy']:.2f} | "
            f"{s['extra_compute_s']:.1f} | {s['teacher_maps']} | "
            f"{s['backward_passes']} / {s['forward_only_passes']} | {s['gradient_kbps']:.2f} | "
            f"{cosine} | {sign} | {corr} |"
        )
    lines += ["", "| OneAdapt | against | accuracy (points) | as accurate (within 1) "
              "| uplink saving | share of its extra compute |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for c in compared:
        share = "" if c["compute_share"] is None else f"{c['compute_share']:.2f}"
        lines.append(f"| {c['oneadapt']} | {c['against']} | {c['accuracy_points']:+.2f} | "
                     f"{'yes' if c['equal_accuracy'] else 'no'} | "
                     f"{100 * c['uplink_saving']:.1f} % | {share} |")  # fmt: skip
    return "\n".join(lines) + "\n"


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
