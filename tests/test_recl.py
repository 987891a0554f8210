"""RECL's parts (seed 003 §6.3): the expert zoo, admission and pruning, the gating network, the
safety check and Algorithm 4's scheduler, on the real student and real frames."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
import torch

from cloud_trainer.ams.judging import FileJudge
from cloud_trainer.mirror import ModelMirror
from cloud_trainer.recl.admission import AdmissionQueue, Candidate, promising, to_prune
from cloud_trainer.recl.gating import FrameFeatures, GatingData, GatingNetwork, train_gating
from cloud_trainer.recl.scheduler import MarginalGain
from cloud_trainer.recl.selection import CURRENT, safety_check
from cloud_trainer.recl.zoo import MANIFEST, ExpertZoo
from cloud_trainer.sample_buffer import Sample
from cloud_trainer.student import import_tflite
from cloud_trainer.teacher import TeacherConfig, load_teacher
from edge_runtime.sources import open_source


@pytest.fixture(scope="module")
def base(shared_dir) -> bytes:
    return (shared_dir / "models/coral/deeplabv3_mnv2_dm05_pascal_quant.tflite").read_bytes()


def _expert(base: bytes, seed: int, scale: float = 2e-3) -> bytes:
    """The base with a few tensors moved: a file of the base's layout, as training makes."""
    student = import_tflite(base)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in list(student.parameters())[-4:]:
            p.add_(torch.randn(p.shape, generator=generator) * scale * p.abs().mean())
    return ModelMirror(base, device_id="x").candidate(student)


@pytest.fixture(scope="module")
def experts(base) -> list[bytes]:
    return [_expert(base, seed) for seed in range(4)]


# -- the zoo ---------------------------------------------------------------------------------


def test_experts_are_small_deltas_that_survive_a_restart(tmp_path, base, experts):
    zoo = ExpertZoo(tmp_path, base)
    a = zoo.add(experts[0], origin="cam-1", classes=[0, 15], accuracy=0.8)
    zoo.record_selection(a.id)
    assert zoo.find(experts[0]) == a.id and zoo.add(experts[0], origin="x", classes=[]) is a
    delta = (tmp_path / f"{a.id}.qdelta").stat().st_size
    assert delta < len(base) / 10  # a sparse delta from the base, not a copy of the model
    again = ExpertZoo(tmp_path, base)
    assert again.file(a.id) == experts[0] and again.refused == 0
    kept = again.get(a.id)
    assert (kept.origin, kept.classes, kept.picks, kept.extra) == (
        "cam-1",
        [0, 15],
        1,
        {"accuracy": 0.8},
    )
    assert again.selections == 1 and list(again.recent) == [a.id]


def test_the_zoo_is_bounded_and_evicts_the_least_picked(tmp_path, base, experts):
    zoo = ExpertZoo(tmp_path, base, capacity=2)
    a = zoo.add(experts[0], origin="cam-1", classes=[0])
    b = zoo.add(experts[1], origin="cam-2", classes=[0])
    zoo.record_selection(a.id)
    c = zoo.add(experts[2], origin="cam-1", classes=[0])
    assert [e.id for e in zoo.experts] == [a.id, c.id] and zoo.evicted == 1
    assert not (tmp_path / f"{b.id}.qdelta").exists()
    assert [e.id for e in ExpertZoo(tmp_path, base, capacity=2).experts] == [a.id, c.id]


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_a_damaged_expert_file_is_refused_and_the_zoo_works_on(tmp_path, base, experts, damage):
    zoo = ExpertZoo(tmp_path, base)
    good = zoo.add(experts[0], origin="cam-1", classes=[0])
    bad = zoo.add(experts[1], origin="cam-1", classes=[0])
    path = tmp_path / f"{bad.id}.qdelta"
    body = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(body[: len(body) // 2])
    elif damage == "flip":
        path.write_bytes(body[:-8] + bytes(b ^ 0x5A for b in body[-8:]))
    else:
        path.unlink()
    again = ExpertZoo(tmp_path, base)
    assert again.refused == 1 and [e.id for e in again.experts] == [good.id]
    assert again.file(good.id) == experts[0]
    assert again.add(experts[2], origin="cam-2", classes=[0]).id in again
    assert ExpertZoo(tmp_path, base).refused == 0  # the refusal was written down once


def _state(seed: int) -> bytes:
    generator = torch.Generator().manual_seed(seed)
    buffer = io.BytesIO()
    torch.save({"student": {"w": torch.randn(3, generator=generator)},
                "optimizer": {"step_count": seed}}, buffer)  # fmt: skip
    return buffer.getvalue()


@pytest.mark.parametrize("damage", ["none", "flip", "delete"])
def test_an_expert_keeps_its_training_state_and_a_damaged_one_is_refused_alone(
    tmp_path, base, experts, damage
):
    zoo = ExpertZoo(tmp_path, base)
    kept = zoo.add(experts[0], origin="cam-1", classes=[0], state=_state(7))
    bare = zoo.add(experts[1], origin="cam-1", classes=[0])
    assert zoo.state(bare.id) is None and zoo.state(kept.id)["optimizer"]["step_count"] == 7
    path = tmp_path / f"{kept.id}.state"
    if damage == "flip":
        body = path.read_bytes()
        path.write_bytes(body[:-8] + bytes(b ^ 0x5A for b in body[-8:]))
    elif damage == "delete":
        path.unlink()
    again = ExpertZoo(tmp_path, base)
    state = again.state(kept.id)
    if damage == "none":
        assert torch.equal(state["student"]["w"], torch.load(io.BytesIO(_state(7)))["student"]["w"])
        assert again.states_refused == 0
    else:  # the expert stays, used without its state; the refusal is written down once
        assert state is None and again.states_refused == 1 and again.file(kept.id) == experts[0]
        assert ExpertZoo(tmp_path, base).state(kept.id) is None
    zoo.remove([kept.id])
    assert not path.exists()


def test_a_model_trained_on_from_an_expert_takes_its_place_whole(tmp_path, base, experts):
    zoo = ExpertZoo(tmp_path, base)
    first = zoo.add(experts[0], origin="cam-1", classes=[0], state=_state(1))
    zoo.record_selection(first.id)
    refined = zoo.refine(first.id, experts[1], _state(2))
    assert (refined.id, refined.picks, refined.joined_at, refined.refined) == (first.id, 1, 0, 1)
    assert zoo.file(first.id) == experts[1] and zoo.find(experts[0]) is None
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != MANIFEST) == sorted(
        f"{refined.sha256[:16]}{suffix}" for suffix in (".qdelta", ".state")
    )  # the old ones went
    again = ExpertZoo(tmp_path, base)
    assert again.refused == again.states_refused == 0 and again.file(first.id) == experts[1]
    assert again.state(first.id)["optimizer"]["step_count"] == 2
    assert again.get(first.id).refined == 1
    # a power cut after the new files, before the manifest: the expert as it was, no strays
    (tmp_path / "0123456789abcdef.qdelta").write_bytes(b"half a refinement")
    (tmp_path / "0123456789abcdef.state").write_bytes(b"half a refinement")
    again = ExpertZoo(tmp_path, base)
    assert again.file(first.id) == experts[1] and again.refused == 0
    assert not list(tmp_path.glob("0123456789abcdef.*"))
    # the file it joined with is still that expert's: it cannot join again under its id
    assert again.add(experts[0], origin="cam-2", classes=[0]).sha256 == refined.sha256
    assert again.holds(experts[0]) == first.id and again.find(experts[0]) is None
    other = again.add(experts[2], origin="cam-2", classes=[0])
    assert again.refine(first.id, experts[2]).sha256 == refined.sha256  # another's file: no
    assert again.file(other.id) == experts[2] and len(again) == 2


def test_a_damaged_manifest_or_another_base_leaves_an_empty_zoo(
    tmp_path, base, experts, shared_dir
):
    ExpertZoo(tmp_path, base).add(experts[0], origin="cam-1", classes=[0])
    (tmp_path / MANIFEST).write_bytes(b"{not json")
    zoo = ExpertZoo(tmp_path, base)
    assert len(zoo) == 0 and zoo.refused == 1 and (tmp_path / (MANIFEST + ".damaged")).exists()
    kept = sorted(p.name for p in tmp_path.glob("*.qdelta.damaged"))  # set aside, not deleted
    assert len(kept) == 1 and kept == sorted(p.name for p in ExpertZoo(tmp_path, base)
                                             .directory.glob("*.qdelta.damaged"))  # fmt: skip
    zoo.add(experts[0], origin="cam-1", classes=[0])
    other = (shared_dir / "models/coral/deeplabv3_mnv2_pascal_quant.tflite").read_bytes()
    assert len(ExpertZoo(tmp_path, other)) == 0


def test_a_file_of_another_layout_is_not_admitted(tmp_path, base, shared_dir):
    other = (shared_dir / "models/coral/deeplabv3_mnv2_pascal_quant.tflite").read_bytes()
    with pytest.raises(ValueError):
        ExpertZoo(tmp_path, base).add(other, origin="cam-1", classes=[0])


# -- admission and pruning -------------------------------------------------------------------


def test_a_retrained_model_is_promising_only_above_every_other_candidate_by_alpha():
    assert promising(0.85, [0.80, 0.82], alpha=0.02)
    assert not promising(0.83, [0.80, 0.82], alpha=0.02)  # 1 point above the best: not enough
    assert promising(0.5, [], alpha=0.02)  # nothing to beat


def test_promising_models_join_together_once_the_queue_is_full():
    queue = AdmissionQueue(size=2)
    first, second = (Candidate(bytes([i]), "cam", (0,), 0.8) for i in range(2))
    assert queue.offer(first) == [] and queue.waiting == [first]
    assert queue.offer(second) == [first, second] and queue.waiting == []


def test_experts_picked_fewer_than_eta_times_in_the_last_q_selections_leave(
    tmp_path, base, experts
):
    zoo = ExpertZoo(tmp_path, base, window=4)
    a = zoo.add(experts[0], origin="cam-1", classes=[0])
    b = zoo.add(experts[1], origin="cam-1", classes=[0])
    for _ in range(3):
        zoo.record_selection(a.id)
    assert to_prune(zoo, eta=1) == []  # fewer than q selections yet
    c = zoo.add(experts[2], origin="cam-2", classes=[0])  # joins now: spared for q selections
    zoo.record_selection(None)
    assert to_prune(zoo, eta=1) == [b.id]
    assert to_prune(zoo, eta=4) == [a.id, b.id]  # a: 3 picks of 4
    zoo.remove([b.id])
    assert b.id not in ExpertZoo(tmp_path, base, window=4) and c.id in zoo


# -- the gating network ----------------------------------------------------------------------


def test_a_new_expert_gets_a_unit_from_its_peers_and_the_others_keep_theirs():
    net = GatingNetwork(feature_dim=8, hidden=16)
    net.add("a")
    net.add("b")
    with torch.no_grad():
        net.weight.copy_(torch.stack([torch.full((16,), 1.0), torch.full((16,), 3.0)]))
    before = net.weight.detach().clone()
    net.add("c")
    assert net.experts == ["a", "b", "c"] and torch.equal(net.weight[:2], before)
    deviation = net.weight[2].detach() - 2.0  # drawn around the peers' mean 2, spread 1
    assert 0 < deviation.abs().max() <= 4.0 and abs(float(deviation.mean())) < 1.0
    net.remove("a")
    assert net.experts == ["b", "c"] and torch.equal(net.weight[0], before[1])


def test_the_gating_network_learns_which_expert_fits_which_frames():
    rng = np.random.default_rng(0)
    data = GatingData(capacity=64)
    for i in range(64):  # two kinds of frames; expert "x" does well on the first, "y" on the other
        kind = i % 2
        features = rng.normal(size=8).astype(np.float32) + 3.0 * kind
        data.add(features, {"x": 0.9 - 0.4 * kind, "y": 0.5 + 0.4 * kind})
    net = GatingNetwork(feature_dim=8)
    net.add("x")
    net.add("y")
    train_gating(net, data, steps=300)
    first = rng.normal(size=(4, 8)).astype(np.float32)
    assert net.top_k(first, 1) == ["x"] and net.top_k(first + 3.0, 1) == ["y"]
    predicted = net.predict(first)
    assert abs(predicted["x"] - 0.9) < 0.1 and abs(predicted["y"] - 0.5) < 0.1


def test_gating_data_stays_bounded_and_learns_a_new_experts_accuracy():
    data = GatingData(capacity=3)
    for i in range(5):
        data.add(np.full(2, i, np.float32), {"x": 0.5})
    assert len(data) == 3
    data.measure("z", [0.1, 0.2, 0.3])
    x, y, known = data.tensors(["x", "z"])
    assert (
        x.shape == (3, 2) and known.all() and torch.allclose(y[:, 1], torch.tensor([0.1, 0.2, 0.3]))
    )
    data.forget("x")
    assert not data.tensors(["x", "z"])[2][:, 0].any()


@pytest.fixture(scope="module")
def frames(shared_dir) -> list[np.ndarray]:
    with open_source(str(shared_dir / "videos/vtest.avi")) as source:
        picked = [f for i, f in zip(range(200), source, strict=False) if i % 50 == 0]
    return [f.rgb(513, 513) for f in picked]


def test_frame_features_are_the_students_view_of_the_frame(base, frames):
    features = FrameFeatures(base)
    out = features(np.stack(frames[:2]))
    assert out.shape == (2, features.dim) and features.dim == 21 + 160
    assert np.allclose(out[:, :21].sum(1), 1.0, atol=1e-4)  # mean class probabilities
    assert not np.allclose(out[0], out[1])


# -- the safety check ------------------------------------------------------------------------


def test_the_safety_check_picks_the_candidate_that_labels_the_frames_best(base, frames, shared_dir):
    teacher = load_teacher(TeacherConfig(
        kind="litert", model=shared_dir / "models/coral/deeplabv3_mnv2_pascal_quant.tflite"
    ))  # fmt: skip
    samples = [Sample(float(i), f, teacher.label(f[None])[0].astype(np.uint8))
               for i, f in enumerate(frames)]  # fmt: skip
    wrecked = _expert(base, seed=9, scale=2.0)
    judge = FileJudge(threads=2)
    candidates = {CURRENT: wrecked, "zoo:base": base, "wrecked2": wrecked}
    scores = {name: judge.score(data, samples, range(21)) for name, data in candidates.items()}
    verdict = safety_check(scores, 0.01)
    assert verdict.best == "zoo:base" and verdict.switch and verdict.gain > 0.01
    assert verdict.scores["zoo:base"] == max(verdict.scores.values())
    # the device's own model wins a tie, and nothing is sent
    tie = judge.score(base, samples, range(21))
    same = safety_check({"copy": tie, CURRENT: tie}, 0.0)
    assert same.best == CURRENT and not same.switch
    judge.close()


def test_a_retrained_model_the_device_does_not_run_is_a_candidate(tmp_path, base, frames):
    from cloud_trainer.recl.config import ReclConfig
    from cloud_trainer.recl.reuse import BASE, RETRAINED, ModelReuse

    retrained = _expert(base, seed=5, scale=0.5)  # the frames' labels are its own
    (tmp_path / "retrained.tflite").write_bytes(retrained)
    labeller = load_teacher(TeacherConfig(kind="litert", model=tmp_path / "retrained.tflite"))
    samples = [Sample(float(i), f, labeller.label(f[None])[0].astype(np.uint8))
               for i, f in enumerate(frames)]  # fmt: skip
    reuse = ModelReuse(ReclConfig(enabled=True), base, tmp_path / "zoo", threads=2)
    wrecked = _expert(base, seed=9, scale=2.0)
    choice = reuse.select("cam-1", wrecked, samples, range(21), retrained=retrained)
    assert choice is not None and choice.name == RETRAINED and choice.data == retrained
    assert choice.verdict.scores[RETRAINED] > choice.verdict.scores[BASE]
    without = reuse.select("cam-1", wrecked, samples, range(21))
    assert without is not None and without.name == BASE and RETRAINED not in without.verdict.scores
    reuse.close()


def _labelled_by(model: bytes, frames: list[np.ndarray], path) -> list[Sample]:
    """The frames labelled by ``model``: it is right on every pixel, any other model less so."""
    path.write_bytes(model)
    labeller = load_teacher(TeacherConfig(kind="litert", model=path))
    return [Sample(float(i), f, labeller.label(f[None])[0].astype(np.uint8))
            for i, f in enumerate(frames)]  # fmt: skip


def _moved_to_an_expert(tmp_path, base, frames, refine: bool):
    """A zoo whose one expert (``first``) cam-0's model founded on ``scene``, the frames it
    labels best by far, and cam-1, which ran a wrecked model, moved to on the same frames."""
    from cloud_trainer.recl.config import AdmissionConfig, ReclConfig
    from cloud_trainer.recl.reuse import ModelReuse

    first = _expert(base, seed=5, scale=0.5)
    config = ReclConfig(enabled=True, admission=AdmissionConfig(refine=refine))
    reuse = ModelReuse(config, base, tmp_path / "zoo", 2)
    scene = _labelled_by(first, frames, tmp_path / "a")
    assert reuse.select("cam-0", first, scene, [0, 15]) is None
    (expert,) = reuse.zoo.experts
    wrecked = _expert(base, seed=9, scale=2.0)
    choice = reuse.select("cam-1", wrecked, scene, [0, 15])
    assert choice is not None and choice.name == f"zoo:{expert.id}"
    return reuse, expert, first, scene, wrecked


@pytest.mark.parametrize("case", ["same scene", "rollback", "refined by another", "refine off"])
def test_a_devices_model_refines_the_expert_it_trained_on_from_unless_it_went_back(
    tmp_path, base, frames, case
):
    reuse, expert, first, _, _ = _moved_to_an_expert(tmp_path, base, frames, case != "refine off")
    # cam-1 trains on from the expert: its model now labels the newer frames best
    later = _expert(base, seed=6, scale=0.5)
    newer = _labelled_by(later, frames, tmp_path / "b")
    if case == "rollback":
        reuse.forget("cam-1")
    other = _expert(base, seed=7, scale=0.5)
    if case == "refined by another":  # cam-1's model is a fork of the expert's old file
        reuse.zoo.refine(expert.id, other)
    assert reuse.select("cam-1", later, newer, [0, 15]) is None
    if case != "same scene":  # a model of its own, which joins by α (as all do, off)
        assert reuse.stats.refined == 0 and len(reuse.zoo) == 2
        assert reuse.zoo.file(expert.id) == (other if case == "refined by another" else first)
    else:
        assert reuse.stats.refined == 1 and len(reuse.zoo) == 1 and reuse.stats.admitted == 1
        assert reuse.zoo.file(expert.id) == later
        measured = [row[expert.id] for row in reuse._data.accuracy]  # measured again, all frames
        judge = reuse._judge
        assert measured == [judge.per_sample(later, [s], c)[0] for s, c in reuse._data.frames]
    reuse.close()


@pytest.mark.parametrize("case", ["its scene", "another scene first", "fails its test",
                                  "expert refined since", "refine off"])  # fmt: skip
def test_a_model_held_at_a_cut_refines_its_expert_on_a_later_check_of_the_experts_scene(
    tmp_path, base, frames, case
):
    reuse, expert, first, scene, wrecked = _moved_to_an_expert(
        tmp_path, base, frames, case != "refine off"
    )
    # cam-1 trained on from the expert until a scene cut: its model is held, with its state
    later = _expert(base, seed=6, scale=0.5)
    reuse.hold("cam-1", later, lambda: _state(3))
    assert reuse.zoo.file(expert.id) == first and reuse.stats.refined == 0
    other = _expert(base, seed=7, scale=0.5)
    if case == "expert refined since":
        reuse.zoo.refine(expert.id, other)
    if case == "another scene first":  # the base's own labels: not the expert's scene, it waits
        reuse.select("cam-2", wrecked, _labelled_by(base, frames, tmp_path / "c"), [0, 15])
        assert reuse.zoo.file(expert.id) == first
    if case == "fails its test":  # judged on frames the expert labels best: dropped
        reuse.select("cam-2", wrecked, scene, [0, 15])
        assert reuse.zoo.file(expert.id) == first
    # a later check, of another device, on frames the held model labels best
    choice = reuse.select("cam-2", wrecked, _labelled_by(later, frames, tmp_path / "b"), [0, 15])
    assert not any("heir" in n for n in choice.verdict.scores)  # judged, not a candidate
    if case in ("its scene", "another scene first"):
        assert reuse.stats.refined == 1 and reuse.zoo.file(expert.id) == later
        assert choice.name == f"zoo:{expert.id}" and choice.data == later
        assert reuse.zoo.state(expert.id) is not None  # the held model's own state
        assert choice.verdict.scores[choice.name] > choice.verdict.scores["base"]
    else:
        assert reuse.stats.refined == 0
        kept = other if case == "expert refined since" else first
        assert reuse.zoo.file(expert.id) == kept
    reuse.close()


def test_a_scene_cut_ends_the_devices_lineage(tmp_path, base, frames):
    reuse, expert, first, _, _ = _moved_to_an_expert(tmp_path, base, frames, True)
    # cam-1's model at its cut is poor (it never takes the expert's place), and after the cut
    # cam-1 trains a model of the new scene: it descends from the expert no more
    reuse.hold("cam-1", _expert(base, seed=10, scale=2.0))
    own = _expert(base, seed=8, scale=0.5)
    assert reuse.select("cam-1", own, _labelled_by(own, frames, tmp_path / "c"), [0, 15]) is None
    assert reuse.zoo.file(expert.id) == first and reuse.stats.refined == 0
    assert reuse.zoo.holds(own)  # it joined by α instead
    reuse.close()


def test_a_devices_model_at_least_as_good_as_its_siblings_heir_refines_the_expert_instead(
    tmp_path, base, frames
):
    reuse, expert, _, scene, wrecked = _moved_to_an_expert(tmp_path, base, frames, True)
    # cam-2 moves to the expert too, and is cut with a model held as its heir; cam-1's model,
    # trained on from the same file, labels the next frames best
    assert reuse.select("cam-2", wrecked, scene, [0, 15]).name == f"zoo:{expert.id}"
    reuse.hold("cam-2", _expert(base, seed=11, scale=0.5))
    sibling = _expert(base, seed=6, scale=0.5)
    reuse.select("cam-1", sibling, _labelled_by(sibling, frames, tmp_path / "d"), [0, 15])
    assert reuse.zoo.file(expert.id) == sibling and reuse.stats.refined == 1
    assert "cam-2" not in reuse._lineage and not reuse._heirs  # judged, and dropped
    reuse.close()


def test_a_heir_leaves_the_zoo_with_its_expert(tmp_path, base, frames):
    from cloud_trainer.recl.config import ReclConfig
    from cloud_trainer.recl.reuse import ModelReuse

    first = _expert(base, seed=5, scale=0.5)
    reuse = ModelReuse(ReclConfig(enabled=True, capacity=1), base, tmp_path / "zoo", 2)
    scene = _labelled_by(first, frames, tmp_path / "a")
    reuse.select("cam-0", first, scene, [0, 15])
    (expert,) = reuse.zoo.experts
    assert reuse.select("cam-1", _expert(base, seed=9, scale=2.0), scene, [0, 15]) is not None
    reuse.hold("cam-1", _expert(base, seed=6, scale=0.5), lambda: _state(3))
    assert expert.id in reuse._heirs
    own = _expert(base, seed=8, scale=0.5)  # cam-2's model joins by α: the zoo's one place
    reuse.select("cam-2", own, _labelled_by(own, frames, tmp_path / "c"), [0, 15])
    assert reuse.zoo.holds(own) and expert.id not in reuse.zoo and not reuse._heirs
    reuse.close()


def test_an_evicted_expert_leaves_the_gating_network_too(tmp_path, base, frames):
    from cloud_trainer.recl.config import ReclConfig
    from cloud_trainer.recl.reuse import ModelReuse

    first, later = _expert(base, seed=5, scale=0.5), _expert(base, seed=6, scale=0.5)
    reuse = ModelReuse(ReclConfig(enabled=True, capacity=1), base, tmp_path / "zoo", 2)
    reuse.select("cam-0", first, _labelled_by(first, frames, tmp_path / "a"), [0, 15])
    newer = _labelled_by(later, frames, tmp_path / "b")
    reuse.select("cam-1", later, newer, [0, 15])
    (expert,) = reuse.zoo.experts
    assert reuse.zoo.file(expert.id) == later and reuse.gating.experts == [expert.id]
    assert all(set(row) <= {expert.id} for row in reuse._data.accuracy)
    wrecked = _expert(base, seed=9, scale=2.0)
    assert reuse.select("cam-2", wrecked, newer, [0, 15]).name == f"zoo:{expert.id}"
    reuse.close()


# -- Algorithm 4 -----------------------------------------------------------------------------


def test_the_scheduler_measures_each_session_then_trains_the_fastest_learner():
    scheduler = MarginalGain(max_wait=100)
    gains: dict[str, float | None] = {"a": None, "b": None, "c": None}
    for session, gain in (("a", 0.01), ("b", 0.05), ("c", 0.02)):
        assert scheduler.pick(gains) == session  # lines 10-12: one micro-window each first
        gains[session] = gain
    assert scheduler.pick(gains) == "b"
    gains["b"] = 0.001  # b's curve flattened: the next best goes
    assert scheduler.pick(gains) == "c"
    assert scheduler.picks == {"unmeasured": 3, "gain": 2}


def test_a_new_request_is_measured_again_before_it_competes():
    """A session whose curve had flattened cuts to a new scene: its old gain said nothing of
    the new scene's (its session has none for it), so it gets the next micro-window, then
    competes on what it measured."""
    scheduler = MarginalGain(max_wait=100)
    assert scheduler.pick({"a": 0.05, "b": 0.001}) == "a"
    assert scheduler.pick({"a": 0.05, "b": None}) == "b"  # b's new scene, unmeasured
    assert scheduler.pick({"a": 0.05, "b": 0.08}) == "b"  # the new scene's curve is steep


def test_new_requests_are_measured_in_turn():
    """Where scenes change faster than the trainer comes round, most picks are of unmeasured
    requests: the one passed over longest goes, not the first listed."""
    scheduler = MarginalGain(max_wait=100)
    picks = [scheduler.pick({"a": None, "b": None, "c": None}) for _ in range(6)]
    assert picks == ["a", "b", "c", "a", "b", "c"]


def test_no_session_starves():
    scheduler = MarginalGain(max_wait=3)
    picks = [scheduler.pick({"fast": 0.1, "slow": 0.0}) for _ in range(8)]
    assert picks.count("slow") == 2 and "slow" in picks[:4]
    # nor where the fast one makes a new request every time (a device that keeps moving)
    picks = [scheduler.pick({"fast": None, "slow": 0.0}) for _ in range(8)]
    assert picks.count("slow") == 2 and "slow" in picks[:4]
    assert scheduler.picks == {"gain": 6, "starving": 4, "unmeasured": 6}
    with pytest.raises(ValueError):
        scheduler.pick({})


# -- sessions sharing one zoo ----------------------------------------------------------------


def _reuse_config(tmp_path):
    from cloud_trainer.config import TrainerConfig
    from tests.trainer_helpers import trainer_raw

    raw = trainer_raw(tmp_path, iterations=10, lr=1e-4, batch_size=2)
    # any model no worse than the others joins; any strictly better one is taken
    raw["recl"] = {"enabled": True, "margin": 0.0, "top_k": 2, "samples": 3,
                   "admission": {"alpha": 0.0}}  # fmt: skip
    return TrainerConfig.model_validate(raw)


def _deliver(session, segment, seq: int) -> None:
    from shared_schema.envelope import decode, encode

    msg, h264 = segment
    env = encode(msg, device_id=session.device_id, seq=1000 + seq, boot="3" * 16, body=h264)
    session.deliver(decode(env))


def _phases(session, segments):
    from shared_schema.messages import Update

    updates = []
    for i, segment in enumerate(segments):
        _deliver(session, segment, i)
        while session.has_work:
            updates += [o for o in session.step() if isinstance(o.msg, Update)]
    return updates


def test_a_second_device_trains_on_from_an_expert_the_first_one_trained(tmp_path, shared_dir):
    from cloud_trainer.recl.reuse import ModelReuse
    from cloud_trainer.session import Session
    from tests.trainer_helpers import vtest_segments

    config = _reuse_config(tmp_path)
    initial = config.student.model.read_bytes()
    teacher = load_teacher(config.teacher)
    reuse = ModelReuse(config.recl, initial, config.zoo_directory, threads=2)
    segments = vtest_segments(shared_dir)

    def session(name):
        return Session(name, config, teacher, initial, directory=tmp_path / name, reuse=reuse)

    first = session("cam-a")
    _phases(first, segments[:3])
    assert reuse.stats.admitted >= 1 and len(reuse.zoo) >= 1
    expert = reuse.zoo.experts[0]
    assert expert.origin == "cam-a" and 15 in expert.classes  # it saw people
    second = session("cam-b")
    adopted = []  # (the optimizer's phase count after a switch, the state's)
    train_from = second._train_from

    def recording(data, state=None):
        train_from(data, state)
        if state is not None:
            adopted.append((second.optimizer.phase, state["optimizer"]["phase"]))

    second._train_from = recording
    updates = _phases(second, segments[:2])
    assert second.stats.reuses >= 1 and reuse.stats.reused >= 1
    # the experts keep the first device's training state, and the second trains on from it
    assert all(reuse.zoo.state(e.id) is not None for e in reuse.zoo.experts)
    assert adopted and all(phase == kept for phase, kept in adopted)
    assert sum(e.picks for e in reuse.zoo.experts) >= 1
    assert updates and all(u.msg.format == "qdelta" for u in updates)
    # the switch is an ordinary update whose result is the very file of the expert picked,
    # a delta far smaller than the model
    picked = {hashlib.sha256(reuse.zoo.file(e.id)).hexdigest() for e in reuse.zoo.experts
              if e.picks}  # fmt: skip
    assert picked & {u.msg.result_sha256 for u in updates}
    assert 0 < second.stats.switch_bytes < len(initial) / 4
    figures = reuse.metrics().model_dump()
    assert figures["zoo_experts"] == len(reuse.zoo) and 0 < figures["reuse_rate"] <= 1
    # the zoo is on disk: a restarted trainer has the same experts
    again = ModelReuse(config.recl, initial, config.zoo_directory, threads=2)
    assert [e.id for e in again.zoo.experts] == [e.id for e in reuse.zoo.experts]
    assert again.gating.experts == [e.id for e in reuse.zoo.experts]
    reuse.close()
    again.close()


def test_recl_refuses_a_float16_student(tmp_path):
    from cloud_trainer.config import TrainerConfig
    from tests.trainer_helpers import trainer_raw

    raw = trainer_raw(tmp_path)
    raw["recl"] = {"enabled": True}
    raw["student"]["precision"] = "float16"
    with pytest.raises(ValueError, match=r"\[recl\] keeps int8 experts"):
        TrainerConfig.model_validate(raw)


def test_a_phase_is_judged_on_the_samples_that_come_after_it(tmp_path, shared_dir):
    """Algorithm 4's gain, on frames the phase never trained on (on its own training frames
    every phase gains); a scene cut makes it another request's, unmeasured."""
    from cloud_trainer.config import TrainerConfig
    from cloud_trainer.session import Session
    from tests.trainer_helpers import trainer_raw, vtest_segments

    raw = trainer_raw(tmp_path)
    raw["recl"] = {"scheduler": "marginal-gain"}
    config = TrainerConfig.model_validate(raw)
    initial = config.student.model.read_bytes()
    session = Session("cam-1", config, load_teacher(config.teacher), initial,
                      directory=tmp_path / "s")  # fmt: skip
    first, second, third = vtest_segments(shared_dir)[:3]
    assert _phases(session, [first]) and session.mirror.version == 1
    assert session.phase_gain() is None  # no frame since has judged it

    def labelled(segment, seq):  # its samples judged, the next phase not trained yet
        _deliver(session, segment, seq)
        for _ in range(10):
            session.step()
            if session.trains_next:
                return
        raise AssertionError("the segment made no phase due")

    labelled(second, 1)
    judged = session.buffer.newest(3)[-config.recl.samples :]  # the second segment's 3 frames
    before, after = (session.mirror.versions()[v] for v in (0, 1))
    classes = session.subset.classes
    gain = session._judge.score(after, judged, classes) - session._judge.score(
        before, judged, classes
    )
    assert gain != 0.0  # a measurement, not a default
    assert session.phase_gain(seconds=2.0) == pytest.approx(gain / 2.0)
    assert session.phase_gain() is not None
    session.step()  # the second phase, which the third segment's frames would judge, but
    msg, h264 = third  # they are another scene's
    _deliver(session, (msg.model_copy(update={"scene_cut": True}), h264), 2)
    for _ in range(10):
        if not session.has_work:
            break
        session.step()
    assert session.stats.scene_cuts == 1 and session.phase_gain() is None


def test_the_daemon_serves_device_work_first_then_the_fastest_learning_phase(tmp_path):
    from types import SimpleNamespace

    from cloud_trainer.config import TrainerConfig
    from cloud_trainer.daemon import TrainerDaemon
    from tests.trainer_helpers import trainer_raw

    raw = trainer_raw(tmp_path)
    raw["recl"] = {"scheduler": "marginal-gain"}
    daemon = TrainerDaemon(TrainerConfig.model_validate(raw))
    gains: dict[str, float | None] = {"a": None, "b": None, "busy": None}
    daemon.sessions = {d: SimpleNamespace(trains_next=d != "busy", phase_gain=lambda d=d: gains[d])
                       for d in gains}  # fmt: skip
    assert daemon._choose(["a", "b", "busy"]) == "busy"  # a segment or an ack waits there
    assert daemon._choose(["a", "b"]) == "a"  # no estimates yet: each in turn
    gains["a"] = 0.005
    assert daemon._choose(["a", "b"]) == "b"
    gains["b"] = 0.01
    assert daemon._choose(["a", "b"]) == "b"  # 0.01 mIoU per second against 0.005
    daemon.sessions = {}
    daemon.report()  # why it picked whom, exported
    picks = {m.name.removeprefix("amstream_trainer_scheduler_picks_"): m.samples[0].value
             for m in daemon.metrics.collect() if "scheduler_picks" in m.name}  # fmt: skip
    assert picks == {"starving": 0, "unmeasured": 2, "gain": 1}


def test_a_frame_judged_again_updates_its_row_instead_of_adding_one():
    data = GatingData(capacity=4)
    data.add(np.zeros(3), {"a": 0.5}, key=("cam-1", 1.0))
    data.add(np.zeros(3), {"b": 0.7}, key=("cam-1", 1.0))
    data.add(np.zeros(3), {"a": 0.2}, key=("cam-2", 1.0))  # another device's frame at 1 s
    assert len(data) == 2
    assert data.accuracy[0] == {"a": 0.5, "b": 0.7}
