"""What the dashboard shows, kept as the daemon hands it over: each device's status and
telemetry (from its messages), its session's figures and records (from the worker) and the
operators' actions. Thread-safe; the web app only reads it (``fleet``, ``device``, ``frame``).

A device's history (probes, updates) lives in memory, bounded by ``[dashboard] history``: after
a restart the pages start from the sessions' checkpointed figures. Each action is appended to
``_actions.jsonl`` beside the sessions when it is queued and again when it ends, and read back
on start. A page's JSON is made once per change, however many browsers watch it.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cloud_trainer.dashboard.overlay import PALETTE
from cloud_trainer.dashboard.records import (
    AckRecord,
    FrameView,
    Probe,
    Record,
    UpdateRecord,
    UplinkRecord,
)
from shared_schema.messages import Telemetry

log = logging.getLogger(__name__)

RECENT_PROBES = 5  # a fleet row's mIoU: its device's latest uploaded segments
ACTIONS_SHOWN = 200  # actions kept in memory (all are in actions.jsonl)


@dataclass
class ActionEntry:
    """An operator's action as the log shows it: queued, then done, refused or failed."""

    id: int
    at: float
    device_id: str
    action: dict[str, object]
    remote: str  # the client's address
    state: str = "queued"
    detail: str = ""


@dataclass
class _Device:
    device_id: str
    probes: deque[Probe]  # the newest [dashboard] history of each
    updates: deque[dict[str, object]]
    online: bool | None = None
    seen_at: float | None = None  # time.time() of its last status or telemetry
    telemetry: Telemetry | None = None
    kbps: tuple[float, float] | None = None  # up, down over the last telemetry interval
    version: int | None = None
    version_since: float | None = None
    figures: dict[str, object] = field(default_factory=dict)  # its session's metrics()
    frame: FrameView | None = None
    frames: int = 0  # FrameViews received: the overlay's cache key
    uplink: UplinkRecord | None = None


class FleetState:
    def __init__(
        self, history: int, actions_log: Path | None = None, class_names: list[str] | None = None
    ) -> None:
        """``class_names``: the student's, from its labels file, where the config names one."""
        self._history = history
        self._names = class_names or []
        self._lock = threading.Lock()
        self._devices: dict[str, _Device] = {}
        self._actions: deque[ActionEntry] = deque(maxlen=ACTIONS_SHOWN)
        self._log_path = actions_log
        self._ids = itertools.count(1)
        self.changed = 0  # bumped on every change: the live views send only what is new
        self._json: dict[str | None, tuple[int, str]] = {}  # page (None: the fleet) -> made at
        self._read_log()

    # -- fed by the daemon -----------------------------------------------------------------

    def known(self, device_ids: list[str]) -> None:
        """Devices the trainer has state for (from its checkpoints), before they speak."""
        with self._lock:
            for device_id in device_ids:
                self._device(device_id)
            self.changed += 1

    def status(self, device_id: str, online: bool) -> None:
        with self._lock:
            device = self._device(device_id)
            device.online, device.seen_at = online, time.time()
            self.changed += 1

    def telemetry(self, device_id: str, telemetry: Telemetry) -> None:
        with self._lock:
            device = self._device(device_id)
            before = device.telemetry
            if before is not None and telemetry.uptime_s > before.uptime_s:
                seconds = telemetry.uptime_s - before.uptime_s
                up = telemetry.bytes_up - before.bytes_up
                down = telemetry.bytes_down - before.bytes_down
                device.kbps = (8 * max(up, 0) / seconds / 1000, 8 * max(down, 0) / seconds / 1000)
            device.telemetry, device.seen_at = telemetry, time.time()
            device.online = True  # it speaks (a status may have been missed)
            if not device.figures:  # no session yet: its acks say it sooner (session())
                self._versioned(device, telemetry.model_version)
            self.changed += 1

    def session(self, figures: dict[str, object], records: list[Record]) -> None:
        """A session's figures (``Session.metrics``) and what it did since the last call."""
        device_id = str(figures["device_id"])
        with self._lock:
            device = self._device(device_id)
            device.figures = figures
            for record in records:
                self._take(device, record)
            # what the device runs as its hello and acks said (its own number), the moment
            # they came; telemetry says the same, up to an interval later
            self._versioned(device, figures.get("device_version"))  # type: ignore[arg-type]
            self.changed += 1

    def _take(self, device: _Device, record: Record) -> None:
        if isinstance(record, Probe):
            if math.isfinite(record.miou) and math.isfinite(record.pretrained):
                device.probes.append(record)
        elif isinstance(record, FrameView):
            device.frame, device.frames = record, device.frames + 1
        elif isinstance(record, UplinkRecord):
            device.uplink = record
        elif isinstance(record, UpdateRecord):
            entry = {**asdict(record), "outcome": "sent" if record.sent else "gated"}
            if record.loss is not None and not all(map(math.isfinite, record.loss)):
                entry["loss"] = None  # a diverged phase: JSON has no NaN
            device.updates.append(entry)
        elif isinstance(record, AckRecord):
            self._answered(device, record)

    @staticmethod
    def _answered(device: _Device, ack: AckRecord) -> None:
        """The update an ack answers: acknowledged, or refused with its reason (a resync's
        ack answers a version whose update was acknowledged already, or has no row)."""
        for entry in reversed(device.updates):
            if entry["version"] == ack.answered and entry["outcome"] == "sent":
                entry["outcome"] = "acked" if ack.ok else f"refused: {ack.reason}"
                return

    @staticmethod
    def _versioned(device: _Device, version: int | None) -> None:
        if version is not None and version != device.version:
            device.version, device.version_since = version, time.time()

    def _device(self, device_id: str) -> _Device:
        if device_id not in self._devices:  # its history bounded by [dashboard] history
            history = self._history
            self._devices[device_id] = _Device(
                device_id, probes=deque(maxlen=history), updates=deque(maxlen=history)
            )
        return self._devices[device_id]

    # -- actions ---------------------------------------------------------------------------

    def action(self, device_id: str, action: dict[str, object], remote: str) -> ActionEntry:
        """Log an action as queued; the daemon reports its end with ``action_done``."""
        with self._lock:
            entry = ActionEntry(next(self._ids), time.time(), device_id, action, remote)
            self._actions.append(entry)
            self.changed += 1
        log.info("dashboard: action %d from %s: %s %s", entry.id, remote, device_id, action)
        self._write_log(entry)
        return entry

    def action_done(self, entry: ActionEntry, state: str, detail: str) -> None:
        with self._lock:
            entry.state, entry.detail = state, detail
            self.changed += 1
        log.info("dashboard: action %d on %s %s: %s", entry.id, entry.device_id, state, detail)
        self._write_log(entry)

    def _write_log(self, entry: ActionEntry) -> None:
        if self._log_path is None:
            return
        try:
            with self._log_path.open("a") as f:
                f.write(json.dumps(asdict(entry)) + "\n")
        except OSError as exc:  # the action is done; only its record on disk is missing
            log.error("dashboard: cannot append to %s: %s", self._log_path, exc.strerror)

    def _read_log(self) -> None:
        if self._log_path is None or not self._log_path.is_file():
            return
        entries: dict[int, ActionEntry] = {}  # an action's last line says how it ended
        for line in self._log_path.read_text(errors="replace").splitlines()[-2 * ACTIONS_SHOWN :]:
            try:
                entry = ActionEntry(**json.loads(line))
            except (ValueError, TypeError):  # a line cut by a crash: the others stand
                continue
            entries[entry.id] = entry
        for entry in sorted(entries.values(), key=lambda e: e.id):
            if entry.state == "queued":  # the trainer stopped before it ran
                entry.state, entry.detail = "lost", "the trainer stopped before it ran"
            self._actions.append(entry)
        newest = max((a.id for a in self._actions), default=0)
        self._ids = itertools.count(newest + 1)

    # -- read by the web app ---------------------------------------------------------------

    def has(self, device_id: str) -> bool:
        with self._lock:
            return device_id in self._devices

    def fleet_json(self) -> str:
        return self._cached(None, self.fleet)

    def device_json(self, device_id: str) -> str:
        return self._cached(device_id, lambda: self.device(device_id))

    def _cached(self, page: str | None, make: Callable[[], object]) -> str:
        changed = self.changed
        made = self._json.get(page)
        if made is None or made[0] != changed:
            made = self._json[page] = (changed, json.dumps(make()))
        return made[1]

    def fleet(self) -> dict[str, object]:
        """Every device's row and the latest actions."""
        with self._lock:
            rows = [_row(d) for d in self._devices.values()]
            actions = [asdict(a) for a in reversed(self._actions)][:50]
            return {"now": time.time(), "rows": rows, "actions": actions}

    def device(self, device_id: str) -> dict[str, object] | None:
        """One device's page: its row, mIoU over time, updates, uplink, OPA and actions."""
        with self._lock:
            device = self._devices.get(device_id)
            if device is None:
                return None
            actions = [asdict(a) for a in reversed(self._actions) if a.device_id == device_id]
            return _page(device, actions[:50], self._names)

    def frame(self, device_id: str) -> tuple[int, FrameView] | None:
        with self._lock:
            device = self._devices.get(device_id)
            if device is None or device.frame is None:
                return None
            return device.frames, device.frame


def _row(device: _Device) -> dict[str, object]:
    figures, telemetry = device.figures, device.telemetry
    recent = list(device.probes)[-RECENT_PROBES:]
    rollbacks = [figures.get("rollbacks"), figures.get("rollbacks_ordered")]
    return {
        "device_id": device.device_id,
        "online": device.online,
        "seen_at": device.seen_at,
        "version": device.version,
        "version_since": device.version_since,
        "fps": None if telemetry is None else telemetry.fps,
        "sampling_fps": figures.get("sampling_rate_fps"),
        "up_kbps": None if device.kbps is None else device.kbps[0],
        "down_kbps": None if device.kbps is None else device.kbps[1],
        "miou": _mean([p.miou for p in recent]),
        "miou_pretrained": _mean([p.pretrained for p in recent]),
        "updates_sent": figures.get("updates_sent"),
        "updates_acked": figures.get("updates_acked"),
        "updates_refused": figures.get("updates_rejected"),
        "rollbacks": sum(r for r in rollbacks if isinstance(r, int)) if figures else None,
        "paused": figures.get("paused", False),
    }


def _page(device: _Device, actions: list[dict[str, object]], names: list[str]) -> dict[str, object]:
    frame, opa = device.frame, device.telemetry.opa if device.telemetry else None
    return {
        "now": time.time(),
        "row": _row(device),
        "probes": [[p.at, p.miou, p.pretrained, p.version] for p in device.probes],
        "updates": [dict(u) for u in device.updates],
        "frame": None if frame is None else _frame(device.frames, frame),
        "uplink": None if device.uplink is None else asdict(device.uplink),
        "opa": None if opa is None else opa.model_dump(exclude={"type"}),
        # the stream's classes: index, the colour the overlay paints it in, its name
        "classes": [_legend(c, names) for c in device.figures.get("classes", [])],
        "sampling_bounds": device.figures.get("sampling_bounds"),
        "actions": actions,
    }


def _legend(index: int, names: list[str]) -> list[object]:
    name = names[index] if index < len(names) else f"class {index}"
    return [index, *(int(v) for v in PALETTE[index]), name]


def _frame(seq: int, frame: FrameView) -> dict[str, object]:
    return {"seq": seq, "at": frame.at, "version": frame.version}


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None
