"""The machinery of tests/test_fault_injection.py: a device in its own process (so it can be
SIGKILLed mid-write), the trainer daemon as a subprocess, and a man in the middle on the real
broker that forwards, records, drops, duplicates and reorders what passes between them.

The device runs under its own topic prefix (``mitm``), the trainer under ``ams``; the proxy
forwards every message between the two trees unchanged (envelopes and signatures do not name
the prefix), so nothing reaches the device that did not pass it.

python -m tests.faults device PORT WORKDIR DEVICE_ID VIDEO STATUS_JSON
    the device: the real edge runtime with the cpu profile, playing VIDEO in real time; it
    writes its state to STATUS_JSON ten times a second and takes "pause", "play" and "quit"
    on stdin (pause: no more frames, the last segment flushed and delivered).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from shared_schema.envelope import Envelope, decode, encode, sha256_hex
from shared_schema.errors import ProtocolError
from shared_schema.messages import Ack, AnyMessage, Hello, MessageType, Model, Update
from shared_schema.mqtt import BrokerConfig, Inbound, MqttLink, Outbound
from shared_schema.signing import Signer
from shared_schema.topics import DELIVERY

ROOT = Path(__file__).resolve().parents[1]
TRAINER_PREFIX = "ams"
DEVICE_PREFIX = "mitm"
STATUS_EVERY_S = 0.1

if TYPE_CHECKING:
    from cloud_trainer.tools.local_broker import LocalBroker
    from edge_runtime.profile import Profile
    from edge_runtime.runtime import EdgeRuntime


def wait_for(predicate: Callable[[], object], timeout: float, step: float = 0.05) -> bool:
    """Whether ``predicate`` became true within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


# -- the device, in its own process ------------------------------------------------------------


class _Remote:
    """The device process's side of its stdin: play, pause, quit."""

    def __init__(self) -> None:
        self.playing = threading.Event()
        self.playing.set()
        self.quit = threading.Event()
        self.paused = False  # set by the frame loop once the last segment is delivered
        threading.Thread(target=self._read, name="remote", daemon=True).start()

    def _read(self) -> None:
        for line in sys.stdin:
            command = line.strip()
            if command == "pause":
                self.playing.clear()
            elif command == "play":
                self.paused = False
                self.playing.set()
            elif command == "quit":
                break
        self.quit.set()
        self.playing.set()


def _write_status(path: Path, state: dict[str, object]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)  # a reader never sees half a file; no fsync: a kill, not a power cut


def _device_state(runtime: EdgeRuntime, remote: _Remote) -> dict[str, object]:
    model = runtime.model
    return {
        "pid": os.getpid(),
        "version": model.version,
        "sha256": model.sha256,
        "connected": runtime.endpoint.link.connected,
        "spool": runtime.uplink.depth,
        "paused": remote.paused,
        "frames": runtime.stats.frames,
        "counters": runtime.counters.snapshot(),
        "time": time.time(),
    }


def _report(runtime: EdgeRuntime, remote: _Remote, path: Path) -> None:
    while not remote.quit.is_set():
        _write_status(path, _device_state(runtime, remote))
        time.sleep(STATUS_EVERY_S)


def _pause(runtime: EdgeRuntime, remote: _Remote) -> None:
    """No more frames: the segment being filled goes up, then wait for play."""
    runtime.segments.flush()
    wait_for(lambda: runtime.segments.pending == 0, 10)
    time.sleep(0.5)  # the encoder hands its last segment to the spool
    runtime.uplink.drain(30)
    remote.paused = True
    remote.playing.wait()


def _play(runtime: EdgeRuntime, remote: _Remote, video: str) -> None:
    from edge_runtime.sources import open_source

    with open_source(video, realtime=True, loop=True) as frames:
        for frame in frames:
            if not remote.playing.is_set():
                _pause(runtime, remote)
            if remote.quit.is_set():
                return
            runtime.process(frame)


def client_config(port: int, **overrides: object) -> BrokerConfig:
    """A client of the local broker at 127.0.0.1:``port``, with quick reconnects."""
    fast = {"reconnect_min_s": 0.1, "reconnect_max_s": 1.0}
    return BrokerConfig.model_validate({"host": "127.0.0.1", "port": port, **fast, **overrides})


def device_profile(port: int, workdir: Path, device_id: str) -> Profile:
    """The bundled cpu profile on the device's side of the proxy."""
    from edge_runtime.profile import bundled_profile

    mqtt = client_config(port, prefix=DEVICE_PREFIX).model_dump(exclude_none=True, mode="json")
    return bundled_profile(
        "cpu",
        workdir,
        device_id=device_id,
        mqtt=mqtt,
        inference={"threads": 1},  # two cores for a trainer, a teacher and a device
        buffer={"t_update_s": 2.0},
        telemetry={"interval_s": 5.0, "results_rate_hz": 0.0},
    )


def device_main(port: str, workdir: str, device_id: str, video: str, status: str) -> int:
    import logging

    from edge_runtime.runtime import EdgeRuntime

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    runtime = EdgeRuntime.from_profile(device_profile(int(port), Path(workdir), device_id))
    runtime.start()
    remote = _Remote()
    threading.Thread(target=_report, args=(runtime, remote, Path(status)), daemon=True).start()
    try:
        _play(runtime, remote, video)
    finally:
        runtime.shutdown(drain_s=2)
    return 0


class DeviceProcess:
    """The test's handle on the device process: start, SIGKILL, pause, play, read its state."""

    def __init__(self, port: int, workdir: Path, device_id: str, video: Path) -> None:
        self.port, self.workdir, self.device_id, self.video = port, workdir, device_id, video
        self.status_path = workdir / "status.json"
        self.log_path = workdir / "device.log"
        self.slot_dir = workdir / "slots"
        self._proc: subprocess.Popen[str] | None = None
        self.starts = 0

    def start(self, timeout: float = 60.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.status_path.unlink(missing_ok=True)
        args = [str(self.port), str(self.workdir), self.device_id, str(self.video)]
        with open(self.log_path, "a") as log:
            log.write(f"\n==== device start {self.starts} at {time.time():.3f}\n")
            log.flush()
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "tests.faults", "device", *args, str(self.status_path)],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=log,
                text=True,
            )
        self.starts += 1
        if not wait_for(lambda: (self.status() or {}).get("connected"), timeout):
            raise AssertionError(f"the device did not start:\n{self.log_tail()}")

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: a power cut as far as the process is concerned."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait()

    def stop(self) -> None:
        if self.alive:
            self._command("quit")
            try:
                self._proc.wait(20)  # type: ignore[union-attr]
            except subprocess.TimeoutExpired:
                self.kill()

    def pause(self, timeout: float = 60.0) -> bool:
        """No more segments once this returns True: the last one is delivered."""
        self._command("pause")
        return wait_for(lambda: (self.status() or {}).get("paused"), timeout)

    def play(self) -> None:
        self._command("play")
        wait_for(lambda: not (self.status() or {}).get("paused"), 5)

    def _command(self, line: str) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(line + "\n")
        self._proc.stdin.flush()

    def status(self) -> dict | None:
        try:
            state = json.loads(self.status_path.read_text())
        except (OSError, ValueError):
            return None
        return state if self._proc is not None and state["pid"] == self._proc.pid else None

    def recorded(self) -> dict:
        """slots.json: what the device restarts on."""
        try:
            return json.loads((self.slot_dir / "slots.json").read_text())
        except (OSError, ValueError):
            return {}

    def slot_files(self) -> dict[str, str]:
        """The sha256 of each slot's file."""
        return {p.name: sha256_hex(p.read_bytes()) for p in self.slot_dir.glob("slot_*.model")}

    def partial_writes(self) -> list[str]:
        return sorted(p.name for p in self.slot_dir.glob("*.tmp"))

    def log_tail(self, lines: int = 60) -> str:
        return tail(self.log_path, lines)


def count_lines(path: Path, needles: dict[str, str]) -> dict[str, int]:
    """How many lines of a log contain each needle."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {}
    return {name: sum(needle in line for line in lines) for name, needle in needles.items()}


def tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} unreadable)"


# -- the trainer, as a subprocess ----------------------------------------------------------------


class TrainerProcess:
    """``python -m cloud_trainer serve``, its log appended to ``log_path``."""

    def __init__(self, config_path: Path, log_path: Path) -> None:
        self.config_path, self.log_path = config_path, log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0

    def start(self) -> None:
        with open(self.log_path, "a") as log:
            log.write(f"\n==== trainer start {self.starts} at {time.time():.3f}\n")
            log.flush()
            serve = ["serve", "--config", str(self.config_path)]
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "cloud_trainer", "--log-level", "INFO", *serve],
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        self.starts += 1

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def kill(self) -> bool:
        """SIGKILL, whatever it is doing; False if it was not running."""
        if not self.alive:
            return False
        self._proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        self._proc.wait()  # type: ignore[union-attr]
        self.kills += 1
        return True

    def stop(self) -> None:
        if self.alive:
            self._proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            try:
                self._proc.wait(30)  # type: ignore[union-attr]
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 60) -> str:
        return tail(self.log_path, lines)


def mirror_version(path: Path) -> int:
    """The version a mirror file holds: ``v00000012.tflite`` or ``v00000012-<hash>.tflite``."""
    return int(path.stem[1:].partition("-")[0])


def mirror_files(mirror_dir: Path) -> list[Path]:
    """The mirror's version files, oldest first."""
    return sorted(mirror_dir.glob("v*.tflite"), key=mirror_version)


def latest_mirror(mirror_dir: Path) -> tuple[int, str] | None:
    """The trainer mirror's latest version and its file's sha256 (from disk)."""
    for _ in range(5):  # a file pruned between the listing and the read: list again
        files = mirror_files(mirror_dir)
        if not files:
            return None
        try:
            return mirror_version(files[-1]), sha256_hex(files[-1].read_bytes())
        except FileNotFoundError:
            continue
    return None


# -- the man in the middle -------------------------------------------------------------------


@dataclass
class Seen:
    """One message as it passed the proxy (``way``: "down" to the device, "up" to the
    trainer), or one the test injected (``injected``)."""

    t: float
    way: str
    type: str
    envelope: Envelope | None
    payload: bytes
    injected: bool = False

    @property
    def msg(self) -> AnyMessage | None:
        return None if self.envelope is None else self.envelope.msg


class Tamper:
    """What the proxy does with the trainer's updates: by default, forward each once."""

    def on_update(self, seen: Seen) -> list[bytes]:
        return [seen.payload]

    def release(self) -> list[bytes]:
        """Whatever it still holds, to forward now (the fault is over)."""
        return []


@dataclass
class Forwarded:
    """The events the rig waits on."""

    cond: threading.Condition = field(default_factory=threading.Condition)
    log: list[Seen] = field(default_factory=list)


class Proxy:
    """Forwards the device's tree to the trainer's and back, recording everything."""

    def __init__(self, broker: BrokerConfig, device_id: str) -> None:
        self.device_id = device_id
        self.tamper = Tamper()
        self._tamper_lock = threading.Lock()
        self.events = Forwarded()
        self.link = MqttLink(broker, client_id=f"mitm-{device_id}")
        down, up = f"{TRAINER_PREFIX}/{device_id}/down/#", f"{DEVICE_PREFIX}/{device_id}/up/#"
        self.link.subscribe(down, 1, self._down)
        self.link.subscribe(up, 1, self._up)
        self.link.subscribe(f"{DEVICE_PREFIX}/{device_id}/status", 1, self._up)
        # not forwarded: the trainer's figures say which trainer process is up, and since when
        self.link.subscribe(f"{TRAINER_PREFIX}/{device_id}/metrics", 0, self._metrics)

    def start(self) -> None:
        self.link.start()
        assert self.link.wait_connected(10)

    def stop(self) -> None:
        self.link.stop()

    # -- forwarding ----------------------------------------------------------------------------

    def _down(self, inbound: Inbound) -> None:
        seen = self._record("down", inbound)
        if seen.type == MessageType.UPDATE.value and seen.envelope is not None:
            with self._tamper_lock:
                payloads = self.tamper.on_update(seen)
        else:
            payloads = [inbound.payload]
        for payload in payloads:
            self.to_device(seen.type, payload)

    def _metrics(self, inbound: Inbound) -> None:
        self._record("metrics", inbound)

    def _up(self, inbound: Inbound) -> None:
        seen = self._record("up", inbound)
        topic = inbound.topic.replace(f"{DEVICE_PREFIX}/", f"{TRAINER_PREFIX}/", 1)
        self.link.publish(Outbound(topic, inbound.payload, inbound.qos, self._retain(seen.type)))

    def to_device(self, msg_type: str, payload: bytes) -> None:
        topic = f"{DEVICE_PREFIX}/{self.device_id}/down/{msg_type}"
        self.link.publish(Outbound(topic, payload, 1, self._retain(msg_type)))

    @staticmethod
    def _retain(msg_type: str) -> bool:
        try:
            return DELIVERY[MessageType(msg_type)].retain
        except ValueError:
            return False

    def _record(self, way: str, inbound: Inbound) -> Seen:
        msg_type = inbound.topic.rsplit("/", 1)[-1]
        try:
            envelope = decode(inbound.payload)
        except ProtocolError:
            envelope = None
        seen = Seen(time.monotonic(), way, msg_type, envelope, inbound.payload)
        self.record(seen)
        return seen

    def record(self, seen: Seen) -> None:
        with self.events.cond:
            self.events.log.append(seen)
            self.events.cond.notify_all()

    # -- faults --------------------------------------------------------------------------------

    def set_tamper(self, tamper: Tamper) -> None:
        with self._tamper_lock:
            self.tamper = tamper

    def clear_tamper(self) -> int:
        """Back to plain forwarding; what the tamper held is forwarded now. Returns how many."""
        with self._tamper_lock:
            held, self.tamper = self.tamper.release(), Tamper()
        for payload in held:
            self.to_device(MessageType.UPDATE.value, payload)
        return len(held)

    def inject(self, msg: Model | Update, body: bytes, *, raw: bytes | None = None) -> int:
        """Publish to the device as if the trainer had: ``raw`` as captured, or ``msg`` in a
        fresh envelope (a new boot, so no duplicate filter knows it). Returns its seq."""
        seq = secrets.randbelow(2**31) + 2**31
        boot = secrets.token_hex(8)
        payload = raw or encode(msg, device_id="trainer", seq=seq, boot=boot, body=body)
        self.record(Seen(time.monotonic(), "down", msg.type, decode(payload), payload, True))
        self.to_device(msg.type, payload)
        return decode(payload).header.seq

    # -- reading the record --------------------------------------------------------------------

    def mark(self) -> int:
        with self.events.cond:
            return len(self.events.log)

    def since(self, mark: int) -> list[Seen]:
        with self.events.cond:
            return self.events.log[mark:]

    def wait_event(
        self, mark: int, predicate: Callable[[Seen], bool], timeout: float
    ) -> Seen | None:
        """The first event from ``mark`` on that matches, waiting up to ``timeout`` s."""
        deadline = time.monotonic() + timeout
        with self.events.cond:
            while True:
                for seen in self.events.log[mark:]:
                    if predicate(seen):
                        return seen
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.events.cond.wait(left)

    def dump(self, path: Path) -> None:
        """The record as JSON lines (time, way, type, message), for a post-mortem."""
        with self.events.cond, open(path, "w") as out:
            for seen in self.events.log:
                msg = None if seen.msg is None else seen.msg.model_dump(mode="json")
                header = seen.envelope.header if seen.envelope else None
                line = {"t": round(seen.t, 3), "way": seen.way, "type": seen.type, "msg": msg,
                        "seq": header and header.seq, "boot": header and header.boot,
                        "injected": seen.injected}  # fmt: skip
                out.write(json.dumps(line) + "\n")

    def last_time(self) -> float:
        """When the last message between trainer and device passed (not telemetry)."""
        with self.events.cond:
            quiet = ("telemetry", "status", "metrics")
            traffic = [s.t for s in self.events.log if s.type not in quiet]
        return traffic[-1] if traffic else 0.0

    def trainer_up_since(self, started: float) -> float | None:
        """When a trainer started at ``started`` (monotonic) first published its figures: its
        boot id is one no figures before ``started`` carried. None: not yet."""
        with self.events.cond:
            figures = [s for s in self.events.log if s.way == "metrics" and s.envelope]
        old = {s.envelope.header.boot for s in figures if s.t <= started}  # type: ignore[union-attr]
        new = [s.t for s in figures if s.t > started and s.envelope.header.boot not in old]  # type: ignore[union-attr]
        return new[0] if new else None


def is_trainer_update(seen: Seen) -> bool:
    return seen.way == "down" and not seen.injected and isinstance(seen.msg, Update)


def is_segment(seen: Seen) -> bool:
    return seen.way == "up" and seen.type == MessageType.SEGMENT.value


def device_report(seen: Seen) -> tuple[int | None, str | None] | None:
    """The model a device message says the device runs: hellos and model/update acks."""
    msg = seen.msg
    if seen.way != "up":
        return None
    if isinstance(msg, Hello):
        return msg.model_version, msg.model_sha256
    if isinstance(msg, Ack) and msg.ref_type in ("update", "model"):
        return msg.model_version, msg.model_sha256
    return None


# -- tampers ---------------------------------------------------------------------------------


class DropNext(Tamper):
    """The next update never reaches the device."""

    def __init__(self) -> None:
        self.dropped: list[Update] = []

    def on_update(self, seen: Seen) -> list[bytes]:
        if not self.dropped:
            self.dropped.append(seen.msg)
            return []
        return [seen.payload]


class Twice(Tamper):
    """The next update reaches the device twice, as the broker's QoS 1 redelivery would."""

    def __init__(self) -> None:
        self.doubled: list[Update] = []

    def on_update(self, seen: Seen) -> list[bytes]:
        if self.doubled:
            return [seen.payload]
        self.doubled.append(seen.msg)
        return [seen.payload, seen.payload]


class Swap(Tamper):
    """The next update is held back and follows the one after it."""

    def __init__(self) -> None:
        self.held: list[bytes] = []
        self.swapped = False

    def on_update(self, seen: Seen) -> list[bytes]:
        if self.swapped:
            return [seen.payload]
        if not self.held:
            self.held.append(seen.payload)
            return []
        self.swapped = True
        held, self.held = self.held, []
        return [seen.payload, *held]

    def release(self) -> list[bytes]:
        held, self.held = self.held, []
        return held


class Trigger(Tamper):
    """Runs ``action`` on the next update before forwarding it (e.g. SIGKILL the trainer
    that just sent it)."""

    def __init__(self, action: Callable[[], object]) -> None:
        self._action = action
        self.fired = threading.Event()

    def on_update(self, seen: Seen) -> list[bytes]:
        if not self.fired.is_set():
            self._action()
            self.fired.set()
        return [seen.payload]


# -- the rig: broker, trainer, proxy, device ---------------------------------------------------


class Rig:
    """One device and the trainer on the real broker, the proxy between them."""

    def __init__(
        self, broker: LocalBroker, config_path: Path, workdir: Path, video: Path, signer: Signer
    ) -> None:
        self.device_id = "cam-f"
        self.signer = signer  # the trainer's key: replays are signed as it signs
        self.replays: list[int] = []  # seqs of the envelopes injected afresh
        self.problems: list[str] = []
        self.broker = broker
        self.proxy = Proxy(client_config(broker.port), self.device_id)
        self.trainer = TrainerProcess(config_path, workdir / "trainer.log")
        self.device = DeviceProcess(broker.port, workdir / self.device_id, self.device_id, video)
        self.mirror_dir = workdir / "ckpt" / self.device_id / "mirror"
        self.workdir = workdir
        self.trainer_started = 0.0

    def start(self) -> None:
        self.proxy.start()
        self.start_trainer()
        self.device.start()

    def close(self) -> None:
        self.device.stop()
        self.trainer.stop()
        self.proxy.stop()
        self.proxy.dump(self.workdir / "traffic.jsonl")

    def start_trainer(self) -> None:
        self.trainer_started = time.monotonic()
        self.trainer.start()

    def restart_trainer(self, downtime_s: float = 0.0) -> None:
        self.trainer.kill()
        time.sleep(downtime_s)
        self.start_trainer()

    def recover(self) -> None:
        """The fault is over: plain forwarding, and whatever was down is started again."""
        if not self.broker.running:
            self.broker.start()
        self.proxy.clear_tamper()
        if not self.trainer.alive:
            self.start_trainer()
        if not self.device.alive:
            self.device.start()

    def session_names(self) -> set[str]:
        """The names in the session's directory and its mirror's, partial writes included."""
        names = set()
        for directory, prefix in ((self.mirror_dir.parent, ""), (self.mirror_dir, "mirror/")):
            with contextlib.suppress(FileNotFoundError):
                names |= {prefix + entry.name for entry in os.scandir(directory)}
        return names

    def mirror(self) -> tuple[int, str] | None:
        return latest_mirror(self.mirror_dir)

    def device_model(self) -> tuple[int | None, str] | None:
        state = self.device.status()
        return None if state is None else (state["version"], state["sha256"])

    def settled(self, quiet_s: float) -> bool:
        """Device on the mirror's latest file, nothing queued, and no traffic for ``quiet_s``
        since the last message and since the trainer process was up."""
        state, mirror = self.device.status(), self.mirror()
        if state is None or mirror is None or state["spool"] or not self.device.alive:
            return False
        if (state["version"], state["sha256"]) != mirror:
            return False
        up = self.proxy.trainer_up_since(self.trainer_started)
        if up is None or not self.trainer.alive:
            return False
        return time.monotonic() - max(up, self.proxy.last_time()) >= quiet_s

    def settle(self, timeout: float = 45.0, quiet_s: float = 4.0) -> bool:
        """Pause the device (its last segment goes up) and wait until it and the trainer's
        mirror are on the same file with nothing left to do."""
        return self.device.pause() and wait_for(lambda: self.settled(quiet_s), timeout, 0.2)

    def diagnostics(self) -> str:
        return (
            f"device {self.device.status()} recorded {self.device.recorded()}\n"
            f"mirror {self.mirror()}\n"
            f"--- trainer log\n{self.trainer.log_tail(40)}\n"
            f"--- device log\n{self.device.log_tail(40)}\n"
            f"--- broker log\n{tail(self.broker.log_path, 20)}"
        )


if __name__ == "__main__":
    if sys.argv[1:2] != ["device"]:
        sys.exit(__doc__)
    sys.exit(device_main(*sys.argv[2:7]))
