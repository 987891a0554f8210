"""Fault injection on the real broker: round after round, one fault (seeded random) hits the
loop of a device and the trainer daemon, and every round ends with the device on the very file
the trainer's mirror holds last.

The device runs in its own process (tests/faults.py) and the trainer as ``cloud_trainer serve``;
a man in the middle on the broker forwards everything between them. The faults:

- the trainer SIGKILLed while it labels or trains, the instant it writes its checkpoint or a
  version's file, right after an update left it, while the device applies one, and twice in a
  row (the second time while it starts up);
- the broker restarted, with its persistence and without it (sessions, retained and queued
  messages lost);
- the device SIGKILLed while it applies an update (mid-write of its slots included) and while
  it applies a resync; it restarts from its slot directory;
- updates dropped, delivered twice (and again in a fresh envelope) and reordered; old signed
  updates and an old full model replayed; and a few of these back to back (``chaos``).

After each fault the device pauses (its last segment goes up) and the round converges when
the device runs the mirror's latest file (same version, same sha256), nothing is queued and
neither side has sent anything for a few seconds with the trainer up. Across the whole run the
traffic must show: the device's version only moving forward, no version naming two files, no
update older than what the device runs (no training reverted after a kill), no full model
(the device always runs a file the mirror holds), every replay refused or taken as a duplicate
of what runs, and no traceback in either log.

AMS_FAULT_ROUNDS=<n> runs n rounds (default 20: every fault once, then six more, ~4 min on two
cores); AMS_FAULT_SEED picks the draw; AMS_FAULT_ONLY=drop,reorder draws from those alone;
AMS_FAULT_REPORT=<path> writes the per-fault table and the findings as JSON. The trainer's and
the device's logs, the broker's and the proxy's record of every message (traffic.jsonl) stay in
the test's temporary directory.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_trainer.tools.local_broker import LocalBroker
from edge_runtime.swap import TRIAL_TIMEOUT_S
from shared_schema.messages import Ack, AckReason, Hello, Model, ModelFormat, Update
from shared_schema.signing import Signer
from tests.faults import (
    DropNext,
    Rig,
    Seen,
    Swap,
    Trigger,
    Twice,
    client_config,
    count_lines,
    device_report,
    is_segment,
    is_trainer_update,
    mirror_files,
    mirror_version,
    wait_for,
)
from tests.trainer_helpers import trainer_raw, write_toml

pytestmark = [pytest.mark.broker, pytest.mark.slow]

Fault = Callable[[Rig, random.Random], str | None]  # what it did, None: its moment never came
MQTT_KEYS = {"host", "port", "reconnect_min_s", "reconnect_max_s"}
TRIGGER_S = 40.0  # how long a fault waits for its moment (an update, a segment)


# -- when things happen ---------------------------------------------------------------------


def _next_update(rig: Rig, timeout: float = TRIGGER_S) -> Seen | None:
    return rig.proxy.wait_event(rig.proxy.mark(), is_trainer_update, timeout)


def _median(values: list[float], default: float) -> float:
    recent = sorted(values[-15:])
    return recent[len(recent) // 2] if recent else default


def apply_seconds(log: list[Seen]) -> list[float]:
    """Per update the device took while playing: from its arrival to the acknowledgement."""
    seconds = []
    for i, seen in enumerate(log):
        if is_trainer_update(seen):
            result = (seen.msg.new_version, seen.msg.result_sha256)
            ack = next((s for s in log[i:] if device_report(s) == result), None)
            # 2 s and more: no frame came to warm it up on (a paused device)
            if ack is not None and ack.t - seen.t < TRIAL_TIMEOUT_S:
                seconds.append(ack.t - seen.t)
    return seconds


def apply_window(rig: Rig) -> float:
    """How long the device takes from an update's arrival to its acknowledgement (median)."""
    return _median(apply_seconds(rig.proxy.since(0)), 0.2)


def phase_window(rig: Rig) -> float:
    """How long the trainer takes from a segment to the update trained on it (median)."""
    last, seconds = None, []
    for seen in rig.proxy.since(0):
        if is_segment(seen):
            last = seen.t
        elif is_trainer_update(seen) and seen.msg.new_version == seen.msg.base_version + 1:
            if last is not None:
                seconds.append(seen.t - last)
            last = None
    return _median(seconds, 1.5)


# -- the primitives ----------------------------------------------------------------------------


def kill_trainer(rig: Rig, rng: random.Random) -> str:
    downtime = rng.uniform(0.0, 1.0)
    rig.restart_trainer(downtime)
    return f"trainer killed (down {downtime:.1f} s)"


def bounce_broker(rig: Rig, rng: random.Random, lossy: bool = False) -> str:
    """Restart the broker; ``lossy``: without its persistence (sessions, retained and queued
    messages are gone)."""
    downtime = rng.uniform(0.0, 1.5)
    rig.broker.stop()
    if lossy:
        for saved in rig.broker.workdir.glob("*.db"):
            saved.unlink()
    time.sleep(downtime)
    rig.broker.start()
    return f"broker {'lost its state' if lossy else 'restarted'} (down {downtime:.1f} s)"


def kill_device(rig: Rig, rng: random.Random, update: Update | None = None) -> str:
    """SIGKILL the device and start it again on its slot directory, which it must restart
    from; says where the kill landed in applying ``update``."""
    rig.device.kill()
    landed = _landed(rig, update)
    active = rig.device.recorded()
    active = active.get(active.get("active"), {})
    time.sleep(rng.uniform(0.0, 1.0))
    rig.device.start()
    restarted = rig.device_model()
    if restarted != (active.get("version"), active.get("sha256")):
        rig.problems.append(f"device restarted on {restarted}, slots.json named {active}")
    return f"device killed {landed}, back on v{restarted[0]}"


def _landed(rig: Rig, update: Update | None) -> str:
    """Where a kill of the device landed in applying ``update`` (read off its slot dir)."""
    if update is None:
        return "between updates"
    if partial := rig.device.partial_writes():
        return f"mid-write ({', '.join(partial)})"
    recorded = rig.device.recorded()
    version = recorded.get(recorded.get("active"), {}).get("version") or 0
    if version > update.new_version:
        return "once it had moved past that update"
    if version < update.new_version:
        written = update.result_sha256 in rig.device.slot_files().values()
        return "with the slot written, not recorded" if written else "before writing"
    result = (update.new_version, update.result_sha256)
    acked = any(device_report(s) == result for s in rig.proxy.since(0))
    return "after acknowledging" if acked else "after recording, before acknowledging"


# -- the faults ----------------------------------------------------------------------------


def trainer_kill_training(rig: Rig, rng: random.Random) -> str | None:
    """SIGKILL while the trainer labels a segment or trains on it."""
    window = phase_window(rig)
    if rig.proxy.wait_event(rig.proxy.mark(), is_segment, TRIGGER_S) is None:
        return None
    delay = rng.uniform(0.0, window)
    time.sleep(delay)
    return f"{delay:.2f} s of ~{window:.1f} s after a segment: {kill_trainer(rig, rng)}"


def trainer_kill_persisted(rig: Rig, rng: random.Random) -> str | None:
    """SIGKILL the moment the trainer writes: its checkpoint (the weights of the version it is
    about to make), or the new version's file (while it is written, or once renamed into
    place), before or just as its update leaves."""
    names = rig.session_names()
    wanted = rng.choice(("session.pt.tmp", "mirror/.tmp", "mirror/.tflite"))
    if not wait_for(lambda: _new_name(rig, names, wanted), TRIGGER_S, step=0.0005):
        return None
    rig.trainer.kill()
    on_disk = sorted(rig.session_names() - names)
    latest = rig.mirror()[0]
    sent = any(is_trainer_update(s) and s.msg.new_version == latest for s in rig.proxy.since(0))
    time.sleep(rng.uniform(0.0, 1.0))
    rig.start_trainer()
    return f"killed at {wanted}: new {on_disk}, v{latest} {'sent' if sent else 'not sent'}"


def _new_name(rig: Rig, before: set[str], wanted: str) -> bool:
    """A new name in the session's directory like ``wanted`` (``mirror/.tmp``: a new .tmp
    in the mirror's directory)."""
    where, _, suffix = wanted.rpartition("/")
    found = rig.session_names() - before
    return any(n.startswith(where) and n.endswith(suffix) for n in found)


def trainer_kill_sent(rig: Rig, rng: random.Random) -> str | None:
    """SIGKILL the moment an update left the trainer, before the device has it."""
    trigger = Trigger(rig.trainer.kill)
    rig.proxy.set_tamper(trigger)
    if not trigger.fired.wait(TRIGGER_S):
        return None
    time.sleep(rng.uniform(0.0, 1.0))
    rig.start_trainer()
    return "killed as its update passed"


def trainer_kill_applying(rig: Rig, rng: random.Random) -> str | None:
    """SIGKILL while the device verifies, loads and writes the update it just got."""
    window = apply_window(rig)
    update = _next_update(rig)
    if update is None:
        return None
    delay = rng.uniform(0.0, window)
    time.sleep(delay)
    kill_trainer(rig, rng)
    return f"{delay:.2f} s of ~{window:.2f} s into the device applying v{update.msg.new_version}"


def trainer_kill_twice(rig: Rig, rng: random.Random) -> str | None:
    """SIGKILL, restart, and SIGKILL again while it starts up or resumes its sessions."""
    first = kill_trainer(rig, rng)
    delay = rng.uniform(0.0, 6.0)
    time.sleep(delay)
    return f"{first}, again {delay:.1f} s after restarting: {kill_trainer(rig, rng)}"


def broker_restart(rig: Rig, rng: random.Random) -> str | None:
    """A clean broker restart: sessions and queued messages survive in its persistence."""
    time.sleep(rng.uniform(0.0, 3.0))
    return bounce_broker(rig, rng)


def broker_restart_lossy(rig: Rig, rng: random.Random) -> str | None:
    """The broker restarts without its persistence, right after an update passed: sessions,
    retained messages and whatever it still queued (that update, perhaps) are gone."""
    update = _next_update(rig)
    if update is None:
        return None
    time.sleep(rng.uniform(0.0, 0.2))
    return f"after v{update.msg.new_version} passed: {bounce_broker(rig, rng, lossy=True)}"


def device_kill_mid_write(rig: Rig, rng: random.Random) -> str | None:
    """SIGKILL the device while it applies an update (verify, load, warm up, write the slot,
    record it); it restarts from its slot directory on the model slots.json names."""
    window = apply_window(rig)
    update = _next_update(rig)
    if update is None:
        return None
    delay = rng.uniform(0.0, window * 1.2)
    time.sleep(delay)
    landed = kill_device(rig, rng, update.msg)
    return f"{delay:.2f} s of ~{window:.2f} s after v{update.msg.new_version}: {landed}"


def _is_resync(seen: Seen) -> bool:
    return is_trainer_update(seen) and seen.msg.new_version > seen.msg.base_version + 1


def device_kill_during_resync(rig: Rig, rng: random.Random) -> str | None:
    """An update is dropped; the device, behind, asks for a resync; it is SIGKILLed while
    it applies the trainer's answer, and says hello from its old version on restart."""
    window, tamper = apply_window(rig), DropNext()
    rig.proxy.set_tamper(tamper)
    resync = rig.proxy.wait_event(rig.proxy.mark(), _is_resync, TRIGGER_S)
    if resync is None:
        return None
    time.sleep(rng.uniform(0.0, window))
    return f"resync to v{resync.msg.new_version}: {kill_device(rig, rng, resync.msg)}"


def drop(rig: Rig, rng: random.Random) -> str | None:
    """The next update never reaches the device."""
    tamper = DropNext()
    rig.proxy.set_tamper(tamper)
    if not wait_for(lambda: tamper.dropped, TRIGGER_S):
        return None
    return f"dropped v{tamper.dropped[0].new_version}"


def duplicate(rig: Rig, rng: random.Random) -> str | None:
    """The next update arrives twice (same envelope), then again in a fresh envelope that no
    duplicate filter knows: the device applies it once."""
    tamper = Twice()
    rig.proxy.set_tamper(tamper)
    if not wait_for(lambda: tamper.doubled, TRIGGER_S):
        return None
    time.sleep(rng.uniform(0.0, 1.5))
    update = next(s for s in reversed(rig.proxy.since(0)) if is_trainer_update(s))
    rig.replays.append(rig.proxy.inject(update.msg, update.envelope.body))
    return f"v{tamper.doubled[0].new_version} twice, then once more re-enveloped"


def reorder(rig: Rig, rng: random.Random) -> str | None:
    """The next update is held back until the one after it has gone to the device."""
    tamper = Swap()
    rig.proxy.set_tamper(tamper)
    if not wait_for(lambda: tamper.swapped, TRIGGER_S):
        return None
    return "two consecutive updates delivered newest first"


def _running(rig: Rig) -> int:
    """The version the device runs (0: the initial model, or no state yet)."""
    model = rig.device_model()
    return 0 if model is None or model[0] is None else model[0]


def stale_replay(rig: Rig, rng: random.Random) -> str | None:
    """Old signed updates, as captured and in fresh envelopes, and an old full model signed
    as the trainer signs them, all replayed to the device, which must refuse them."""
    if not wait_for(lambda: _running(rig) >= 2, TRIGGER_S):
        return None  # nothing old enough to replay yet
    running = _running(rig)
    stale = [s for s in rig.proxy.since(0) if is_trainer_update(s) and s.msg.new_version < running]
    oldest = mirror_files(rig.mirror_dir)[0]
    version, body = mirror_version(oldest), oldest.read_bytes()
    if not stale or version >= running:
        return None
    picked = rng.sample(stale, min(3, len(stale)))
    for seen in picked:
        rig.proxy.inject(seen.msg, seen.envelope.body, raw=seen.payload)
        rig.replays.append(rig.proxy.inject(seen.msg, seen.envelope.body))
    full = rig.signer.sign(rig.device_id, Model(version=version, format=ModelFormat.TFLITE), body)
    rig.replays.append(rig.proxy.inject(full, body))
    olds = ", ".join(f"v{s.msg.new_version}" for s in picked)
    return f"updates to {olds} (captured, re-enveloped), v{version} in full; device at v{running}"


def chaos(rig: Rig, rng: random.Random) -> str | None:
    """Two or three of the faults above back to back, at no particular moment."""
    primitives: list[Callable[[], str]] = [
        lambda: kill_trainer(rig, rng),
        lambda: kill_device(rig, rng),
        lambda: bounce_broker(rig, rng),
        lambda: bounce_broker(rig, rng, lossy=True),
        lambda: _drop_now(rig),
    ]
    done = []
    for action in rng.sample(primitives, rng.choice((2, 3))):
        time.sleep(rng.uniform(0.0, 2.0))
        done.append(action())
    return "; ".join(done)


def _drop_now(rig: Rig) -> str:
    rig.proxy.set_tamper(DropNext())
    return "the next update dropped"


FAULTS: dict[str, Fault] = {
    f.__name__: f
    for f in (
        trainer_kill_training,
        trainer_kill_persisted,
        trainer_kill_sent,
        trainer_kill_applying,
        trainer_kill_twice,
        broker_restart,
        broker_restart_lossy,
        device_kill_mid_write,
        device_kill_during_resync,
        drop,
        duplicate,
        reorder,
        stale_replay,
        chaos,
    )
}
ROUNDS = int(os.environ.get("AMS_FAULT_ROUNDS", "20"))  # ~4 min on two cores
CHOSEN = [f for f in os.environ.get("AMS_FAULT_ONLY", "").split(",") if f] or list(FAULTS)
SEED = int(os.environ.get("AMS_FAULT_SEED", "2026"))


# -- what every message must respect -------------------------------------------------------


class Invariants:
    """Fed every message in the order the proxy saw them; collects violations."""

    def __init__(self) -> None:
        self.files: dict[int, str] = {}  # version -> sha256, from both sides
        self.device: tuple[int, str | None] = (-1, None)  # the latest the device reported
        self.full_models = 0
        self.violations: list[str] = []

    def feed(self, seen: Seen) -> None:
        report = device_report(seen)
        if report is not None:
            self._device(*report)
        elif is_trainer_update(seen):
            self._update(seen.msg)
        elif seen.way == "down" and seen.type == "model" and not seen.injected:
            self.full_models += 1
            self.violations.append(f"the trainer sent a full model: {seen.msg}")

    def _device(self, version: int | None, sha256: str | None) -> None:
        number = -1 if version is None else version
        if number < self.device[0]:
            self.violations.append(f"device went back from v{self.device[0]} to v{number}")
        self.device = (number, sha256)
        self._file(version, sha256, "device")

    def _update(self, update: Update) -> None:
        self._file(update.base_version, update.base_sha256, "update base")
        self._file(update.new_version, update.result_sha256, "update result")
        version, sha256 = self.device
        behind = update.new_version < version
        if behind or (update.new_version == version and update.result_sha256 != sha256):
            self.violations.append(
                f"trainer sent v{update.base_version}->v{update.new_version} to a device that"
                f" runs v{version}: its training went back"
            )

    def _file(self, version: int | None, sha256: str | None, what: str) -> None:
        if version is None or version == 0 or sha256 is None:
            return  # the initial model: the device numbers it None, the mirror 0
        known = self.files.setdefault(version, sha256)
        if known != sha256:
            self.violations.append(f"{what}: v{version} is {sha256[:12]}, was {known[:12]}")


def refusals(rig: Rig) -> tuple[int, list[str]]:
    """How many of the replays injected afresh the device answered, and the answers that
    are neither a refusal of a stale one nor the acceptance of a duplicate of what runs."""
    acks = [s.msg for s in rig.proxy.since(0) if s.way == "up" and isinstance(s.msg, Ack)]
    answered = {a.ref_seq: a for a in acks if a.ref_seq in rig.replays}
    expected = {AckReason.STALE_VERSION, AckReason.BASE_MISMATCH}
    odd = [f"{seq}: {a.reason} {a.detail}" for seq, a in answered.items()
           if not a.ok and a.reason not in expected]  # fmt: skip
    return len(answered), odd


def unanswered_hellos(log: list[Seen], within_s: float = 30.0) -> list[str]:
    """Hellos from a device on a model other than the trainer's latest that the trainer did
    not answer with an update from that model (before the device moved on by itself)."""
    latest, unanswered = None, []
    for i, seen in enumerate(log):
        if is_trainer_update(seen):
            latest = seen.msg.result_sha256
        hello = seen.msg if seen.way == "up" and isinstance(seen.msg, Hello) else None
        behind = hello is not None and latest is not None and hello.model_sha256 != latest
        if behind and not _answered(log[i + 1 :], seen.t + within_s, hello):
            unanswered.append(f"hello from v{hello.model_version} at {seen.t:.1f}")
    return unanswered


def _answered(later: list[Seen], deadline: float, hello: Hello) -> bool:
    running = (hello.model_version, hello.model_sha256)
    for seen in later:
        if seen.t > deadline:
            return False
        if device_report(seen) not in (None, running):
            return True  # it took an update queued for it meanwhile
        if is_trainer_update(seen):
            return seen.msg.base_sha256 == hello.model_sha256
    return False


# -- rounds --------------------------------------------------------------------------------


@dataclass
class Tally:
    injections: int = 0
    rounds: int = 0
    converged: int = 0
    converged_at_pause: int = 0
    details: list[str] = field(default_factory=list)


@dataclass
class Round:
    fault: str
    detail: str | None
    at_pause: bool
    converged: bool
    seconds: float


def run_round(rig: Rig, fault: str, rng: random.Random) -> Round:
    started = time.monotonic()
    rig.device.play()
    assert _next_update(rig, 90) is not None, f"no update before the fault\n{rig.diagnostics()}"
    detail = FAULTS[fault](rig, rng)
    rig.recover()
    at_pause = rig.settle()
    converged = at_pause
    if not at_pause:  # one more training phase, then settle again
        rig.device.play()
        _next_update(rig, 60)
        converged = rig.settle()
    return Round(fault, detail, at_pause, converged, time.monotonic() - started)


def schedule(rounds: int, seed: int) -> list[str]:
    """Every fault once per cycle, each cycle in its own seeded order."""
    rng, order = random.Random(seed), []
    while len(order) < rounds:
        cycle = list(CHOSEN)
        rng.shuffle(cycle)
        order += cycle
    return order[:rounds]


def table(tallies: dict[str, Tally]) -> str:
    lines = [f"{'fault':26} {'injections':>10} {'converged':>9} {'at pause':>8}"]
    for name, t in tallies.items():
        lines.append(f"{name:26} {t.injections:>10} {t.converged:>9} {t.converged_at_pause:>8}")
    return "\n".join(lines)


def tally(rounds: list[Round]) -> dict[str, Tally]:
    tallies = {name: Tally() for name in FAULTS}
    for result in rounds:
        t = tallies[result.fault]
        t.rounds += 1
        t.injections += result.detail is not None
        t.converged += result.converged
        t.converged_at_pause += result.at_pause
        t.details.append(f"{result.detail} ({result.seconds:.0f} s)")
    return tallies


@dataclass
class Findings:
    """What the whole run's traffic says, beside each round's convergence."""

    violations: list[str]  # Invariants
    problems: list[str]  # devices that restarted elsewhere than slots.json says
    odd_answers: list[str]  # replays answered other than as stale or as a duplicate
    answered_replays: int
    replays: int
    full_models: int
    final_version: int
    unanswered_hellos: list[str]  # reported, not asserted: the next phase heals them
    apply_seconds: list[float]  # quartiles: how long the device took to apply an update
    trainer_log: dict[str, int]  # lines of note in its log
    device_log: dict[str, int]


TRAINER_NOTES = {
    "tracebacks": "Traceback",
    "acks ignored": "ignored an ack",
    "stale checkpoints": "training from the mirror's file",
    "checkpoints refused": "refused (",
    "mirror files damaged": ".damaged",
    "refusals": "device refused an update",
}
DEVICE_NOTES = {
    "tracebacks": "Traceback",
    "partial writes removed": "removed a write a power cut interrupted",
    "slots recovered": "recovered slot",
    "refusals": "slots: rejected",
}


def findings(rig: Rig) -> Findings:
    invariants, log = Invariants(), rig.proxy.since(0)
    for seen in log:
        invariants.feed(seen)
    answered, odd = refusals(rig)
    return Findings(
        invariants.violations,
        rig.problems,
        odd,
        answered,
        len(rig.replays),
        invariants.full_models,
        invariants.device[0],
        unanswered_hellos(log),
        _quartiles(apply_seconds(log)),
        count_lines(rig.trainer.log_path, TRAINER_NOTES),
        count_lines(rig.device.log_path, DEVICE_NOTES),
    )


def _quartiles(values: list[float]) -> list[float]:
    ordered = sorted(values) or [0.0]
    return [round(ordered[int(q * (len(ordered) - 1))], 3) for q in (0.0, 0.25, 0.5, 0.75, 1.0)]


def report(rounds: list[Round], found: Findings, seconds: float) -> None:
    """The per-fault table on stdout and, with AMS_FAULT_REPORT, as JSON."""
    tallies = tally(rounds)
    print(f"\n{table(tallies)}\n{len(rounds)} rounds in {seconds:.0f} s (seed {SEED})")
    print(json.dumps(asdict(found), indent=1))
    path = os.environ.get("AMS_FAULT_REPORT")
    if path:
        document = {
            "seed": SEED,
            "rounds": len(rounds),
            "seconds": round(seconds, 1),
            "faults": {name: asdict(t) for name, t in tallies.items()},
            "findings": asdict(found),
            "log": [asdict(r) for r in rounds],
        }
        Path(path).write_text(json.dumps(document, indent=1))


def run_rounds(rig: Rig, rounds: list[Round]) -> None:
    rng = random.Random(SEED)
    for number, fault in enumerate(schedule(ROUNDS, SEED)):
        result = run_round(rig, fault, rng)
        rounds.append(result)
        print(f"round {number}: {result}", flush=True)
        if not result.converged:
            print(rig.diagnostics(), flush=True)


@pytest.fixture
def open_broker(tmp_path: Path) -> Iterator[LocalBroker]:
    """A mosquitto of its own, open to anonymous clients: the proxy forwards between two topic
    trees, which a fleet's ACL (the ``broker`` fixture's) rightly forbids."""
    with LocalBroker(tmp_path / "broker") as broker:
        yield broker


def _rig(tmp_path: Path, broker: LocalBroker, shared_dir: Path, key: Ed25519PrivateKey) -> Rig:
    raw = trainer_raw(tmp_path)
    raw["mqtt"].update(client_config(broker.port).model_dump(include=MQTT_KEYS))
    raw["asr"]["enabled"] = False  # 1 fps throughout
    raw["atr"] = {"enabled": False, "tau_min_s": 2.0}  # an update every 2 s of video
    raw["updates"]["ack_timeout_s"] = 5.0  # an update lost with the broker's state comes again
    config = write_toml(raw, tmp_path / "trainer.toml")
    video = shared_dir / "videos" / "vtest.avi"
    return Rig(broker, config, tmp_path, video, Signer(key))


@pytest.mark.timeout(180 + 90 * ROUNDS)
def test_every_fault_ends_with_the_device_on_the_mirrors_file(
    tmp_path, open_broker, shared_dir, trainer_key
):
    rig = _rig(tmp_path, open_broker, shared_dir, trainer_key)
    rounds: list[Round] = []
    started = time.monotonic()
    rig.start()
    try:
        run_rounds(rig, rounds)
    finally:
        rig.close()
        found = findings(rig)
        report(rounds, found, time.monotonic() - started)
    assert [r.fault for r in rounds if r.detail is None] == []  # every fault found its moment
    assert [(r.fault, r.detail) for r in rounds if not r.converged] == []
    # ... without one more training phase: a paused device gets what it lost, too
    assert [(r.fault, r.detail) for r in rounds if not r.at_pause] == []
    assert found.violations == [] and found.problems == [] and found.odd_answers == []
    assert found.full_models == 0
    assert found.trainer_log.get("tracebacks") == 0 and found.device_log.get("tracebacks") == 0
    assert found.answered_replays == found.replays  # the device answered every replay
    assert found.final_version >= len(rounds)  # and moved forward all along
