"""Double-buffered slots on the real student: every bad update leaves a verified model running,
and the device ends where the trainer's mirror is."""

from __future__ import annotations

import json
import time

import av
import numpy as np
import pytest

from edge_runtime.backends.litert import LiteRtConfig
from edge_runtime.model_slots import STATE_FILE, ModelSlots
from edge_runtime.swap import Handover
from shared_schema.envelope import decode, encode, sha256_hex
from shared_schema.messages import AckReason, Control, UpdateFormat
from shared_schema.signing import SIGNATURE_LIFETIME_S, Keyring, save_keypair
from shared_schema.tflite_file import TFLiteFile
from tests.mirror import BOOT, Mirror

STUDENT = "models/coral/deeplabv3_mnv2_dm05_pascal_quant.tflite"
CONFIG = LiteRtConfig(backend="litert", input_size=(513, 513), threads=2)


@pytest.fixture(scope="module")
def student(shared_dir):
    return shared_dir / STUDENT


@pytest.fixture(scope="module")
def warm_frame(shared_dir, student):
    with av.open(str(shared_dir / "videos/vtest.avi")) as container:
        frame = next(f for i, f in enumerate(container.decode(video=0)) if i == 100)
    rgb = frame.to_ndarray(width=513, height=513, format="rgb24")
    with CONFIG.open(student.read_bytes()) as engine:
        labels = engine.infer(rgb)
    assert np.unique(labels).size > 1
    return rgb, labels


class Device:
    def __init__(self, slot_dir, student, warm_frame, public_key=None) -> None:
        self.slots = ModelSlots(
            slot_dir,
            initial_model=student,
            open_engine=CONFIG.open,
            device_id="cam-1",
            keyring=None if public_key is None else Keyring([public_key]),
        )
        self.running = self.slots.load()
        self.acks = []
        # No frame loop here: the worker warms models up at once, on the frame given here.
        self.handover = Handover(self.running, trial_timeout_s=0)
        self.handover.record_frame(*warm_frame)
        self.slots.start(self.handover, send_ack=self.acks.append)

    @property
    def swaps(self) -> int:
        return self.slots.counters.get("slots.swaps")

    def submit(self, *payloads: bytes) -> None:
        for payload in payloads:
            self.slots.submit(decode(payload))
        assert self.slots.wait_idle(60)
        self.running = self.handover.between_frames()  # as the frame loop's next frame would

    def stop(self):
        self.slots.stop()

    def assert_runs(self, mirror: Mirror, version: int) -> None:
        assert self.running.version == version
        assert self.running.sha256 == sha256_hex(mirror.versions[version])
        assert self.running is self.slots.active


@pytest.fixture
def device(tmp_path, student, warm_frame):
    made = []

    def make(public_key=None):
        d = Device(tmp_path / "slots", student, warm_frame, public_key)
        made.append(d)
        return d

    yield make
    for d in made:
        d.stop()


def test_first_start_runs_the_initial_model_and_persists_it(device, student, tmp_path):
    d = device()
    assert d.running.version is None
    assert d.running.sha256 == sha256_hex(student.read_bytes())
    state = json.loads((tmp_path / "slots" / STATE_FILE).read_text())
    assert state["active"] == "A" and state["A"]["sha256"] == d.running.sha256


def test_a_chain_of_updates_and_a_restart_after_the_swap(device, student, tmp_path, warm_frame):
    d = device()
    mirror = Mirror(student.read_bytes())
    payloads = [mirror.update(v - 1, mirror.next_version(v)) for v in (1, 2, 3)]
    d.submit(*payloads)
    d.assert_runs(mirror, 3)
    assert [a.ok for a in d.acks] == [True, True, True] and d.swaps == 3
    assert d.acks[-1].model_version == 3
    restarted = Device(tmp_path / "slots", student, warm_frame)
    restarted.assert_runs(mirror, 3)
    restarted.stop()


def _rollback(version: int, seq: int) -> bytes:
    control = Control(sampling_rate_fps=1.0, t_update_s=10.0, rollback_to=version)
    return encode(control, device_id="trainer", seq=seq, boot=BOOT)


def _last_rejection(d: Device):
    ack = d.acks[-1]
    assert not ack.ok
    return ack.reason, ack.resync_from


def test_wrong_base_wrong_hash_and_truncated_bodies_are_refused(device, student):
    d = device()
    mirror = Mirror(student.read_bytes())
    d.submit(mirror.update(0, mirror.next_version(1)))
    mirror.next_version(2)
    cases = [
        (mirror.update(1, 2, base_sha256="e" * 64), AckReason.BASE_MISMATCH),
        (mirror.update(1, 2, base_version=0), AckReason.BASE_MISMATCH),
        (mirror.update(1, 2, result_sha256="f" * 64), AckReason.BAD_HASH),
        (mirror.update(1, 2, body=mirror.update(1, 2)[-200:]), AckReason.BAD_PAYLOAD),
        # a qdelta body read as zpatch decompresses, but to the wrong file
        (mirror.update(1, 2, format=UpdateFormat.ZPATCH), AckReason.BAD_HASH),
    ]
    for payload, reason in cases:
        d.submit(payload)
        assert _last_rejection(d) == (reason, 1)
        d.assert_runs(mirror, 1)
    d.submit(mirror.update(1, 2))  # the resync the trainer answers with
    d.assert_runs(mirror, 2)


def test_signatures_are_enforced_when_a_key_is_configured(device, student, tmp_path):
    key = save_keypair(tmp_path / "k.pem", tmp_path / "k.pub")
    d = device(public_key=key.public_key())
    mirror = Mirror(student.read_bytes(), key=key)
    unsigned = Mirror(student.read_bytes())
    intruder = Mirror(
        student.read_bytes(), key=save_keypair(tmp_path / "x.pem", tmp_path / "x.pub")
    )
    for m in (mirror, unsigned, intruder):
        m.next_version(1)
    d.submit(unsigned.update(0, 1))
    assert _last_rejection(d) == (AckReason.BAD_SIGNATURE, None)
    d.submit(intruder.update(0, 1))
    assert _last_rejection(d) == (AckReason.BAD_SIGNATURE, None)
    # a tampered body re-framed by an attacker: the envelope is valid, the signature is not
    genuine = decode(mirror.update(0, 1))
    forged_body = bytearray(genuine.body)
    forged_body[-1] ^= 1
    forged = encode(genuine.msg, device_id="trainer", seq=999, boot=BOOT, body=bytes(forged_body))
    d.submit(forged)
    assert _last_rejection(d) == (AckReason.BAD_SIGNATURE, None)
    assert d.running.version is None
    d.submit(mirror.update(0, 1))
    d.assert_runs(mirror, 1)


def test_an_expired_update_is_refused_and_a_fresh_one_asked_for(
    device, student, tmp_path, monkeypatch
):
    key = save_keypair(tmp_path / "k.pem", tmp_path / "k.pub")
    d = device(public_key=key.public_key())
    mirror = Mirror(student.read_bytes(), key=key)
    mirror.next_version(1)
    queued = mirror.update(0, 1)  # signed now, delivered eight days later
    later = time.time() + SIGNATURE_LIFETIME_S + 86400
    monkeypatch.setattr(time, "time", lambda: later)
    d.submit(queued)
    assert _last_rejection(d)[0] == AckReason.EXPIRED  # the trainer answers with a fresh one
    assert d.running.version is None
    d.submit(mirror.update(0, 1))  # signed at the device's "now"
    d.assert_runs(mirror, 1)


def test_a_replayed_older_version_never_installs_even_signed(device, student, tmp_path):
    key = save_keypair(tmp_path / "k.pem", tmp_path / "k.pub")
    d = device(public_key=key.public_key())
    mirror = Mirror(student.read_bytes(), key=key)
    for v in (1, 2, 3):
        mirror.next_version(v)
    old_model, old_update = mirror.model(1), mirror.update(0, 1)  # captured on the wire
    d.submit(mirror.model(3))
    d.assert_runs(mirror, 3)
    d.submit(old_model)
    assert _last_rejection(d) == (AckReason.STALE_VERSION, 3)
    d.submit(mirror.model(3), old_update)  # a duplicate is fine; the old update has no base
    d.assert_runs(mirror, 3)
    # an update cannot go back at all: its new version must pass its base, which is the running
    with pytest.raises(ValueError, match="new_version must be greater than base_version"):
        mirror.update(3, 2)


def test_tampered_body_without_a_key_fails_its_result_hash(device, student):
    d = device()
    mirror = Mirror(student.read_bytes())
    mirror.next_version(1)
    genuine = decode(mirror.update(0, 1))
    table_end = 3 + 4 + 8 * 40  # flip a byte inside the compressed difference data
    body = bytearray(genuine.body)
    body[min(table_end, len(body) - 8)] ^= 0x40
    d.submit(encode(genuine.msg, device_id="trainer", seq=5, boot=BOOT, body=bytes(body)))
    assert _last_rejection(d)[0] in {AckReason.BAD_HASH, AckReason.BAD_PAYLOAD}
    assert d.running.version is None


def test_duplicates_and_reordered_updates_converge(device, student):
    d = device()
    mirror = Mirror(student.read_bytes())
    one = mirror.update(0, mirror.next_version(1))
    two = mirror.update(1, mirror.next_version(2))
    three = mirror.update(2, mirror.next_version(3))
    d.submit(three, two)  # both ahead of the device: kept, and a resync requested
    assert [(a.reason, a.resync_from) for a in d.acks] == [(AckReason.MISSING_UPDATE, None)] * 2
    d.submit(one)  # the missing base arrives: 1, then the stashed 2 and 3 apply
    d.assert_runs(mirror, 3)
    swaps = d.swaps
    d.submit(three, two)  # QoS 1 redeliveries of what already ran
    d.assert_runs(mirror, 3)
    assert d.swaps == swaps
    assert d.acks[-2].ok and d.acks[-1].reason == AckReason.BASE_MISMATCH


def test_full_model_resync_and_rollback(device, student):
    d = device()
    mirror = Mirror(student.read_bytes())
    for v in (1, 2, 3):
        mirror.next_version(v)
    d.submit(mirror.model(2))
    d.assert_runs(mirror, 2)
    d.submit(mirror.update(2, 3))
    d.assert_runs(mirror, 3)
    rollback = _rollback(2, seq=7)
    d.submit(rollback)
    d.assert_runs(mirror, 2)
    bad = _rollback(1, seq=8)
    d.submit(bad)
    assert d.acks[-1].reason == AckReason.UNKNOWN_VERSION
    d.assert_runs(mirror, 2)


def test_a_model_whose_output_collapses_is_refused(device, student):
    d = device()
    mirror = Mirror(student.read_bytes())
    base = TFLiteFile(mirror.versions[0])
    last_bias = [t for t in base.trainable if t.dtype == np.int32][-1]
    biased = base.values(last_bias).copy()
    biased[0] = np.iinfo(np.int32).max // 2  # background wins every pixel
    mirror.versions[1] = base.patched({last_bias.index: biased})
    d.submit(mirror.update(0, 1))
    assert _last_rejection(d) == (AckReason.INVALID_MODEL, None)
    assert d.running.version is None and d.swaps == 0


def test_a_refused_model_never_reaches_the_slot_a_rollback_needs(
    device, student, tmp_path, warm_frame
):
    d = device()
    mirror = Mirror(student.read_bytes())
    mirror.next_version(1)
    mirror.next_version(2)
    d.submit(mirror.update(0, 1), mirror.update(1, 2))  # v1 in one slot, v2 in the other
    d.assert_runs(mirror, 2)
    base = TFLiteFile(mirror.versions[2])
    last_bias = [t for t in base.trainable if t.dtype == np.int32][-1]
    biased = base.values(last_bias).copy()
    biased[0] = np.iinfo(np.int32).max // 2  # background wins every pixel: refused
    mirror.versions[3] = base.patched({last_bias.index: biased})
    d.submit(mirror.update(2, 3))
    assert _last_rejection(d) == (AckReason.INVALID_MODEL, None)
    rollback = _rollback(1, seq=9)
    d.submit(rollback)
    assert d.acks[-1].ok
    d.assert_runs(mirror, 1)
    d.stop()
    restarted = Device(tmp_path / "slots", student, warm_frame)  # a power cut, then a boot
    restarted.assert_runs(mirror, 1)  # the version it acknowledged last
    assert restarted.slots.counters.get("slots.recovered") == 0
    restarted.stop()


# The simulated power cut ends the worker thread mid-update, which pytest reports.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_crash_between_patch_and_swap_restarts_on_the_old_model(
    device, student, tmp_path, warm_frame, monkeypatch
):
    d = device()
    mirror = Mirror(student.read_bytes())
    d.submit(mirror.update(0, mirror.next_version(1)))
    mirror.next_version(2)

    def power_cut(*args, **kwargs):
        raise SystemExit("power cut")

    # The standby slot is written, then the power goes before the active slot is recorded.
    monkeypatch.setattr(d.slots, "_write_state", power_cut)
    d.slots.submit(decode(mirror.update(1, 2)))
    d.slots._worker.join(30)
    slot_files = sorted(p.name for p in (tmp_path / "slots").iterdir())
    assert slot_files == ["slot_A.model", "slot_B.model", STATE_FILE]
    restarted = Device(tmp_path / "slots", student, warm_frame)
    restarted.assert_runs(mirror, 1)
    restarted.submit(mirror.update(1, 2))
    restarted.assert_runs(mirror, 2)
    restarted.stop()


def test_a_corrupted_slot_file_falls_back_to_a_verified_one(device, student, tmp_path, warm_frame):
    d = device()
    mirror = Mirror(student.read_bytes())
    d.submit(mirror.update(0, mirror.next_version(1)), mirror.update(1, mirror.next_version(2)))
    d.stop()
    state = json.loads((tmp_path / "slots" / STATE_FILE).read_text())
    active_file = tmp_path / "slots" / f"slot_{state['active']}.model"
    damaged = bytearray(active_file.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    active_file.write_bytes(bytes(damaged))
    recovered = Device(tmp_path / "slots", student, warm_frame)
    recovered.assert_runs(mirror, 1)
    assert recovered.slots.counters.get("slots.recovered") == 1
    recovered.stop()
    for slot in ("A", "B"):
        (tmp_path / "slots" / f"slot_{slot}.model").write_bytes(b"garbage")
    fresh = Device(tmp_path / "slots", student, warm_frame)
    assert fresh.running.version is None
    assert fresh.running.sha256 == sha256_hex(student.read_bytes())
    fresh.stop()


def test_an_unexpected_failure_is_acknowledged_and_the_worker_survives(
    device, student, monkeypatch
):
    d = device()
    mirror = Mirror(student.read_bytes())
    mirror.next_version(1)
    real_write = d.slots._write_state
    calls = {"n": 0}

    def disk_full(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(28, "No space left on device")
        return real_write(*args, **kwargs)

    monkeypatch.setattr(d.slots, "_write_state", disk_full)
    d.submit(mirror.update(0, 1))
    assert _last_rejection(d) == (AckReason.INTERNAL_ERROR, None)
    assert d.running.version is None
    d.submit(mirror.update(0, 1))  # the resync: the worker is still there
    d.assert_runs(mirror, 1)
