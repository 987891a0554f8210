"""A trainer session on real segments (encoded by the device's own code) and the real models."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cloud_trainer.ams.training import train_phase
from cloud_trainer.config import TrainerConfig
from cloud_trainer.dashboard.actions import ActionRefused, Pause, Resume, Rollback, SamplingBounds
from cloud_trainer.dashboard.records import AckRecord, FrameView, Probe, UpdateRecord, UplinkRecord
from cloud_trainer.device_clock import RESTART_GAP_S, DeviceClock
from cloud_trainer.session import Session, open_inbox
from cloud_trainer.student import import_tflite
from cloud_trainer.teacher import load_teacher
from shared_schema.envelope import decode, encode, sha256_hex
from shared_schema.messages import (
    Ack,
    AckReason,
    Control,
    Hello,
    Model,
    Update,
    UpdateFormat,
)
from shared_schema.update_formats import apply_update
from tests.trainer_helpers import trainer_config, trainer_raw, vtest_segments

BOOT = "1" * 16


@pytest.fixture(scope="module")
def segments(shared_dir):
    return vtest_segments(shared_dir)


_seq = iter(range(10**6))


def envelope(msg, body=b"", device="cam-1"):
    return decode(encode(msg, device_id=device, seq=next(_seq), boot=BOOT, body=body))


def hello(sha, formats=(UpdateFormat.QDELTA,)):
    return envelope(
        Hello(
            profile="cpu",
            device_class="cpu",
            runtime_version="0",
            backend="litert",
            input_size=(513, 513),
            model_sha256=sha,
            update_formats=formats,
        )
    )


@pytest.fixture
def session(tmp_path):
    return _new_session(tmp_path, trainer_config(tmp_path))


def _new_session(tmp_path, config: TrainerConfig) -> Session:
    return Session(
        "cam-1",
        config,
        load_teacher(config.teacher),
        config.student.model.read_bytes(),
        directory=tmp_path / "ckpt" / "cam-1",
    )


def _restarted(session):
    """The same device's session in a new trainer process, on the same directory."""
    config = session.config
    return Session(
        session.device_id,
        config,
        load_teacher(config.teacher),
        config.student.model.read_bytes(),
        directory=session.directory,
    )


_sent_seqs: dict[int, int] = {}  # id(outgoing) -> the seq it was "sent" as


def _run(session, *envelopes):
    """Deliver, then step until idle; each message out is sent as the daemon does."""
    for env in envelopes:
        session.deliver(env)
    out = []
    while session.has_work:
        for outgoing in session.step():
            seq = next(_seq)
            session.sent(seq, outgoing)
            _sent_seqs[id(outgoing)] = seq
            out.append(outgoing)
    return out


def _run_acked(session, *envelopes):
    """``_run``, then the device's acceptance of every model and update sent."""
    out = _run(session, *envelopes)
    for sent in [o for o in out if isinstance(o.msg, Model | Update)]:
        _run(session, envelope(_ack_of(sent)))
    return out


def seq_of(outgoing) -> int:
    return _sent_seqs[id(outgoing)]


def _ack_of(outgoing, *, ok=True, **fields):
    """The device's ack of ``outgoing``: accepting it, by default."""
    msg = outgoing.msg
    version = msg.new_version if isinstance(msg, Update) else msg.version
    sha = msg.result_sha256 if isinstance(msg, Update) else sha256_hex(outgoing.body)
    values = {"model_version": version, "model_sha256": sha, **fields}
    return Ack(ref_type=msg.type, ref_seq=seq_of(outgoing), ok=ok, **values)


def test_a_session_keeps_the_inbox_it_is_given_even_empty(tmp_path, segments):
    """The daemon's inbox, though empty, is the session's: a second Spool opened on the same
    directory would clear the half-written entry of a segment being stored through the first
    (seen as a FileNotFoundError in the fault-injection run)."""
    config = trainer_config(tmp_path)
    directory = tmp_path / "ckpt" / "cam-1"
    inbox = open_inbox(directory, config)
    assert len(inbox) == 0
    half_written = directory / "inbox" / "0000000000000001.segment.env.tmp"
    half_written.write_bytes(b"partial")  # a put through the daemon's inbox, under way
    student = config.student.model.read_bytes()
    teacher = load_teacher(config.teacher)
    session = Session("cam-1", config, teacher, student, directory=directory, inbox=inbox)
    _run(session, envelope(*segments[0]))
    assert half_written.exists() and session.stats.segments == 1


def test_hello_from_a_device_running_the_student_sends_only_control(session):
    out = _run(session, hello(session.mirror.sha256))
    assert [type(o.msg) for o in out] == [Control]
    assert session.device.version == 0


def test_unknown_model_gets_the_full_student(session):
    out = _run(session, hello("9" * 64))
    assert isinstance(out[0].msg, Model) and out[0].body == session.mirror.data
    assert session.stats.full_models == 1


def test_segments_are_labelled_then_trained_on_then_sent_as_updates(session, segments):
    _run(session, hello(session.mirror.sha256))
    device_file = session.mirror.data
    for msg, h264 in segments[:2]:
        out = _run(session, envelope(msg, h264))
        updates = [o for o in out if isinstance(o.msg, Update)]
        assert len(updates) == 1
        device_file = apply_update(updates[0].msg.format, device_file, updates[0].body)
        assert sha256_hex(device_file) == updates[0].msg.result_sha256
    assert session.stats.segments == 2 and session.stats.phases == 2
    assert len(session.buffer) == 6 and 15 in session.subset.seen
    assert session.mirror.version == 2 and device_file == session.mirror.data


def test_rate_control_runs_every_interval_of_video_time(session, segments):
    _run(session, hello(session.mirror.sha256))
    observed, updates = [], []
    observe, update = session.asr.observe, session.asr.update
    session.asr.observe = lambda phi: (observed.append(phi), observe(phi))
    session.asr.update = lambda: updates.append(update()) or updates[-1]
    before = session.control()
    for msg, h264 in segments:
        for out in _run(session, envelope(msg, h264)):
            if isinstance(out.msg, Control):
                assert out.msg != before and out.msg == session.control()
                before = out.msg
    # 12 samples: 11 consecutive pairs scored; the first update is due δt = 2 s after the
    # first segment (its last frame at 2 s), then every 2 s of video: at 4, 6, 8 and 10 s
    assert len(observed) == 11 and all(0.0 <= phi <= 1.0 for phi in observed)
    assert len(updates) == 4


def _cut(segment):
    msg, h264 = segment
    return envelope(msg.model_copy(update={"scene_cut": True}), h264)


def test_a_scene_cut_restarts_the_rates_and_is_judged_not_trained_on(session, segments):
    """A segment the device flagged as a cut: counted, no φ across it (its own frames' φ kept),
    the rate back at its maximum and T_update at τ_min (a control even though unchanged: the
    device moved its rate alone), and no phase trains on it alone."""
    _run(session, hello(session.mirror.sha256))
    _run(session, envelope(*segments[0]))
    session.asr.rate_fps, session.atr.slowdown, session.atr.t_update_s = 0.1, True, 30.0
    used = []
    update = session.asr.update
    session.asr.update = lambda: used.append(list(session.asr.state_dict()["phis"])) or update()
    out = _run(session, _cut(segments[1]))
    (control,) = [o.msg for o in out if isinstance(o.msg, Control)]
    config = session.config
    assert control.sampling_rate_fps == config.asr.max_fps
    assert control.t_update_s == config.atr.tau_min_s and not session.atr.slowdown
    # ASR's next step came δt (2 s) after the cut, on its 3 frames' 2 pairs, none across it
    assert [len(phis) for phis in used] == [2]
    assert session.stats.scene_cuts == 1 and session.stats.phases == 1  # judged, not trained on
    assert _updates(out) == [] and session.stats.rebases == 0  # the base does no better here
    again = _run(session, _cut(segments[2]))  # a second cut: a control again
    assert [o.msg.t_update_s for o in again if isinstance(o.msg, Control)] == [control.t_update_s]


def test_a_device_sampling_faster_than_told_is_told_again(session, segments):
    _run(session, hello(session.mirror.sha256))
    session.asr.rate_fps = 0.5  # what the trainer said; the segments were sampled at 1 fps
    (control,) = [
        o.msg for o in _run(session, envelope(*segments[0])) if isinstance(o.msg, Control)
    ]
    assert control.sampling_rate_fps == 0.5


def test_a_phase_due_before_a_cut_still_trains(session, segments):
    """The segment before the cut and the cut's arrive together (the device sends both at
    once): the first one's phase trains, on a buffer that holds the cut's frames too."""
    _run(session, hello(session.mirror.sha256))
    _run(session, envelope(*segments[0]))
    out = _run(session, envelope(*segments[1]), _cut(segments[2]))
    assert session.stats.phases == 2 and len(_updates(out)) == 1 and session.stats.rebases == 0
    assert len(session.buffer) == 9


def test_an_undecodable_segment_is_acknowledged_as_rejected(session, segments):
    msg, h264 = segments[0]
    out = _run(session, envelope(msg, h264[: len(h264) // 3]))
    (ack,) = [o.msg for o in out]
    assert isinstance(ack, Ack) and not ack.ok and ack.reason == AckReason.DECODE_ERROR
    assert session.stats.segments_rejected == 1 and len(session.buffer) == 0


def _updates(out):
    return [o for o in out if isinstance(o.msg, Update)]


def _three_updates_then_refused(session, segments, reason: AckReason) -> tuple[bytes, Ack]:
    """Three phases (versions 1-3) sent; the device, still on version 1, refuses the third."""
    _run(session, hello(session.mirror.sha256))
    sent = [u for msg, h264 in segments[:3] for u in _updates(_run(session, envelope(msg, h264)))]
    v1 = session.mirror.versions()[1]
    refused = _ack_of(
        sent[2], ok=False, reason=reason, model_version=1, model_sha256=sha256_hex(v1)
    )
    return v1, refused


def test_acks_drive_resyncs(session, segments):
    v1, refused = _three_updates_then_refused(session, segments, AckReason.BASE_MISMATCH)
    (resync,) = _run(session, envelope(refused))
    assert resync.msg.base_version == 1 and resync.msg.new_version == 3
    assert apply_update(resync.msg.format, v1, resync.body) == session.mirror.data
    assert _run(session, envelope(refused)) == []  # an ack answers its message once
    assert session.stats.acks_unmatched == 1
    _run(session, envelope(_ack_of(resync)))
    assert session.device.version == 3 and session.stats.updates_acked == 1


def test_acks_of_nothing_sent_are_ignored(session, segments):
    _, refused = _three_updates_then_refused(session, segments, AckReason.INVALID_MODEL)
    version, full_models = session.mirror.version, session.stats.full_models
    forged = [
        refused.model_copy(update={"ref_seq": refused.ref_seq + 10_000}),  # never sent
        refused.model_copy(update={"ref_type": "model"}),  # sent, but as an update
        # accepts it, but names a file that message never made
        refused.model_copy(update={"ok": True, "reason": None, "model_sha256": "9" * 64}),
    ]
    for ack in forged:
        assert _run(session, envelope(ack)) == []
    assert session.stats.acks_unmatched == 3 and session.stats.rollbacks == 0
    assert (session.mirror.version, session.stats.full_models) == (version, full_models)
    _run(session, envelope(refused))  # the real one still counts: training rolls back
    assert session.stats.rollbacks == 1


def test_full_models_are_rate_limited_per_device(session, monkeypatch):
    first = _run(session, hello("9" * 64))
    assert isinstance(first[0].msg, Model) and session.stats.full_models == 1
    refused = _ack_of(first[0], ok=False, reason=AckReason.BAD_HASH,
                      model_version=0, model_sha256="8" * 64)  # fmt: skip
    assert _run(session, envelope(refused)) == []  # too soon: deferred
    assert session.stats.full_models_deferred == 1 and session.stats.full_models == 1
    clock = time.monotonic() + session.config.updates.full_model_interval_s
    monkeypatch.setattr(time, "monotonic", lambda: clock)
    assert session.has_work  # due now: the daemon's housekeeping wakes the session
    (again,) = _run(session)
    assert isinstance(again.msg, Model) and session.stats.full_models == 2


def test_a_model_the_device_finds_broken_rolls_training_back(session, segments, tmp_path):
    v1, refused = _three_updates_then_refused(session, segments, AckReason.INVALID_MODEL)
    assert _run(session, envelope(refused)) == []  # the device already runs the kept version
    assert session.mirror.version == 1 and session.mirror.sha256 == sha256_hex(v1)
    assert session.stats.rollbacks == 1
    files = (tmp_path / "ckpt" / "cam-1" / "mirror").glob("v*")
    assert sorted(p.name.partition("-")[0] for p in files) == ["v00000000", "v00000001"]
    # training resumes from the file the device runs: its next update is based on version 1
    (update,) = [o for o in _run(session, envelope(*segments[3])) if isinstance(o.msg, Update)]
    assert update.msg.base_version == 1 and update.msg.base_sha256 == sha256_hex(v1)
    assert sha256_hex(apply_update(update.msg.format, v1, update.body)) == session.mirror.sha256


def test_a_device_that_only_takes_binary_patches_gets_zpatch(session, segments):
    _run(session, hello(session.mirror.sha256, formats=(UpdateFormat.ZPATCH,)))
    msg, h264 = segments[0]
    (update,) = [o for o in _run(session, envelope(msg, h264)) if isinstance(o.msg, Update)]
    assert update.msg.format == UpdateFormat.ZPATCH


def test_checkpoint_round_trip(session, segments, tmp_path):
    _run(session, hello(session.mirror.sha256))
    for msg, h264 in segments[:2]:
        _run(session, envelope(msg, h264))
    session.save()
    resumed = _restarted(session)
    assert resumed.restore()
    assert resumed.mirror.version == session.mirror.version
    assert resumed.mirror.data == session.mirror.data
    for a, b in zip(resumed.student.parameters(), session.student.parameters(), strict=True):
        assert torch.equal(a, b)
    assert resumed.optimizer.step_count == session.optimizer.step_count
    assert len(resumed.buffer) == len(session.buffer) == 6
    assert np.array_equal(resumed.buffer.samples()[0].labels, session.buffer.samples()[0].labels)
    assert resumed.device == session.device and resumed.stats == session.stats
    # it offers the device (last heard on v0: no acks here) the last version, then trains on
    # where it left off: the next update applies to the last file sent
    offer, update = _updates(_run(resumed, envelope(*segments[2])))
    assert (offer.msg.base_version, offer.msg.new_version) == (0, 2)
    assert update.msg.base_sha256 == sha256_hex(session.mirror.data)


class _RunsCode:
    """What a pickle can smuggle into a checkpoint: a call made while it is loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_never_runs_code_when_loaded(session, tmp_path):
    from cloud_trainer.session import CHECKPOINT

    marker = tmp_path / "ran"
    session.directory.mkdir(parents=True, exist_ok=True)
    torch.save({"student": _RunsCode(marker)}, session.directory / CHECKPOINT)
    assert not session.restore()  # refused, set aside: the session goes on
    assert not marker.exists()
    assert (session.directory / CHECKPOINT).with_suffix(".refused").is_file()
    assert session.stats.checkpoints_refused == 1


@pytest.mark.parametrize("damage", [b"", b"PK\x03\x04 not a checkpoint", None])
def test_a_damaged_checkpoint_trains_on_from_the_last_file_sent(session, segments, damage):
    _run(session, hello(session.mirror.sha256))
    for msg, h264 in segments[:2]:
        _run(session, envelope(msg, h264))  # trains and sends: the mirror moves on
    path = session.save()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage is None else damage)
    resumed = _restarted(session)
    assert not resumed.restore()
    assert resumed.mirror.version == session.mirror.version  # the mirror's files are kept
    expected = import_tflite(session.mirror.data)
    for a, b in zip(resumed.student.parameters(), expected.parameters(), strict=True):
        assert torch.equal(a, b)  # training starts from the last file sent, not the first


def test_a_hello_flood_costs_only_its_oldest_messages(session):
    flood = [hello("9" * 64) for _ in range(500)]
    for env in flood:
        session.deliver(env)
    assert session.stats.events_dropped == 500 - session.config.max_pending_events
    out = _run(session, hello(session.mirror.sha256))  # the newest: the device runs the student
    assert session.device.sha256 == session.mirror.sha256
    assert session.stats.full_models == 1  # one answer to the unknown model, not 32
    assert isinstance(out[-1].msg, Control)


def test_messages_for_a_device_without_a_session_yet_are_bounded(tmp_path):
    from cloud_trainer.daemon import TrainerDaemon
    from shared_schema.topics import parse_topic

    daemon = TrainerDaemon(trainer_config(tmp_path))
    topic = parse_topic("ams", "ams/cam-9/up/hello")
    for _ in range(200):  # the worker has not made the session yet
        daemon._deliver(hello("9" * 64), topic)
    config = daemon.config
    assert len(daemon._waiting["cam-9"]) == config.max_pending_events
    assert daemon.endpoint.counters.get("trainer.waiting_dropped") == 200 - len(
        daemon._waiting["cam-9"]
    )


def _hello_at(sha, version):
    msg = hello(sha).msg.model_copy(update={"model_version": version})
    return envelope(msg)


def test_a_device_ahead_of_the_mirror_gets_a_newer_version(session):
    # The device runs v7 of a file this trainer never made (it lost its state): a full model
    # numbered 7 or lower would be refused as stale.
    (model, _) = _run(session, _hello_at("9" * 64, 7))
    assert isinstance(model.msg, Model) and model.msg.version == 8
    assert session.mirror.version == 8 and model.body == session.mirror.data
    assert [p.name[:9] for p in session.mirror._directory.iterdir()] == ["v00000008"]


def test_a_device_numbering_the_mirrors_file_higher_is_followed(session):
    out = _run(session, _hello_at(session.mirror.sha256, 5))
    assert [type(o.msg) for o in out] == [Control]  # the same file: nothing to send
    assert session.mirror.version == session.device.version == 5  # next update: base 5


def _same_training_state(a: Session, b: Session) -> bool:
    """The float master weights, the optimizer's moments (m, v, u: SPEC §6) and its step."""
    tensors = list(zip(a.student.parameters(), b.student.parameters(), strict=True))
    for name in ("m", "v", "u"):
        tensors += zip(getattr(a.optimizer, name), getattr(b.optimizer, name), strict=True)
    steps = a.optimizer.step_count == b.optimizer.step_count > 0
    return steps and all(torch.equal(x, y) for x, y in tensors)


def test_a_kill_after_a_version_was_sent_resumes_on_its_exact_training_state(session, segments):
    # No periodic checkpoint between the phases: each version's own is written before it.
    _run(session, hello(session.mirror.sha256))
    for msg, h264 in segments[:3]:
        _run_acked(session, envelope(msg, h264))  # three versions sent; then SIGKILL
    resumed = _restarted(session)
    assert resumed.restore() and resumed.stats.stale_checkpoints == 0
    assert resumed.mirror.version == session.mirror.version == 3
    assert _same_training_state(resumed, session)  # the float weights and Adam's moments
    *offers, update = _updates(_run(resumed, envelope(*segments[3])))
    # v3's ack came after its checkpoint: the resumed session offers it again (the device,
    # already on it, refuses it as stale), then builds on it
    assert [(o.msg.base_version, o.msg.new_version) for o in offers] == [(2, 3)]
    assert update.msg.base_sha256 == sha256_hex(session.mirror.data)


def test_a_kill_between_the_checkpoint_and_the_version_it_makes(session, segments, monkeypatch):
    _run(session, hello(session.mirror.sha256))
    _run_acked(session, envelope(*segments[0]))

    def killed(*args, **kwargs):
        raise SystemExit("SIGKILL")  # after the phase's checkpoint, before its version's file

    monkeypatch.setattr(session.mirror, "advance", killed)
    with pytest.raises(SystemExit):
        _run(session, envelope(*segments[1]))
    resumed = _restarted(session)
    assert resumed.restore() and resumed.mirror.version == 1  # version 2 was never made
    assert _same_training_state(resumed, session)  # the weights trained in that phase
    (update,) = [o for o in _run(resumed, envelope(*segments[2])) if isinstance(o.msg, Update)]
    assert update.msg.base_version == 1 and update.msg.new_version == 2


def test_an_older_checkpoint_trains_from_the_last_file_sent(session, segments):
    _run(session, hello(session.mirror.sha256))
    _run(session, envelope(*segments[0]))
    older = session.save().read_bytes()
    for msg, h264 in segments[1:3]:
        _run(session, envelope(msg, h264))
    (session.directory / "session.pt").write_bytes(older)  # e.g. restored from a backup
    resumed = _restarted(session)
    assert resumed.restore() and resumed.stats.stale_checkpoints == 1
    expected = import_tflite(session.mirror.data)
    for a, b in zip(resumed.student.parameters(), expected.parameters(), strict=True):
        assert torch.equal(a, b)


def test_idle_sessions_leave_memory_and_the_cap_counts_active_ones(tmp_path, monkeypatch):
    from cloud_trainer import daemon as daemon_module
    from cloud_trainer.daemon import TrainerDaemon
    from shared_schema.topics import parse_topic

    config = trainer_config(tmp_path).model_copy(update={"max_sessions": 2, "session_idle_s": 60})
    daemon = TrainerDaemon(config)
    now = [1000.0]
    monkeypatch.setattr(daemon_module.time, "monotonic", lambda: now[0])

    def speak(device: str) -> None:
        daemon._deliver(
            envelope(hello("9" * 64).msg, device=device),
            parse_topic("ams", f"ams/{device}/up/hello"),
        )

    for device in ("cam-a", "cam-b"):
        speak(device)
        speak(device)  # admitted, waiting for its session: never refused at the cap
        daemon._step(device)
    speak("cam-c")  # two active sessions: no room
    assert "cam-c" not in daemon._waiting
    assert daemon.endpoint.counters.get("trainer.sessions_refused") == 1
    now[0] += 30
    speak("cam-b")
    daemon._step("cam-b")
    now[0] += 31  # cam-a silent for 61 s, cam-b for 31 s
    daemon._unload_idle()
    assert list(daemon.sessions) == ["cam-b"]
    assert (tmp_path / "ckpt" / "cam-a" / "session.pt").is_file()  # its state stays on disk
    speak("cam-c")
    assert "cam-c" in daemon._waiting  # room again
    daemon._step("cam-c")
    daemon._unload_idle()
    now[0] += 61
    daemon._unload_idle()
    speak("cam-a")
    daemon._step("cam-a")
    back = daemon.sessions["cam-a"]
    assert back.stats.full_models == 2  # one before it left (from its checkpoint), one now
    assert daemon.endpoint.counters.get("trainer.sessions_unloaded") == 3  # a, then b and c


def test_a_segment_is_on_disk_before_delivery_returns_and_survives_a_kill(session, segments):
    _run(session, hello(session.mirror.sha256))
    session.deliver(envelope(*segments[0]))
    inbox = session.directory / "inbox"
    assert len(list(inbox.glob("*.segment.env"))) == 1  # the broker may be told now
    resumed = _restarted(session)  # SIGKILL before labelling: a new process, same directory
    resumed.deliver(hello(session.mirror.sha256))
    out = _run(resumed)
    assert resumed.stats.segments == 1 and any(isinstance(o.msg, Update) for o in out)
    assert list(inbox.glob("*.env")) == []  # labelled: it leaves the inbox


def test_segments_before_a_session_exists_wait_on_disk(tmp_path, segments):
    from cloud_trainer.daemon import TrainerDaemon
    from shared_schema.topics import parse_topic

    daemon = TrainerDaemon(trainer_config(tmp_path))
    topic = parse_topic("ams", "ams/cam-9/up/segment")
    for msg, h264 in segments[:2]:
        daemon._deliver(envelope(msg, h264, device="cam-9"), topic)
    assert len(list((tmp_path / "ckpt" / "cam-9" / "inbox").glob("*.env"))) == 2
    while daemon._step("cam-9"):
        pass
    assert daemon.sessions["cam-9"].stats.segments == 2


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_mirror_file_leads_to_a_full_model_not_a_stuck_session(session, segments, damage):
    _run(session, hello(session.mirror.sha256))
    for msg, h264 in segments[:2]:
        _run(session, envelope(msg, h264))
    session.save()
    device_sha, device_version = session.mirror.sha256, session.mirror.version  # the device's
    (latest,) = sorted(session.mirror._directory.glob(f"v{device_version:08d}-*.tflite"))
    data = bytearray(latest.read_bytes())
    data[len(data) // 2] ^= 0x40
    latest.write_bytes(bytes(data) if damage == "flip" else bytes(data[:1000]))
    resumed = _restarted(session)
    assert resumed.restore()
    assert resumed.stats.mirror_files_damaged == 1 and latest.with_suffix(".damaged").exists()
    assert resumed.mirror.version == device_version - 1  # the newest intact file
    out = _run(resumed, _hello_at(device_sha, device_version))
    model = next(o for o in out if isinstance(o.msg, Model))
    assert model.msg.version == device_version + 1 and model.body == resumed.mirror.data


def test_a_restarted_device_clock_continues_the_sessions(session, segments):
    _run(session, hello(session.mirror.sha256))
    for msg, h264 in segments[:2]:
        _run(session, envelope(msg, h264))
    before = max(s.timestamp for s in session.buffer.samples())
    again = segments[0][0]  # the device restarted: its clock (and boot) start again at 0
    restarted = decode(encode(again, device_id="cam-1", seq=1, boot="2" * 16, body=segments[0][1]))
    _run(session, restarted)
    times = [s.timestamp for s in session.buffer.samples()]
    assert len(times) == 9 and times == sorted(times)  # none dropped as "too old"
    assert min(times[6:]) == before + RESTART_GAP_S  # right after the last frame before it


def test_device_clock_shifts_each_new_boot_once():
    clock = DeviceClock()
    assert clock.place("a", (0.0, 1.0)) == (0.0, 1.0)
    assert clock.place("a", (2.0, 3.0)) == (2.0, 3.0)
    assert clock.place("b", (0.0, 1.0)) == (3.0 + RESTART_GAP_S, 4.0 + RESTART_GAP_S)
    assert clock.place("a", (3.5,)) == (3.5,)  # a spooled segment of the older boot
    assert clock.place("c", (100.0,)) == (100.0,)  # already ahead: not shifted
    restored = DeviceClock()
    restored.load_state_dict(clock.state_dict())
    assert restored == clock


def test_a_resumed_session_offers_the_version_it_may_not_have_sent(session, segments):
    _run(session, hello(session.mirror.sha256))
    _run(session, envelope(*segments[0]))  # v1 sent and accepted
    (sent,) = _updates(_run(session, envelope(*segments[1])))
    # killed after v2's file was written, before it was published: the device is on v1
    resumed = _restarted(session)
    resumed.restore()
    resumed.device.version, resumed.device.sha256 = 1, sha256_hex(session.mirror.versions()[1])
    (offer,) = _run(resumed)  # nothing from the device: the resumed session offers v2
    assert (offer.msg.base_version, offer.msg.new_version) == (1, 2)
    assert offer.msg.result_sha256 == sent.msg.result_sha256


def test_an_update_no_ack_answers_is_offered_again_with_backoff(session, segments, monkeypatch):
    _run_acked(session, hello(session.mirror.sha256), envelope(*segments[0]))  # v1, acked
    (lost,) = _updates(_run(session, envelope(*segments[1])))  # v2: lost with the broker
    timeout = session.config.updates.ack_timeout_s
    now = [time.monotonic() + timeout + 1]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    assert session.has_work  # the daemon's housekeeping wakes it
    (offer,) = _run(session)
    assert (offer.msg.base_version, offer.msg.new_version) == (1, 2)  # from what was acked
    assert offer.msg.result_sha256 == lost.msg.result_sha256
    now[0] += timeout + 1  # unanswered again, but the wait has doubled
    assert not session.has_work
    now[0] += timeout
    (again,) = _run(session)
    _run(session, envelope(_ack_of(again)))
    assert session.stats.offered_again == 2 and session.device.version == 2
    now[0] += 10 * timeout
    assert not session.has_work  # answered: nothing more to offer


def _gated_session(tmp_path, lr: float, **gate) -> Session:
    raw = trainer_raw(tmp_path, lr=lr)
    raw["gate"] = {**raw["gate"], "enabled": True, **gate}
    return _new_session(tmp_path, TrainerConfig.model_validate(raw))


def _updates_of_two_segments(session, segments):
    _run(session, hello(session.mirror.sha256))
    out = []
    for msg, h264 in segments[:2]:
        out += [o for o in _run(session, envelope(msg, h264)) if isinstance(o.msg, Update)]
    return out


@pytest.mark.parametrize("revert", [True, False])
def test_a_phase_that_wrecks_the_model_is_gated(tmp_path, segments, revert):
    # lr 1: two Adam steps move every selected weight by about one unit: the model is wrecked
    session = _gated_session(tmp_path, lr=1.0, margin=0.0, revert=revert)
    sent = {k: v.clone() for k, v in session.student.state_dict().items()}
    assert _updates_of_two_segments(session, segments) == []
    assert session.stats.phases == 2 and session.stats.phases_gated == 2
    assert session.mirror.version == 0  # nothing was made
    after = session.student.state_dict()
    back = all(torch.equal(after[k], v) for k, v in sent.items())
    assert back == revert  # back to the file sent, or training went on from the phase


def test_a_gated_phase_gained_the_marginal_gain_scheduler_nothing(tmp_path, segments):
    # measured 0, not left unmeasured: an unmeasured session is served first, again and again
    raw = trainer_raw(tmp_path, lr=1.0)
    raw["gate"] = {**raw["gate"], "enabled": True, "margin": 0.0}
    raw["recl"] = {"scheduler": "marginal-gain"}
    session = _new_session(tmp_path, TrainerConfig.model_validate(raw))
    assert _updates_of_two_segments(session, segments) == []
    assert session.stats.phases_gated == 2
    assert session.phase_gain() == 0.0  # the first, judged on the second's samples


def test_without_the_gate_the_same_phases_are_sent(tmp_path, segments):
    session = _gated_session(tmp_path, lr=1.0, enabled=False)
    assert len(_updates_of_two_segments(session, segments)) == 2
    assert session.stats.phases_gated == 0


def _rebasing_session(tmp_path, **rebase) -> Session:
    # lr 1: a phase wrecks the model, and the base labels the next samples far better
    raw = trainer_raw(tmp_path, lr=1.0)
    raw["rebase"] = {**raw["rebase"], **rebase}
    return _new_session(tmp_path, TrainerConfig.model_validate(raw))


def test_a_device_model_the_base_beats_on_new_samples_restarts_training_from_it(
    tmp_path, segments, monkeypatch
):
    session = _rebasing_session(tmp_path)
    _run(session, hello(session.mirror.sha256))
    (first,) = _updates(_run(session, envelope(*segments[0])))  # v1: wrecked, sent
    base = import_tflite(session.config.student.model.read_bytes()).state_dict()
    seen = []

    def phase(*args, **kwargs):  # the weights the second phase starts from
        seen.append({k: v.clone() for k, v in session.student.state_dict().items()})
        return train_phase(*args, **kwargs)

    monkeypatch.setattr("cloud_trainer.session.train_phase", phase)
    (second,) = _updates(_run(session, envelope(*segments[1])))
    assert session.stats.rebases == 1
    assert all(torch.equal(seen[0][k], v) for k, v in base.items())  # from the base weights
    assert session.optimizer.step_count == session.config.training.iterations  # fresh state
    # the buffer forgot the first segment: only the new scene's three samples are trained on
    assert [s.timestamp for s in session.buffer.samples()] == list(segments[1][0].timestamps)
    assert second.msg.base_sha256 == first.msg.result_sha256  # an ordinary update from v1
    session.save()
    resumed = _restarted(session)
    assert resumed.restore()
    assert [s.timestamp for s in resumed.buffer.samples()] == list(segments[1][0].timestamps)
    assert resumed.buffer.start == session.buffer.start and resumed.stats.rebases == 1


def test_at_a_scene_cut_a_better_base_goes_to_the_device_at_once(tmp_path, segments):
    """The rebase rule on the cut's frames alone, as they come: the base, untrained, as an
    update from the device's file; the buffer keeps the cut's frames alone; the phase the
    segment before the cut made due is not trained; the next segment's phase trains from the
    base."""
    session = _rebasing_session(tmp_path)
    _run(session, hello(session.mirror.sha256))
    (first,) = _updates(_run(session, envelope(*segments[0])))  # v1: wrecked, sent
    (back,) = _updates(_run(session, envelope(*segments[1]), _cut(segments[2])))
    base = session.config.student.model.read_bytes()
    assert back.msg.base_sha256 == first.msg.result_sha256 and session.mirror.data == base
    assert apply_update(back.msg.format, session.mirror.versions()[1], back.body) == base
    assert session.stats.rebases == 1 and session.stats.phases == 1
    assert [s.timestamp for s in session.buffer.samples()] == list(segments[2][0].timestamps)
    (trained,) = _updates(_run(session, envelope(*segments[3])))
    assert session.stats.phases == 2 and session.stats.rebases == 1
    assert trained.msg.base_sha256 == sha256_hex(base)


def test_at_a_scene_cut_recls_selection_judges_the_new_scene_alone(tmp_path, segments):
    """With RECL on, the cut's frames alone go through the safety check at once (not the
    older samples since the last phase); a move there takes the device to the base now, the
    buffer keeps the cut's frames alone and the phase the segment before made due is not
    trained."""
    from cloud_trainer.recl.reuse import ModelReuse

    raw = trainer_raw(tmp_path, lr=1.0)  # a phase wrecks the model: the base wins the check
    raw["recl"] = {"enabled": True, "samples": 6}
    config = TrainerConfig.model_validate(raw)
    base = config.student.model.read_bytes()
    reuse = ModelReuse(config.recl, base, config.zoo_directory, threads=2)
    session = Session("cam-1", config, load_teacher(config.teacher), base,
                      directory=tmp_path / "ckpt" / "cam-1", reuse=reuse)  # fmt: skip
    judged, select = [], reuse.select

    def recorded(device_id, current, samples, *args, **kwargs):
        judged.append([s.timestamp for s in samples])
        choice = select(device_id, current, samples, *args, **kwargs)
        # before the cut the check keeps the device on its model (no candidate by the margin)
        return choice if samples[0].timestamp == segments[2][0].timestamps[0] else None

    reuse.select = recorded
    _run(session, hello(session.mirror.sha256))
    (first,) = _updates(_run(session, envelope(*segments[0])))  # v1: wrecked, sent
    (back,) = _updates(_run(session, envelope(*segments[1]), _cut(segments[2])))
    assert judged[-1] == list(segments[2][0].timestamps)  # the cut's frames alone
    assert session.mirror.data == base and back.msg.base_sha256 == first.msg.result_sha256
    assert session.stats.rebases == 1 and session.stats.phases == 1
    assert [s.timestamp for s in session.buffer.samples()] == list(segments[2][0].timestamps)
    (trained,) = _updates(_run(session, envelope(*segments[3])))
    assert session.stats.phases == 2 and trained.msg.base_sha256 == sha256_hex(base)
    reuse.close()


def test_after_a_scene_cut_recl_looks_at_the_new_scene_within_look_s(tmp_path, segments):
    """With RECL on, the control answering a cut asks for the next segment within
    ``recl.look_s``; that segment's check judges the new scene's samples alone, though older
    ones wait for a phase, and its answer gives the device ATR's T_update back. A restarted
    trainer tells the device its rates on the next segment, whatever it told it before."""
    from cloud_trainer.recl.reuse import ModelReuse

    raw = trainer_raw(tmp_path)
    raw["recl"] = {"enabled": True, "samples": 12, "look_s": 3.0}
    config = TrainerConfig.model_validate(raw)
    base = config.student.model.read_bytes()
    reuse = ModelReuse(config.recl, base, config.zoo_directory, threads=2)
    session = Session("cam-1", config, load_teacher(config.teacher), base,
                      directory=tmp_path / "ckpt" / "cam-1", reuse=reuse)  # fmt: skip
    judged, held = [], []
    reuse.select = lambda device, current, samples, *args, **kwargs: judged.append(
        [s.timestamp for s in samples])  # fmt: skip
    reuse.hold = lambda device, data, state: held.append((device, data))
    _run(session, hello(session.mirror.sha256))
    _run(session, envelope(*segments[0]))
    out = _run(session, envelope(*segments[1]), _cut(segments[2]), envelope(*segments[3]))
    t_updates = [o.msg.t_update_s for o in out if isinstance(o.msg, Control)]
    assert t_updates[-2:] == [3.0, config.atr.tau_min_s]  # the cut's answer, the look's
    assert session.stats.phases == 2  # segment 1's phase trained after the look was judged
    new_scene = [*segments[2][0].timestamps, *segments[3][0].timestamps]
    assert judged[-1] == new_scene  # not segment 1's samples, which no phase trained on yet
    assert held == [("cam-1", session.mirror.versions()[1])]  # at the cut, the model it ran
    assert [o for o in _run(session, envelope(*segments[3])) if isinstance(o.msg, Control)] == []
    restarted = _restarted(session)
    assert restarted.restore()
    (control,) = [o.msg for o in _run(restarted, envelope(*segments[3]))
                  if isinstance(o.msg, Control)]  # fmt: skip
    assert control.t_update_s == config.atr.tau_min_s
    reuse.close()


def test_without_rebase_the_wrecked_model_trains_on(tmp_path, segments):
    session = _rebasing_session(tmp_path, enabled=False)
    assert len(_updates_of_two_segments(session, segments)) == 2
    assert session.stats.rebases == 0 and len(session.buffer) == 6


# -- an operator's actions and the dashboard's records ------------------------------------------


def test_a_paused_session_labels_but_neither_trains_nor_updates_until_resumed(session, segments):
    _run(session, hello(session.mirror.sha256))
    assert session.act(Pause()) == ("learning paused", [])
    _run(session, envelope(*segments[0]))
    assert session.stats.segments == 1 and session.stats.phases == 0
    assert session.mirror.version == 0 and not session.has_work
    session.save()
    resumed = _restarted(session)
    assert resumed.restore() and resumed.paused  # a restart keeps the operator's pause
    assert resumed.act(Resume()) == ("learning resumed", [])
    (update,) = _updates(_run(resumed))  # the phase the pause held back
    assert resumed.stats.phases == 1 and update.msg.new_version == 1


def test_sampling_bounds_clip_the_rate_reach_the_device_and_survive_a_restart(session):
    _run(session, hello(session.mirror.sha256))
    done, (control,) = session.act(SamplingBounds(min_fps=0.2, max_fps=0.5))
    assert done == "sampling bounded to 0.2-0.5 fps, rate 0.5 fps"
    assert isinstance(control.msg, Control) and control.msg.sampling_rate_fps == 0.5
    session.asr.observe(1.0)  # a busy scene: eq. 1 steps up, the operator's bound holds
    assert session.asr.update() == 0.5
    session.save()
    resumed = _restarted(session)
    assert resumed.restore() and resumed.asr.bounds == (0.2, 0.5)
    assert resumed.metrics()["sampling_bounds"] == [0.2, 0.5]


def _two_versions_acked(session, segments) -> list[bytes]:
    """Versions 1 and 2 made and applied by a device that booted with the student."""
    _run(session, hello(session.mirror.sha256))
    for msg, h264 in segments[:2]:
        _run_acked(session, envelope(msg, h264))
    assert session.device.version == 2
    return [session.mirror.versions()[v] for v in (0, 1, 2)]


def test_a_rollback_to_the_standby_slot_is_a_signed_control(session, segments):
    files = _two_versions_acked(session, segments)
    done, (control,) = session.act(Rollback(version=1))
    assert done.startswith("rollback to v1: a signed control")
    assert isinstance(control.msg, Control) and control.msg.rollback_to == 1
    # the trainer follows at once: its mirror and training are back on version 1
    assert session.mirror.version == 1 and session.mirror.data == files[1]
    session.sent(next(_seq), control)
    ack = Ack(ref_type="control", ref_seq=seq_of_sent(session), ok=True, model_version=1,
              model_sha256=sha256_hex(files[1]))  # fmt: skip
    _run(session, envelope(ack))
    assert session.device.version == 1 and session.stats.rollbacks_ordered == 1
    records = session.drain()
    assert [r.cause for r in records if isinstance(r, UpdateRecord)][-1] == "rollback to v1"
    assert isinstance(records[-1], AckRecord) and records[-1].ok


def seq_of_sent(session) -> int:
    return next(reversed(session._sent))


def test_a_trainer_killed_after_a_rollback_resumes_on_the_version_it_went_back_to(
    session, segments
):
    files = _two_versions_acked(session, segments)
    session.save()  # a periodic checkpoint, of version 2's weights
    session.act(Rollback(version=1))  # ... and the process is killed before the next one
    resumed = _restarted(session)
    assert (
        resumed.restore() and resumed.mirror.version == 1 and resumed.stats.stale_checkpoints == 0
    )
    # its student holds version 1's weights, not those of the version the operator refused
    assert resumed.mirror.candidate(resumed.student) == files[1] != files[2]


def test_a_rollback_to_what_the_device_runs_stops_what_was_on_its_way(session, segments):
    _run(session, hello(session.mirror.sha256))
    _run_acked(session, envelope(*segments[0]))  # the device runs version 1
    (pending,) = _updates(_run(session, envelope(*segments[1])))  # version 2: not applied yet
    done, out = session.act(Rollback(version=1))
    assert done == "training back on v1, which the device runs" and out == []
    assert session.mirror.version == 1  # v2 is no longer offered: it expires on its way
    on_v1 = {"model_version": 1, "model_sha256": session.mirror.sha256}
    expired = _ack_of(pending, ok=False, reason=AckReason.EXPIRED, **on_v1)
    assert _run(session, envelope(expired)) == []  # the device runs the mirror's file
    assert session.device.version == 1 and session.stats.full_models == 0


def test_a_device_that_applied_what_a_rollback_dropped_is_brought_back(session, segments):
    _run(session, hello(session.mirror.sha256))
    _run_acked(session, envelope(*segments[0]))
    (pending,) = _updates(_run(session, envelope(*segments[1])))
    v1 = session.mirror.versions()[1]
    session.act(Rollback(version=1))
    (back,) = _run(session, envelope(_ack_of(pending)))  # it applied v2 after all
    # v2 is gone from the trainer: v1's file comes whole, numbered after what the device runs
    assert isinstance(back.msg, Model) and back.body == v1 and back.msg.version == 3


def test_a_rollback_further_back_sends_that_file_as_the_next_version(session, segments):
    files = _two_versions_acked(session, segments)
    done, (update,) = session.act(Rollback(version=0))  # the booted file: no slot numbers it
    assert done == "rollback to v0: its file made v3"
    assert isinstance(update.msg, Update)
    assert (update.msg.base_version, update.msg.new_version) == (2, 3)
    assert apply_update(update.msg.format, files[2], update.body) == files[0]
    assert session.mirror.find(sha256_hex(files[0])) == 3  # the newest number of that file


@pytest.mark.parametrize(
    ("version", "message"),
    [(9, "version 9 is no longer held (the trainer holds v0, v1, v2)"),
     (2, "the device runs version 2 already")],
)  # fmt: skip
def test_a_rollback_that_cannot_be_done_says_why(session, segments, version, message):
    _two_versions_acked(session, segments)
    with pytest.raises(ActionRefused, match=re.escape(message)):
        session.act(Rollback(version=version))
    assert session.mirror.version == 2


def test_with_the_dashboard_on_each_segment_is_probed_on_the_device_model(tmp_path, segments):
    raw = trainer_raw(tmp_path)
    raw["dashboard"] = {"port": 8999, "probe_frames": 2}
    session = _new_session(tmp_path, TrainerConfig.model_validate(raw))
    _run(session, hello(session.mirror.sha256))
    _run(session, envelope(*segments[0]))
    records = session.drain()
    (uplink,) = [r for r in records if isinstance(r, UplinkRecord)]
    assert (uplink.width, uplink.height, uplink.frames) == (768, 576, 3)
    (probe,) = [r for r in records if isinstance(r, Probe)]
    (view,) = [r for r in records if isinstance(r, FrameView)]
    # the device still runs the student it booted with: both models are the same file
    assert probe.version == 0 and probe.frames == 2 and probe.miou == probe.pretrained
    assert 0.0 < probe.miou <= 1.0
    assert view.rgb.shape[:2] == view.device_labels.shape == view.teacher_labels.shape
    (update,) = [r for r in records if isinstance(r, UpdateRecord)]
    assert update.version == 1 and update.cause == "phase" and update.loss is not None
    assert session.drain() == []  # handed over once
