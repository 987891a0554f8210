"""``cloud-trainer demo``: the whole loop on one machine, on real videos.

A broker (a local mosquitto unless ``--broker`` names one), the trainer daemon, and N edge
runtimes, each in its own process as on real devices (``demo_device``), playing the videos in
real time. A live view shows per device its fps, sampling rate, model version, updates applied,
uplink/downlink and its labels' mIoU against the teacher beside the pretrained student's on the
same frames. At the end (or on Ctrl-C) ``demo_report`` writes report.md, report.json and a plot.
Training uses lighter settings than the default (smaller crops and K) so that a laptop keeps up;
they are printed at the start.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

from cloud_trainer.config import TrainerConfig, load_config
from cloud_trainer.daemon import TrainerDaemon
from cloud_trainer.dashboard.config import DASHBOARD_PORT, new_token_file
from cloud_trainer.fleet import keys
from cloud_trainer.tools.demo_device import DeviceSpec, run_device
from cloud_trainer.tools.demo_report import percent, read_status, running_miou, write_report
from cloud_trainer.tools.local_broker import free_port, local_fleet
from shared_schema.mqtt import BrokerConfig

DEMO_TRAINING = {"resolution": (257, 257), "iterations": 8, "batch_size": 2}
_STOP_S = 20.0  # a device process's time to deliver its last segment and exit


def demo_trainer_config(
    mqtt: BrokerConfig,
    workdir: Path,
    signing_key: Path,
    dashboard_port: int = 0,
    token_file: Path | None = None,
) -> TrainerConfig:
    """The default trainer with the demo's broker, key and lighter training; the dashboard on
    ``dashboard_port`` (0: a free one), its operator token in ``token_file`` or a new one."""
    config = load_config()
    token_file = token_file or new_token_file(workdir / "dashboard-token")
    dashboard = {"port": dashboard_port or free_port(), "token_file": token_file}
    return config.model_copy(
        update={
            "updates": config.updates.model_copy(update={"signing_key": signing_key}),
            "mqtt": mqtt,
            "training": config.training.model_copy(update=DEMO_TRAINING),
            "checkpoint": config.checkpoint.model_copy(update={"directory": workdir / "trainer"}),
            # a port of its own: the demo must not collide with a trainer on this machine
            "metrics": config.metrics.model_copy(update={"prometheus_port": free_port()}),
            "dashboard": config.dashboard.model_copy(update=dashboard),
        }
    )


@dataclass(frozen=True)
class _Broker:
    trainer: BrokerConfig
    devices: dict[str, dict[str, object]]  # each device's [mqtt] table
    signing_key: Path
    device_keys: dict[str, str]
    address: str


@contextlib.contextmanager
def _broker(
    address: str | None, workdir: Path, device_ids: list[str], emit: Callable[[str], None]
) -> Iterator[_Broker]:
    """The demo's own broker, secured as a fleet's is, or one named by ``--broker``."""
    if address is not None:
        emit(f"demo: WARNING: --broker {address}: plain MQTT with no TLS, logins or ACL "
             "(development only); updates are still signed")  # fmt: skip
        host, _, port = address.rpartition(":")
        table: dict[str, object] = {"host": host, "port": int(port), "reconnect_min_s": 0.1}
        signing_key, device_keys = keys.for_this_run(workdir / "keys")
        devices = {d: table for d in device_ids}
        yield _Broker(BrokerConfig(**table), devices, signing_key, device_keys, address)
        return
    with local_fleet(workdir, device_ids) as secured:
        broker = secured.broker
        yield _Broker(
            broker.client_config(),
            {d: broker.mqtt_table(d) for d in device_ids},
            secured.signing_key,
            secured.device_keys,
            f"{broker.host}:{broker.port} (TLS, a login per client, ACL)",
        )


def run_demo(
    videos: list[Path],
    out: Path,
    *,
    devices: int = 1,
    duration_s: float = 120.0,
    broker: str | None = None,
    dashboard_port: int = DASHBOARD_PORT,
    token_file: Path | None = None,
    console: Console | None = None,
    emit: Callable[[str], None] = print,
) -> dict[str, object]:
    """Run the demo; returns the report (also written under ``out``)."""
    console = console or Console()
    with tempfile.TemporaryDirectory(prefix="amstream-demo-") as tmp:
        workdir = Path(tmp)
        ids = [f"demo-{i}" for i in range(devices)]
        with _broker(broker, workdir, ids, emit) as secured:  # signed, as deployed
            config = demo_trainer_config(
                secured.trainer, workdir, secured.signing_key, dashboard_port, token_file
            )
            specs = [
                DeviceSpec(
                    device_id=device_id,
                    video=str(videos[i % len(videos)]),
                    mqtt=secured.devices[device_id],
                    workdir=str(workdir / device_id),
                    status_path=str(workdir / f"{device_id}.json"),
                    duration_s=duration_s,
                    teacher_model=str(config.teacher.model),
                    student_model=str(config.student.model),
                    keys=secured.device_keys,
                )
                for i, device_id in enumerate(ids)
            ]
            emit(
                f"demo: broker on {secured.address}; trainer: student {config.student.model.name}, "
                f"teacher {config.teacher.model.name}, training {DEMO_TRAINING}; metrics on "
                f"http://127.0.0.1:{config.metrics.prometheus_port}/metrics; "
                + ", ".join(f"{s.device_id} on {Path(s.video).name}" for s in specs)
            )
            daemon = TrainerDaemon(config)
            daemon.start()
            assert daemon.dashboard is not None
            emit(f"demo: dashboard on {daemon.dashboard.url} (to act on a device, sign in with"
                 f" the token in {config.dashboard.token_file})")  # fmt: skip
            started = time.monotonic()
            try:
                _run_devices(specs, console, emit)
            finally:
                daemon.stop()
            statuses = [s for s in (read_status(Path(p.status_path)) for p in specs) if s]
            trainer = {d: session.metrics() for d, session in daemon.sessions.items()}
            settings = {
                "devices": devices,
                "duration_s": duration_s,
                "ran_s": round(time.monotonic() - started, 1),
                "broker": secured.address,
                "training": DEMO_TRAINING,
            }
            return write_report(out, statuses, trainer, settings)


def _run_devices(specs: list[DeviceSpec], console: Console, emit: Callable[[str], None]) -> None:
    """Start a process per device, show them live until they finish; Ctrl-C stops them."""
    context = multiprocessing.get_context("spawn")  # a clean process, as on a device
    procs = [context.Process(target=run_device, args=(s,), name=s.device_id) for s in specs]
    for proc in procs:
        proc.start()
    # Ctrl-C and SIGTERM stop the demo even where a launcher left SIGINT ignored (a shell's
    # background job): the devices stop on it, so the demo must too
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        _watch(specs, procs, console, emit)
    except KeyboardInterrupt:
        emit("demo: stopping (Ctrl-C)")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        deadline = time.monotonic() + _STOP_S
        for proc in procs:
            if proc.is_alive():
                proc.terminate()  # SIGTERM: the runtime ends its frame loop cleanly
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _watch(
    specs: list[DeviceSpec],
    procs: list[multiprocessing.process.BaseProcess],
    console: Console,
    emit: Callable[[str], None],
) -> None:
    paths = [Path(s.status_path) for s in specs]
    if console.is_terminal:
        with Live(_table(paths), console=console, refresh_per_second=2) as live:
            while any(p.is_alive() for p in procs):
                time.sleep(1.0)
                live.update(_table(paths))
        return
    while any(p.is_alive() for p in procs):  # a log, not a screen: a line per device
        time.sleep(5.0)
        for status in filter(None, map(read_status, paths)):
            emit(_line(status))


_COLUMNS = ("device", "video", "fps", "sampling", "model", "updates", "up / down Kbps",
            "mIoU, last 20 s", "pretrained, same frames")  # fmt: skip


def _cells(status: dict) -> list[str]:
    """One device's figures, formatted once for the live table and the log line alike."""
    device, pretrained = running_miou(status)
    return [
        str(status["device_id"]),
        str(status["video"]),
        f"{status['fps']:.1f}",
        f"{status['sampling_fps']:.2f} fps",
        f"v{status['model_version']}",
        str(status["updates_applied"]),
        f"{status['uplink_kbps']:.0f} / {status['downlink_kbps']:.1f}",
        percent(device, " %"),
        percent(pretrained, " %"),
    ]


def _table(paths: list[Path]) -> Table:
    table = Table(title="amstream demo: devices (mIoU against the teacher)")
    for column in _COLUMNS:
        table.add_column(column, justify="left" if column in ("device", "video") else "right")
    for status in filter(None, map(read_status, paths)):
        table.add_row(*_cells(status))
    return table


def _line(status: dict) -> str:
    device, *cells = _cells(status)
    return f"{device}: " + " | ".join(f"{c} {v}" for c, v in zip(_COLUMNS[1:], cells, strict=True))
