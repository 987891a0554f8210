"""A fleet on one trainer (seed 003 §6.5, issue 14): several devices, each replaying its own
rotation of the same videos (recurring scenes: ``stream.rotation``, device d starting at video
d), their sessions sharing one trainer whose training time is budgeted.

Every device is AMS's own (``SessionScheme``: sampler, H.264 segments, a real ``Session``, the
patched TFLite file); what the fleet adds is the trainer between them. Segments are labelled
when they arrive; a phase waits until the trainer is free and its turn comes, round-robin or
by Algorithm 4's marginal gain (``recl.scheduler``), and holds the trainer for
``iterations × step_s / budget`` seconds of stream time, ``budget`` being the training seconds
the trainer has per second. A phase's cost is a fixed figure per step, not the measured one,
so that runs compare on the same budget whatever the machine's load. A device whose phase has
not come by its next interval trains once on everything it then holds.

Schemes: ``no_custom`` (the pretrained student throughout), ``ams`` (round-robin, the rebase
rule), ``ams_zoo`` (the same, with RECL's shared zoo and safety check), ``recl`` (the zoo and
the marginal-gain scheduler), ``ideal_reuse`` (RECL whose safety check sees every expert of
the zoo and takes the best at no margin: no gating error; its upper bound). No scheme is
charged for its safety checks: they are forward passes (seed 003 §6.3.2 ignores them too).
"""

from __future__ import annotations

import heapq
import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from cloud_trainer.evaluation.config import AmsSettings, EvalConfig
from cloud_trainer.evaluation.record import SchemeRun
from cloud_trainer.evaluation.schemes.base import Context
from cloud_trainer.evaluation.schemes.session_driven import SessionScheme
from cloud_trainer.evaluation.scoring import iou_counts, miou_from_counts
from cloud_trainer.evaluation.stream import ReplayStream, StreamFrame, rotation
from cloud_trainer.recl.reuse import ModelReuse
from cloud_trainer.recl.scheduler import MarginalGain

if TYPE_CHECKING:
    from cloud_trainer.evaluation.runner import Evaluation

ACCURACY_BAND = 0.01  # time to accuracy: within 1 point of the scene's steady level
_SMOOTH_S = 2.0  # the per-frame mIoU is averaged over this much stream time first


class FleetSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    devices: int = Field(4, ge=1, le=64)
    budget: float = Field(1.0, gt=0.0)  # training seconds the trainer has per second
    step_s: float = Field(0.5, gt=0.0)  # what one training step costs it (a phase: K of them)


def scheme_settings(ams: AmsSettings, name: str) -> AmsSettings:
    """The AMS settings fleet scheme ``name`` runs with: RECL's zoo for ``ams_zoo``, ``recl``
    and ``ideal_reuse``, Algorithm 4's scheduler for ``recl`` and ``ideal_reuse`` (round-robin
    for the others), every expert through a safety check at no margin for ``ideal_reuse``."""
    recl = ams.recl.model_copy(update={
        "enabled": name in ("ams_zoo", "recl", "ideal_reuse"),
        "scheduler": "marginal-gain" if name in ("recl", "ideal_reuse") else "round-robin",
    })  # fmt: skip
    if name == "ideal_reuse":
        recl = recl.model_copy(update={"top_k": recl.capacity, "margin": 0.0})
    return ams.model_copy(update={"recl": recl})


class FleetDevice(SessionScheme):
    """One device of the fleet: its segments are labelled as they come, its phases wait for
    the trainer (``train``)."""

    waiting_since: float | None = None  # when its phase became due, until the trainer takes it

    def _answer(self, end_s: float) -> None:
        self.handle(end_s, 0.0, self.work(until_phase=True))
        if not self.session.trains_next:  # a move at a scene cut drops the old scene's phase
            self.waiting_since = None
        elif self.waiting_since is None:
            self.waiting_since = end_s

    @property
    def switches(self) -> list[tuple[float, str]]:
        """When it was moved to another model, and where to: "base" or "zoo"."""
        extra = self.ctx.run.extra
        return sorted([(t, "base") for t in extra["rebased_at"]]
                      + [(t, "zoo") for t in extra["reused_at"]])  # fmt: skip

    def train(self, done_s: float) -> None:
        """The phase, its update leaving when the trainer is done with it at ``done_s``."""
        self.waiting_since = None
        self.handle(done_s, 0.0, self.work())


@dataclass
class FleetRun:
    name: str
    runs: list[SchemeRun]  # one per device
    training_s: list[float]  # training seconds the trainer gave each device
    phases: list[int]
    switches: list[list[tuple[float, str]]]  # per device: when it was moved to another model
    switch_bytes: list[int]  # per device: what the updates that moved it cost
    zoo: dict[str, float] = field(default_factory=dict)
    picks: dict[str, int] = field(default_factory=dict)  # Algorithm 4's, by why (scheduler.py)


class Fleet:
    def __init__(self, evaluation: Evaluation, videos: list[Path], settings: FleetSettings) -> None:
        """``evaluation``: the one whose models, caches and settings the fleet uses."""
        self.evaluation = evaluation
        self.config: EvalConfig = evaluation.config
        self.settings = settings
        stream = self.config.stream
        if stream.rotation_s is None:
            raise ValueError("a fleet replays rotations: set the stream's rotation_s")
        rotation_s, size = stream.rotation_s, evaluation.geometry.input_size
        self.streams = [
            ReplayStream(videos, size, eval_stride=stream.eval_stride,
                         parts=rotation(videos, rotation_s, stream.rounds, d))
            for d in range(settings.devices)
        ]  # fmt: skip

    def classes(self) -> tuple[int, ...]:
        """The scoring classes: every device replays the same segments, those of the
        evaluation's own stream (device 0's rotation), whose classes it knows."""
        return self.evaluation.stream_info().classes

    def run(self, name: str, workdir: Path) -> FleetRun:
        settings = scheme_settings(self.config.ams, name)
        with tempfile.TemporaryDirectory(prefix=f"fleet-{name}-", dir=workdir) as scratch:
            root = Path(scratch)
            reuse = None
            if settings.recl.enabled:
                reuse = ModelReuse(settings.recl, self.evaluation.initial, root / "_zoo",
                                   self.config.threads)  # fmt: skip
            devices = [self._device(d, settings, root, reuse) for d in range(len(self.streams))]
            try:
                result = self._replay(name, devices, settings)
                result.zoo = {} if reuse is None else reuse.metrics().model_dump()
            finally:
                for device in devices:
                    device.close()
                if reuse is not None:
                    reuse.close()
        return result

    # -- internals -----------------------------------------------------------------------------

    def _device(
        self, d: int, settings: AmsSettings, root: Path, reuse: ModelReuse | None
    ) -> FleetDevice:
        evaluation = self.evaluation
        run = SchemeRun(f"device-{d}", self.streams[d].signature())
        ctx = Context(self.config, evaluation.initial, evaluation.cached_teacher(),
                      evaluation.pretrained_labels, run, root / f"device-{d}",
                      self.streams[d])  # fmt: skip
        ctx.workdir.mkdir(parents=True)
        return FleetDevice(ctx, settings, device_id=f"cam-{d}", reuse=reuse)

    def _replay(self, name: str, devices: list[FleetDevice], settings: AmsSettings) -> FleetRun:
        classes = self.evaluation.geometry.num_classes
        phase_s = settings.training.iterations * self.settings.step_s
        trainer = _FleetTrainer(devices, settings, phase_s, self.settings.budget)
        for t, d, frame in _merged(self.streams):
            device = devices[d]
            if name != "no_custom":
                device.observe(frame)
                trainer.serve(t)
            device.device.advance_to(frame.t)
            if frame.evaluated:
                target = self.evaluation.teacher_labels(frame.rgb[None])[0]
                counts = iou_counts(device.labels(frame), target, classes)
                device.ctx.run.add_frame(frame.t, frame.video, counts)
        for device, stream in zip(devices, self.streams, strict=True):
            device.ctx.run.duration_s = stream.end_s
        training_s = [p * trainer.phase_s for p in trainer.phases]
        return FleetRun(name, [x.ctx.run for x in devices], training_s, trainer.phases,
                        [x.switches for x in devices],
                        [x.session.stats.switch_bytes for x in devices],
                        picks=dict(trainer.gains.picks) if trainer.marginal else {})  # fmt: skip


class _FleetTrainer:
    """The one trainer: a phase at a time, each holding it for ``phase_s / budget``."""

    def __init__(
        self, devices: list[FleetDevice], settings: AmsSettings, phase_s: float, budget: float
    ) -> None:
        self.devices = devices
        self.marginal = settings.recl.scheduler == "marginal-gain"
        self.gains = MarginalGain(settings.recl.max_wait)
        self.phase_s, self.budget = phase_s, budget
        self.phases = [0] * len(devices)
        self.free_at = 0.0

    def serve(self, t: float) -> None:
        """Every phase the trainer can start by ``t``, one after the other."""
        while self.free_at <= t:
            waiting = [i for i, x in enumerate(self.devices)
                       if x.waiting_since is not None and x.waiting_since <= t]  # fmt: skip
            if not waiting:
                return
            chosen = self._pick(waiting)
            device = self.devices[chosen]
            self.free_at = max(self.free_at, device.waiting_since or 0.0)
            self.free_at += self.phase_s / self.budget
            before = device.session.stats.phases
            device.train(self.free_at)
            self.phases[chosen] += device.session.stats.phases - before

    def _pick(self, waiting: list[int]) -> int:
        if self.marginal:
            # every phase costs the same fixed figure: runs compare whatever the machine's load
            return int(self.gains.pick({str(i): self.devices[i].session.phase_gain(self.phase_s)
                                        for i in waiting}))  # fmt: skip
        return min(waiting, key=lambda i: self.devices[i].waiting_since or 0.0)  # in turn: FIFO


def _merged(streams: list[ReplayStream]) -> Iterator[tuple[float, int, StreamFrame]]:
    """Every device's frames in the order of the stream time they come at."""

    def frames(d: int) -> Iterator[tuple[float, int, StreamFrame]]:
        return ((f.t, d, f) for f in streams[d])

    return heapq.merge(*(frames(d) for d in range(len(streams))), key=lambda x: (x[0], x[1]))


# -- what a run says ---------------------------------------------------------------------------


def steady_level(miou: np.ndarray) -> float:
    """A scene's steady mIoU: its mean over the scene's last third."""
    return float(np.mean(miou[len(miou) * 2 // 3 :]))


def time_to_accuracy(t: np.ndarray, miou: np.ndarray, level: float | None = None) -> float:
    """Seconds from a scene's first scored frame until its mIoU, averaged over the last
    ``_SMOOTH_S``, first comes within ``ACCURACY_BAND`` of ``level`` (by default the scene's
    own steady level); the scene's length where it never does."""
    if len(t) == 0:
        return float("nan")
    level = steady_level(miou) if level is None else level
    for i in range(len(t)):
        recent = miou[(t >= t[i] - _SMOOTH_S) & (t <= t[i])]
        if recent.mean() >= level - ACCURACY_BAND:
            return float(t[i] - t[0])
    return float(t[-1] - t[0])


@dataclass
class _Scenes:
    """One run's per-frame mIoU, cut into its devices' scenes (the parts of their rotations)."""

    t: list[np.ndarray]  # per device
    miou: list[np.ndarray]
    part: list[np.ndarray]

    @classmethod
    def of(cls, run: FleetRun, classes: tuple[int, ...]) -> _Scenes:
        return cls([np.asarray(d.frame_t) for d in run.runs],
                   [np.asarray(miou_from_counts(np.stack(d.frame_counts), classes))
                    for d in run.runs],
                   [np.asarray(d.frame_video) for d in run.runs])  # fmt: skip

    def scene(self, device: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        mask = self.part[device] == index
        return self.t[device][mask], self.miou[device][mask]

    def less(self, other: _Scenes) -> _Scenes:
        """Frame by frame, this run's mIoU less ``other``'s (the same frames: every scheme
        replays the same streams)."""
        return _Scenes(self.t, [a - b for a, b in zip(self.miou, other.miou, strict=True)],
                       self.part)  # fmt: skip


def summarise(
    runs: dict[str, FleetRun], streams: list[ReplayStream], classes: tuple[int, ...]
) -> dict[str, dict]:
    """Every run's figures. A scene's time to accuracy is measured against the best steady
    level any of the runs reached on it (the same reference for all), first visits of a video
    apart from returns to it. With ``no_custom`` among the runs, the time to gain too: the
    same on each frame's mIoU less No Customization's on that frame, so that what the frames
    hold (a person walking in) cancels out and what is left is the model's progress (No
    Customization itself never gains: its time is the scene's length, unless no run gains)."""
    scenes = {name: _Scenes.of(run, classes) for name, run in runs.items()}
    gains = {}
    if "no_custom" in scenes:
        nc = scenes["no_custom"]
        gains = {name: s.less(nc) for name, s in scenes.items()}
    references = [_references(scenes, streams), _references(gains, streams)]
    return {name: _summary(runs[name], scenes[name], gains.get(name), streams, references)
            for name in runs}  # fmt: skip


def _references(
    scenes: dict[str, _Scenes], streams: list[ReplayStream]
) -> dict[tuple[int, int], float]:
    """Per (device, scene): the best steady level any run reached there."""
    reference = {}
    for d, stream in enumerate(streams):
        for i in range(len(stream.parts)):
            levels = [steady_level(m) for _, m in (s.scene(d, i) for s in scenes.values())
                      if len(m)]  # fmt: skip
            if levels:
                reference[(d, i)] = max(levels)
    return reference


def _scene_times(
    scenes: _Scenes,
    gains: _Scenes | None,
    streams: list[ReplayStream],
    references: list[dict[tuple[int, int], float]],
) -> list[dict]:
    """Every scene: which device, which part of its rotation, which video, whether the device
    had seen that video before, its mean mIoU and time to accuracy and, beside No
    Customization, its mean gain over it and time to gain."""
    times = []
    for d, stream in enumerate(streams):
        seen: set[str] = set()
        for index, piece in enumerate(stream.parts):
            if (d, index) in references[0]:
                t, miou = scenes.scene(d, index)
                level = references[0][(d, index)]
                scene = {"device": d, "part": index, "video": piece.path.name,
                         "return": piece.path.name in seen, "miou": float(miou.mean()),
                         "to_accuracy_s": time_to_accuracy(t, miou, level)}  # fmt: skip
                if gains is not None:
                    t, gain = gains.scene(d, index)
                    scene["gain"] = float(gain.mean())
                    scene["to_gain_s"] = time_to_accuracy(t, gain, references[1][(d, index)])
                times.append(scene)
            seen.add(piece.path.name)
    return times


def _times(scenes: list[dict], key: str) -> dict[str, float | None]:
    """Mean ``key`` over the scenes a device visits first, and over returns."""
    first = [x[key] for x in scenes if not x["return"]]
    again = [x[key] for x in scenes if x["return"]]
    return {"first_s": float(np.nanmean(first)) if first else None,
            "return_s": float(np.nanmean(again)) if again else None}  # fmt: skip


def _summary(
    run: FleetRun,
    scenes: _Scenes,
    gains: _Scenes | None,
    streams: list[ReplayStream],
    references: list[dict[tuple[int, int], float]],
) -> dict:
    per_scene = _scene_times(scenes, gains, streams, references)
    accuracy = _times(per_scene, "to_accuracy_s")
    gain = {} if gains is None else _times(per_scene, "to_gain_s")
    down = sum(n for r in run.runs for _, n in r.downlink)
    duration = max(r.duration_s for r in run.runs)
    return {
        "miou": float(np.mean(np.concatenate(scenes.miou))),
        "per_device": [float(np.mean(s)) for s in scenes.miou],
        "time_to_accuracy_first_s": accuracy["first_s"],
        "time_to_accuracy_return_s": accuracy["return_s"],
        **{f"time_to_gain_{when}": v for when, v in gain.items()},
        "downlink_kbps": down * 8 / duration / 1000 / len(run.runs),  # per device
        "training_s": run.training_s,
        "phases": run.phases,
        "switches": [len(s) for s in run.switches],
        "switched_at": run.switches,  # per device: (stream time, "base" or "zoo")
        "scene_cuts": [r.extra.get("scene_cuts", 0) for r in run.runs],  # the devices' own
        "bytes_per_switch": sum(run.switch_bytes) / max(1, sum(len(s) for s in run.switches)),
        **({"zoo": run.zoo} if run.zoo else {}),
        **({"picks": run.picks} if run.picks else {}),
        "scenes": per_scene,
    }


def write_fleet_report(
    out: Path,
    summaries: dict[str, dict],
    meta: dict[str, object],
    runs: dict[str, FleetRun],
    streams: list[ReplayStream],
    classes: tuple[int, ...],
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "fleet.json").write_text(json.dumps({**meta, "schemes": summaries}, indent=1) + "\n")
    lines = [
        "| scheme | mIoU (%) | time to accuracy, first visit (s) | on a return (s) |"
        " time to gain, first visit (s) | on a return (s) |"
        " down (Kbps per device) | training s per device | phases | switches |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in summaries.items():

        def num(v: float | None) -> str:
            return "–" if v is None else f"{v:.1f}"

        times = [s.get(f"time_to_{what}_{when}_s") for what in ("accuracy", "gain")
                 for when in ("first", "return")]  # fmt: skip
        lines.append(
            f"| {name} | {100 * s['miou']:.2f} | {' | '.join(num(x) for x in times)}"
            f" | {s['downlink_kbps']:.1f}"
            f" | {', '.join(f'{x:.0f}' for x in s['training_s'])}"
            f" | {', '.join(str(p) for p in s['phases'])}"
            f" | {', '.join(str(n) for n in s['switches'])} |"
        )
    (out / "fleet.md").write_text("\n".join(lines) + "\n")
    plot_fleet(out / "fleet.png", runs, streams, classes)


def plot_fleet(
    path: Path, runs: dict[str, FleetRun], streams: list[ReplayStream], classes: tuple[int, ...]
) -> None:
    """mIoU over time, one panel per device: every scheme's, ``_SMOOTH_S`` means; dashed lines
    where the scene changes (named), marks where a scheme moved the device to another model
    (triangles down: to the base; up: to an expert of the zoo)."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never a display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(streams), 1, figsize=(12, 2.6 * len(streams)), sharex=True,
                             squeeze=False)  # fmt: skip
    scenes = {name: _Scenes.of(run, classes) for name, run in runs.items()}
    for d, (ax, stream) in enumerate(zip(axes[:, 0], streams, strict=True)):
        for c, (name, run) in enumerate(runs.items()):
            t, miou = scenes[name].t[d], scenes[name].miou[d]
            smooth = np.array([miou[(t >= x - _SMOOTH_S) & (t <= x)].mean() for x in t])
            ax.plot(t, 100 * smooth, lw=1.0, color=f"C{c}", label=name)
            for marker, kind in (("v", "base"), ("^", "zoo")):
                at = [x for x, k in run.switches[d] if k == kind]
                ax.plot(at, np.full(len(at), 2.0 + 4 * c), marker, ms=5, color=f"C{c}", ls="")
        start = 0.0
        for piece in stream.parts:
            ax.axvline(start, color="grey", ls="--", lw=0.7)
            ax.text(start + 0.5, 97, piece.path.stem[:10], fontsize=6, va="top", color="grey")
            start += piece.duration_s
        ax.set(ylabel=f"device {d}\nmIoU (%)", ylim=(0, 100))
    axes[0, 0].legend(loc="lower right", fontsize=7, ncol=len(runs))
    axes[-1, 0].set_xlabel("stream time (s)")
    fig.suptitle("A fleet on one trainer: mIoU over time; dashed: scene changes; triangles:"
                 " switches (down: to the base, up: to an expert)", fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
