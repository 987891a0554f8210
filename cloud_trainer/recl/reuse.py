"""Model reuse for every session of one trainer (seed 003 §6.3.1, §6.3.3): one zoo, one gating
network, one admission queue, shared by all devices.

Every update window, ``select`` runs the safety check on the samples labelled since the
session's last phase (which no candidate trained on): the device's model, the last one retrained
for it where a gated phase kept it from the device, the base student (the rebase rule, a zoo of
one, is this special case) and the gating network's top K experts. The best is returned when
it beats the device's model by the margin; the session then trains on from it (from its master
weights and optimizer moments, where the zoo keeps them) and its update takes the device there.
What the check measured teaches the gating network, and a device model that beats every other
candidate by α is promising: it waits in the admission queue, with the session's training
state, then joins the zoo. A device model trained on from an expert (since the device moved to
it, with no scene cut or rollback between, and no other device's refinement of that expert)
is first judged against that expert: where the expert is still the check's best and the model
beats it by ``admission.refine_by``, the model takes the expert's place, so that the training
devices spend on a scene accumulates in one expert (an addition to §6.3.3, whose experts stay
as they joined); otherwise it may still join as a new expert, by α. A visit's last phase is
followed by the next scene's cut, whose frames cannot judge it: the model is held as the
expert's heir (``hold``), and the next check with the expert among its candidates judges the
heir too, on that check's frames, which neither trained on; where the expert is that check's
best (and at least the base's) and the heir beats it by ``refine_by``, the heir takes its place
before the check decides, unless the checked device's own model, trained on from the same
file, labels the frames as well.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cloud_trainer.ams.judging import FileJudge
from cloud_trainer.recl.admission import (
    AdmissionQueue,
    Candidate,
    promising,
    to_prune,
)
from cloud_trainer.recl.config import ReclConfig
from cloud_trainer.recl.gating import FrameFeatures, GatingData, GatingNetwork, train_gating
from cloud_trainer.recl.selection import CURRENT, Verdict, safety_check
from cloud_trainer.recl.zoo import ExpertZoo
from cloud_trainer.sample_buffer import Sample
from shared_schema.messages import ZooMetrics

log = logging.getLogger(__name__)

BASE = "base"  # the candidate name of the pretrained student
RETRAINED = "retrained"  # the session's last retrained model, when the device does not run it
_ZOO = "zoo:"  # candidate names of experts: the prefix, then the expert's id
_HEIR = "heir:"  # candidate names of held heirs: the prefix, then their expert's id


@dataclass(frozen=True)
class Choice:
    """The model a session should train on from, and why."""

    data: bytes
    name: str  # BASE, or "zoo:" and the expert's id
    verdict: Verdict
    state: dict | None = None  # the expert's training state, if the zoo keeps it


def _best_expert(scores: Mapping[str, float]) -> str | None:
    """The candidate name of the best scoring expert of the zoo among ``scores`` (None: no
    expert was judged)."""
    experts = [name for name in scores if name.startswith(_ZOO)]
    return max(experts, key=scores.__getitem__, default=None)


@dataclass(frozen=True)
class Heir:
    """A model trained on from an expert's file (``parent``, its sha256) until a scene cut,
    waiting for frames of the expert's scene to be judged on."""

    data: bytes
    parent: str
    state: bytes | None


@dataclass
class ReuseStats:
    selections: int = 0
    switches: int = 0  # selections that sent another model
    reused: int = 0  # of them, to an expert of the zoo
    gate_hits: int = 0  # the gating network's first pick was the check's best expert
    gated_checks: int = 0  # checks with at least one expert from the gating network
    admitted: int = 0
    pruned: int = 0
    refined: int = 0  # experts whose place a model trained on from them took


class ModelReuse:
    def __init__(self, config: ReclConfig, base: bytes, directory: Path, threads: int) -> None:
        self.config = config
        self._base = base
        self.zoo = ExpertZoo(directory, base, capacity=config.capacity,
                             window=config.admission.q)  # fmt: skip
        self._features = FrameFeatures(base)
        self.gating = GatingNetwork(self._features.dim)
        for expert in self.zoo.experts:
            self.gating.add(expert.id)
        # each frame kept with the classes it was judged over, for new experts to be measured on
        self._data = GatingData(config.gating_frames)
        self._queue = AdmissionQueue(config.admission.queue)
        # device: the expert its model was trained on from, and that expert's file then
        self._lineage: dict[str, tuple[str, str]] = {}
        self._heirs: dict[str, Heir] = {}  # expert: the newest model held at a cut (one each)
        self._judge = FileJudge(threads)
        self.stats = ReuseStats()

    def select(
        self,
        device_id: str,
        current: bytes,
        samples: Sequence[Sample],
        classes: Sequence[int],
        state: Callable[[], bytes | None] = lambda: None,
        retrained: bytes | None = None,
    ) -> Choice | None:
        """The model ``device_id`` should move to from ``current``, judged on ``samples``
        (the newest ``config.samples`` of them); None to train on from ``current``.
        ``state``: the session's training state under ``current``, asked for only when
        ``current`` is to join the zoo or refine an expert; ``retrained``: the session's last
        retrained model if the device does not run it (a gated phase's). At a scene cut,
        ``hold`` comes first."""
        judged = list(samples)[-self.config.samples :]
        features = self._features(np.stack([s.rgb for s in judged]))
        top = self.gating.top_k(features, self.config.top_k)
        own = self.zoo.find(current)  # the device runs an expert of the zoo, or not
        parent = self._parent(device_id, current, own)
        files = {CURRENT: current, BASE: self._base}
        if retrained is not None:
            files[RETRAINED] = retrained
        experts = [*top, parent] if parent is not None and parent not in top else top
        files.update({_ZOO + e: self.zoo.file(e) for e in experts})
        files.update({_HEIR + e: self._heirs[e].data for e in experts if self._heir(e)})
        per_frame = {name: self._judge.per_sample(data, judged, classes)
                     for name, data in files.items()}  # fmt: skip
        if self._succeed(files, per_frame, parent):  # an expert took its heir's file:
            own = self.zoo.find(current)  # the device may no longer run it,
            parent = self._parent(device_id, current, own)  # nor descend from its file
        verdict = safety_check({n: float(np.mean(v)) for n, v in per_frame.items()},
                               self.config.margin)  # fmt: skip
        self._learn(device_id, features, judged, classes, per_frame, own)
        self._count(verdict, top)
        if parent is not None and self._refines(parent, verdict):
            self._refine(device_id, parent, current, classes, verdict, state)
        elif not self.zoo.holds(current) and current != self._base:
            self._admit(device_id, current, classes, verdict, state)
        self._prune()
        self._follow(device_id, verdict)
        if not verdict.switch:
            return None
        expert = verdict.best.removeprefix(_ZOO) if verdict.best.startswith(_ZOO) else None
        kept = None if expert is None else self.zoo.state(expert)
        return Choice(files[verdict.best], verdict.best, verdict, kept)

    def metrics(self) -> ZooMetrics:
        """The zoo's figures: its size, the selections and how often they reused an expert,
        how often the gating network's first pick was the safety check's best expert."""
        stats = self.stats
        return ZooMetrics(
            zoo_experts=len(self.zoo),
            zoo_refused=self.zoo.refused,
            zoo_states_refused=self.zoo.states_refused,
            **asdict(stats),
            reuse_rate=stats.reused / stats.selections if stats.selections else 0.0,
            gate_hit_rate=stats.gate_hits / stats.gated_checks if stats.gated_checks else 0.0,
        )

    def close(self) -> None:
        self._judge.close()

    # -- the gating network and the zoo --------------------------------------------------------

    def forget(self, device_id: str) -> None:
        """The device's model no longer descends from the expert it moved to (a rollback)."""
        self._lineage.pop(device_id, None)

    def hold(
        self, device_id: str, current: bytes, state: Callable[[], bytes | None] = lambda: None
    ) -> None:
        """A scene cut: the device's model (with its training ``state``), where trained on
        from an expert, becomes that expert's heir, in place of an older one; the device's
        lineage ends, as the new scene is not the one the expert was chosen for."""
        parent = self._parent(device_id, current, self.zoo.find(current))
        self.forget(device_id)
        if parent is not None and self.config.admission.refine:
            self._heirs[parent] = Heir(current, self.zoo.get(parent).sha256, state())

    def _parent(self, device_id: str, current: bytes, own: str | None) -> str | None:
        """The expert the device's model was trained on from, on the same scene, where the
        expert is still the file it started from (no other device refined it since) and the
        device runs a model of its own trained from it (not a file the zoo holds)."""
        if own is not None:
            self._lineage[device_id] = (own, self.zoo.get(own).sha256)
        expert, started = self._lineage.get(device_id, ("", ""))
        if current == self._base or self.zoo.holds(current) or expert not in self.zoo:
            return None
        return expert if self.zoo.get(expert).sha256 == started else None

    def _heir(self, expert_id: str) -> bool:
        """Whether the expert has a heir to judge: trained on from its file as it is now, and
        not a file the zoo holds (it joined since); a stale heir is dropped."""
        heir = self._heirs.get(expert_id)
        if heir is None:
            return False
        if heir.parent == self.zoo.get(expert_id).sha256 and not self.zoo.holds(heir.data):
            return True
        del self._heirs[expert_id]
        return False

    def _succeed(
        self, files: dict[str, bytes], per_frame: dict[str, list[float]], parent: str | None
    ) -> bool:
        """The judged heirs leave the candidates. On frames of its expert's scene (the expert
        is the check's best expert and labels them at least as well as the base), a heir that
        beats the expert by ``admission.refine_by`` takes its place, in the zoo and in the
        check (the device may move to it), and one that does not is dropped: it had its test;
        so is one that the checked device's model, trained on from the same expert
        (``parent``), labels the frames at least as well as (that model may refine it
        instead). A heir judged on another scene's frames waits on. Whether an expert was
        refined."""
        mean = {n: float(np.mean(v)) for n, v in per_frame.items()}
        best = _best_expert(mean)
        refined = False
        for name in [n for n in mean if n.startswith(_HEIR)]:
            expert, mine = name.removeprefix(_HEIR), per_frame.pop(name)
            files.pop(name)
            if best != _ZOO + expert or mean[best] < mean[BASE]:
                continue
            heir = self._heirs.pop(expert)
            if mean[name] < mean[best] + self.config.admission.refine_by or (
                expert == parent and mean[CURRENT] >= mean[name]
            ):
                continue
            self.zoo.refine(expert, heir.data, heir.state, accuracy=mean[name])
            files[best], per_frame[best] = heir.data, mine
            self._measure(expert, heir.data)
            train_gating(self.gating, self._data, self.config.gating_steps)
            self.stats.refined += 1
            refined = True
            log.info("expert %s refined by a heir (refined %d times)", expert,
                     self.zoo.get(expert).refined)  # fmt: skip
        return refined

    def _follow(self, device_id: str, verdict: Verdict) -> None:
        """The device's lineage after the check: a move to an expert or the base starts anew
        (a move to its own retrained model keeps it)."""
        if verdict.switch and verdict.best.startswith(_ZOO):
            expert = verdict.best.removeprefix(_ZOO)
            self._lineage[device_id] = (expert, self.zoo.get(expert).sha256)
        elif verdict.switch and verdict.best == BASE:
            self.forget(device_id)

    def _refines(self, parent: str, verdict: Verdict) -> bool:
        """Whether the device's model should take the place of ``parent``, the expert it was
        trained on from: the parent is the check's best expert and the model beats it by
        ``admission.refine_by``."""
        rule = self.config.admission
        best, scores = _best_expert(verdict.scores), verdict.scores
        return rule.refine and best == _ZOO + parent and (
            scores[CURRENT] >= scores[best] + rule.refine_by)  # fmt: skip

    def _refine(
        self,
        device_id: str,
        parent: str,
        current: bytes,
        classes: Sequence[int],
        verdict: Verdict,
        state: Callable[[], bytes | None],
    ) -> None:
        refined = self.zoo.refine(parent, current, state(), classes,
                                  accuracy=verdict.scores[CURRENT])  # fmt: skip
        self._heirs.pop(parent, None)  # trained on from the file it no longer is
        self._lineage[device_id] = (parent, refined.sha256)
        self._measure(parent, current)
        train_gating(self.gating, self._data, self.config.gating_steps)
        self.stats.refined += 1
        log.info("expert %s refined by %s's model (refined %d times)", parent, device_id,
                 self.zoo.get(parent).refined)  # fmt: skip

    def _measure(self, expert_id: str, data: bytes) -> None:
        """The expert's accuracy on every frame the gating network learns from."""
        self._data.measure(expert_id, [self._judge.per_sample(data, [s], c)[0]
                                       for s, c in self._data.frames])  # fmt: skip

    def _learn(
        self,
        device_id: str,
        features: np.ndarray,
        judged: Sequence[Sample],
        classes: Sequence[int],
        per_frame: dict[str, list[float]],
        own: str | None,
    ) -> None:
        """Every measured (frame, expert) accuracy joins the gating network's data (``own``:
        the expert the device runs, if it runs one)."""
        by_expert = {name.removeprefix(_ZOO): v for name, v in per_frame.items()
                     if name.startswith(_ZOO)}  # fmt: skip
        if own is not None:
            by_expert[own] = per_frame[CURRENT]
        for i, sample in enumerate(judged):
            self._data.add(
                features[i],
                {e: v[i] for e, v in by_expert.items()},
                (sample, classes),
                key=(device_id, sample.timestamp),
            )
        if by_expert:
            train_gating(self.gating, self._data, self.config.gating_steps)

    def _count(self, verdict: Verdict, top: list[str]) -> None:
        stats = self.stats
        stats.selections += 1
        picked = verdict.best.removeprefix(_ZOO) if verdict.best.startswith(_ZOO) else None
        self.zoo.record_selection(picked if verdict.switch else None)
        if verdict.switch:
            stats.switches += 1
            stats.reused += int(picked is not None)
        if top:
            stats.gated_checks += 1
            stats.gate_hits += int(_best_expert(verdict.scores) == _ZOO + top[0])

    def _admit(
        self,
        device_id: str,
        current: bytes,
        classes: Sequence[int],
        verdict: Verdict,
        state: Callable[[], bytes | None],
    ) -> None:
        """§6.3.3: the device's model (the last retrained, neither the base nor an expert)
        joins when it beats the rest by α."""
        others = [s for n, s in verdict.scores.items() if n != CURRENT]
        mine = verdict.scores[CURRENT]
        if not promising(mine, others, self.config.admission.alpha):
            return
        ready = self._queue.offer(Candidate(current, device_id, tuple(classes), mine, state()))
        for candidate in ready:
            if self.zoo.holds(candidate.data):  # it joined, or was refined into an expert, since
                continue
            expert = self.zoo.add(candidate.data, origin=candidate.origin,
                                  classes=candidate.classes, state=candidate.state,
                                  accuracy=candidate.score)  # fmt: skip
            self._forget_gone()  # an expert it evicted
            self.gating.add(expert.id)
            self._measure(expert.id, candidate.data)
            self.stats.admitted += 1
            log.info("expert %s from %s joined the zoo (mIoU %.3f; %d experts)", expert.id,
                     candidate.origin, candidate.score, len(self.zoo))  # fmt: skip
        if ready:
            train_gating(self.gating, self._data, self.config.gating_steps)

    def _prune(self) -> None:
        gone = to_prune(self.zoo, self.config.admission.eta)
        if not gone:
            return
        self.zoo.remove(gone)
        self._forget_gone()
        self.stats.pruned += len(gone)

    def _forget_gone(self) -> None:
        """The gating network's units and measures of experts that left the zoo."""
        for expert_id in [e for e in self.gating.experts if e not in self.zoo]:
            self.gating.remove(expert_id)
            self._data.forget(expert_id)
            self._heirs.pop(expert_id, None)
