"""``cloud-trainer bench-dashboard``: how fast the fleet page draws N devices in headless
Chromium, against the same page with one device in the same run.

The devices are emulated in the dashboard's state (``FleetState``), fed the very messages and
records a trainer feeds it (telemetry, session figures, probes, updates), so the page carries
what a real fleet's does. After one load of each that is not counted, per round and size
(interleaved), a fresh page load: ``first_draw_ms`` is the time from navigation to every row
drawn (network, parsing and the script); ``redraw_ms`` the mean time of one live redraw of the
whole table.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from cloud_trainer.dashboard.app import Dashboard
from cloud_trainer.dashboard.auth import Auth
from cloud_trainer.dashboard.config import DashboardConfig
from cloud_trainer.dashboard.records import Probe, UpdateRecord
from cloud_trainer.dashboard.server import DashboardServer
from cloud_trainer.dashboard.state import FleetState
from cloud_trainer.tools.browser import headless_chromium
from cloud_trainer.tools.local_broker import free_port
from shared_schema.messages import Telemetry

TARGET_MS = 1000.0  # issue 18: 100 devices in under a second
REDRAWS = 20
PROBES = 120  # per device: a page's worth of history


def emulated_fleet(devices: int, seed: int = 0) -> FleetState:
    """A fleet of ``devices`` that have run a while: online or not, telemetry twice (for the
    Kbps), a session's figures, probes and updates."""
    rng = np.random.default_rng(seed)
    state = FleetState(history=720)
    now = time.time()
    for i in range(devices):
        device_id = f"cam-{i:03d}"
        state.status(device_id, bool(rng.random() > 0.1))
        version = int(rng.integers(0, 40))
        for uptime, scale in ((600.0, 1.0), (610.0, 1.02)):
            state.telemetry(device_id, _telemetry(rng, uptime, scale, version))
        pretrained = rng.uniform(0.4, 0.9, PROBES)
        records = [
            Probe(now - 2 * (PROBES - k), version, min(1.0, p + rng.uniform(0, 0.1)), p, 2)
            for k, p in enumerate(pretrained)
        ]
        sizes = rng.integers(500, 5000, version)
        records += [
            UpdateRecord(now - 30 * (version - v), v, "qdelta", int(size), "phase", (0.06, 0.04))
            for v, size in enumerate(sizes, start=1)
        ]
        state.session(_figures(rng, device_id, version), records)
    return state


def _telemetry(rng: np.random.Generator, uptime: float, scale: float, version: int) -> Telemetry:
    return Telemetry(
        uptime_s=uptime, fps=float(rng.uniform(8, 30)), latency_p50_ms=30.0, latency_p95_ms=45.0,
        frames=int(uptime * 15), frames_sampled=int(uptime), swaps=version,
        bytes_up=int(scale * uptime * 25_000), bytes_down=int(scale * uptime * 400),
        spool_depth=0, model_version=version,
    )  # fmt: skip


def _figures(rng: np.random.Generator, device_id: str, version: int) -> dict[str, object]:
    return {
        "device_id": device_id, "mirror_version": version, "device_version": version,
        "sampling_rate_fps": float(rng.uniform(0.1, 1.0)), "updates_sent": version,
        "updates_acked": version, "updates_rejected": 0, "rollbacks": 0,
        "rollbacks_ordered": 0, "paused": bool(rng.random() < 0.05), "classes": [0, 15],
    }  # fmt: skip


def bench_dashboard(devices: int, rounds: int) -> dict[str, object]:
    """Median timings for 1 and ``devices`` devices over ``rounds`` page loads each."""
    sizes = sorted({1, devices})
    servers = {n: _serve(emulated_fleet(n)) for n in sizes}
    browser = headless_chromium()
    try:
        for n in sizes:  # a first load of each warms the browser's caches: not counted
            _load(browser, servers[n].url, n)
        runs: dict[int, list[dict[str, float]]] = {n: [] for n in sizes}
        for _ in range(rounds):  # interleaved, so that both sizes share the machine's moods
            for n in sizes:
                runs[n].append(_load(browser, servers[n].url, n))
    finally:
        browser.quit()
        for server in servers.values():
            server.stop()
    table = {
        n: {key: round(statistics.median(r[key] for r in runs[n]), 1) for key in runs[n][0]}
        for n in sizes
    }
    first = table[devices]["first_draw_ms"]
    return {
        "devices": devices,
        "rounds": rounds,
        "by_devices": {str(n): table[n] for n in sizes},
        "first_draw_ratio_vs_one": round(first / table[1]["first_draw_ms"], 2),
        "target_ms": TARGET_MS,
        "meets_target": first < TARGET_MS,
    }


def _serve(state: FleetState) -> DashboardServer:
    dashboard = Dashboard(state, Auth(None, secure=False), lambda *_: None)
    server = DashboardServer(dashboard, DashboardConfig(port=free_port()))
    server.start()
    return server


def _load(browser: WebDriver, url: str, devices: int) -> dict[str, float]:
    browser.get("about:blank")
    browser.get(url)
    WebDriverWait(browser, 30).until(
        lambda b: (
            b.execute_script("return document.querySelectorAll('#fleet-rows tr').length") == devices
        )
    )
    first = browser.execute_script("return window.firstDrawnAt")
    redraw = browser.execute_script(
        "const t = performance.now();"
        f"for (let i = 0; i < {REDRAWS}; i++) drawFleet(window.lastFleet);"
        f"return (performance.now() - t) / {REDRAWS};"
    )
    return {"first_draw_ms": float(first), "redraw_ms": float(redraw)}
