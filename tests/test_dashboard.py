"""The fleet dashboard without a browser: its config, its state, its picture, and its web app
served by the real uvicorn on loopback (the browser tests are in test_dashboard_browser.py)."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from cloud_trainer.dashboard import serve
from cloud_trainer.dashboard.actions import Pause, Rollback
from cloud_trainer.dashboard.app import MAX_ACTION_BYTES, Dashboard
from cloud_trainer.dashboard.auth import COOKIE, COOKIE_MAX_AGE_S, Auth
from cloud_trainer.dashboard.config import DashboardConfig
from cloud_trainer.dashboard.overlay import GAP, overlay_jpeg, palette
from cloud_trainer.dashboard.records import AckRecord, FrameView, Probe, UpdateRecord
from cloud_trainer.dashboard.server import DashboardServer
from cloud_trainer.dashboard.state import FleetState
from cloud_trainer.tools.local_broker import free_port
from shared_schema.config_files import ConfigFileError
from shared_schema.counters import Counters
from shared_schema.messages import Telemetry

TOKEN = "a-token-of-20-chars!"


# -- config and auth -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"port": 8470, "host": "0.0.0.0"}, "host 0.0.0.0 is not loopback: set tls_cert"),
        ({"port": 8470, "tls_cert": "c.pem"}, "tls_cert and tls_key go together"),
    ],
)  # fmt: skip
def test_config_refuses_plain_http_off_loopback(fields, message):
    with pytest.raises(ValidationError, match=message):
        DashboardConfig(**fields)


def test_config_allows_loopback_tls_or_a_loud_development_switch():
    assert not DashboardConfig().enabled  # no port: no dashboard
    assert DashboardConfig(port=1, host="::1").enabled
    token = {"token_file": "t"}
    assert DashboardConfig(port=1, host="0.0.0.0", tls_cert="c", tls_key="k", **token).tls
    assert DashboardConfig(port=1, host="10.0.0.2", allow_plaintext=True, **token).enabled


def test_a_token_file_that_is_missing_or_short_is_one_line(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ConfigFileError, match=rf"token_file {missing}: .* openssl rand -hex 16"):
        Auth.from_file(missing, secure=False)
    short = tmp_path / "short"
    short.write_text("abc\n")
    with pytest.raises(ConfigFileError, match="the token has 3 characters, needs 16 or more"):
        Auth.from_file(short, secure=False)
    good = tmp_path / "good"
    good.write_text(TOKEN + "\n")
    auth = Auth.from_file(good, secure=True)
    assert auth.checks(TOKEN) and not auth.checks(TOKEN[:-1]) and auth.secure
    assert not auth.checks("é" * 20) and not auth.checks("\udce9")  # any text: no crash


def test_a_session_cookie_is_the_tokens_and_dies_after_its_age():
    auth, other = Auth(TOKEN, secure=False), Auth(TOKEN + "x", secure=False)
    cookie = auth.session()
    assert auth._valid_session(cookie) and not other._valid_session(cookie)
    old = auth.session(now=time.time() - COOKIE_MAX_AGE_S - 1)
    assert not auth._valid_session(old)
    forged = cookie.split(".")[0] + "." + "0" * 64
    assert not auth._valid_session(forged) and not auth._valid_session("é.é")


# -- the state -------------------------------------------------------------------------------


def _telemetry(uptime: float, up: int, down: int, version: int | None = 1) -> Telemetry:
    return Telemetry(uptime_s=uptime, fps=12.5, latency_p50_ms=20.0, latency_p95_ms=30.0,
                     frames=100, frames_sampled=10, swaps=0, bytes_up=up, bytes_down=down,
                     spool_depth=0, model_version=version)  # fmt: skip


def test_rates_come_from_consecutive_telemetry_and_versions_say_when_they_changed():
    state = FleetState(history=10)
    state.telemetry("cam-1", _telemetry(100.0, 1_000_000, 10_000))
    first = state.fleet()["rows"][0]
    assert first["up_kbps"] is None and first["version"] == 1 and first["online"]
    state.telemetry("cam-1", _telemetry(110.0, 1_250_000, 12_500))  # 10 s later
    row = state.fleet()["rows"][0]
    assert row["up_kbps"] == pytest.approx(200.0) and row["down_kbps"] == pytest.approx(2.0)
    assert row["version_since"] == first["version_since"]  # same version: same instant
    state.telemetry("cam-1", _telemetry(100.0, 0, 0, version=2))  # a reboot: no negative rate
    row = state.fleet()["rows"][0]
    assert row["up_kbps"] == pytest.approx(200.0) and row["version"] == 2
    assert row["version_since"] > first["version_since"]
    state.status("cam-1", False)
    assert state.fleet()["rows"][0]["online"] is False
    # once its session speaks, its acks say the version first; a late telemetry does not undo it
    state.session({"device_id": "cam-1", "device_version": 3}, [])
    state.telemetry("cam-1", _telemetry(120.0, 0, 0, version=2))
    assert state.fleet()["rows"][0]["version"] == 3


def test_acks_settle_the_updates_they_answer_and_probes_make_the_rows_miou():
    state = FleetState(history=3)
    figures = {"device_id": "cam-1", "updates_sent": 2, "rollbacks": 1, "rollbacks_ordered": 2}
    records = [
        UpdateRecord(1.0, 1, "qdelta", 900, "phase", (0.5, 0.4)),
        UpdateRecord(2.0, None, "qdelta", 0, "phase", (0.5, 0.45), sent=False),
        UpdateRecord(3.0, 2, "qdelta", 800, "phase", (0.4, 0.3)),
        AckRecord(4.0, 1, ok=True),
        AckRecord(5.0, 2, ok=False, reason="bad_hash"),
        AckRecord(5.5, 7, ok=True),  # a resync's: it answers no row
        *(Probe(6.0 + i, 1, 0.5 + i / 10, 0.5, 2) for i in range(5)),
        Probe(12.0, 1, float("nan"), 0.5, 2),  # no classes to score: not a point of the plot
        UpdateRecord(13.0, 3, "qdelta", 700, "phase", (float("nan"), 0.3)),  # diverged
    ]
    state.session(figures, records)
    page = state.device("cam-1")
    outcomes = [(u["version"], u["outcome"]) for u in page["updates"]]
    assert outcomes == [(None, "gated"), (2, "refused: bad_hash"), (3, "sent")]
    assert page["updates"][-1]["loss"] is None and "NaN" not in state.device_json("cam-1")
    assert len(page["probes"]) == 3 and page["row"]["rollbacks"] == 3  # history 3: the newest
    # the row: the newest probes' mean, beside the pretrained model's on the same frames
    assert page["row"]["miou"] == pytest.approx(np.mean([0.7, 0.8, 0.9]))
    assert page["row"]["miou_pretrained"] == pytest.approx(0.5)


def test_the_actions_log_outlives_the_trainer_and_a_torn_line(tmp_path):
    log_path = tmp_path / "_actions.jsonl"
    state = FleetState(history=10, actions_log=log_path)
    entry = state.action("cam-1", Pause().model_dump(), "127.0.0.1")
    assert json.loads(log_path.read_text())["state"] == "queued"  # on disk before it runs
    state.action_done(entry, "done", "learning paused")
    second = state.action("cam-1", Rollback(version=3).model_dump(), "127.0.0.1")
    state.action_done(second, "refused", "version 3 is no longer held")
    state.action("cam-1", Pause().model_dump(), "127.0.0.1")  # the trainer stops before it runs
    with log_path.open("a") as f:
        f.write('{"id": 4, "at": 1.0, "device')  # the power went
    again = FleetState(history=10, actions_log=log_path)
    actions = again.fleet()["actions"]
    assert [(a["id"], a["state"]) for a in actions] == [(3, "lost"), (2, "refused"), (1, "done")]
    assert again.action("cam-2", Pause().model_dump(), "::1").id == 4  # numbering goes on


# -- the picture -----------------------------------------------------------------------------


def test_the_palette_is_pascal_vocs():
    colours = palette()
    assert colours[0].tolist() == [0, 0, 0] and colours[1].tolist() == [128, 0, 0]
    assert colours[15].tolist() == [192, 128, 128]  # person
    assert colours[20].tolist() == [0, 64, 128]  # tv/monitor
    assert len({tuple(c) for c in colours}) == 256


def test_the_overlay_shows_the_device_labels_left_and_the_teachers_right():
    rgb = np.full((60, 80, 3), 100, np.uint8)
    device, teacher = np.zeros((60, 80), np.uint8), np.zeros((60, 80), np.uint8)
    device[:30] = 15  # the device sees a person in the top half, the teacher in the bottom
    teacher[30:] = 15
    picture = cv2.imdecode(np.frombuffer(overlay_jpeg(FrameView(0.0, 1, rgb, device, teacher)),
                                         np.uint8), cv2.IMREAD_COLOR)[..., ::-1]  # fmt: skip
    assert picture.shape == (60, 2 * 80 + GAP, 3)
    left, right = picture[:, :80].astype(int), picture[:, 80 + GAP :].astype(int)
    person = 0.45 * 100 + 0.55 * np.array([192, 128, 128])
    assert np.abs(left[10, 40] - person).max() < 12 and np.abs(left[50, 40] - 100).max() < 12
    assert np.abs(right[50, 40] - person).max() < 12 and np.abs(right[10, 40] - 100).max() < 12


# -- the web app on uvicorn ------------------------------------------------------------------


class Client:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def request(
        self, path: str, body: bytes | None = None, **headers: str
    ) -> tuple[int, bytes, dict]:
        request = urllib.request.Request(self.url + path, data=body, headers=headers)
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            with opener.open(request, timeout=10) as response:
                return response.status, response.read(), dict(response.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), dict(exc.headers)

    def act(self, device: str, action: dict, **headers: str) -> tuple[int, dict]:
        headers.setdefault("Content-Type", "application/json")
        status, body, _ = self.request(
            f"/api/devices/{device}/actions", json.dumps(action).encode(), **headers
        )
        return status, json.loads(body)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # a 303 is the answer under test
        return None


@pytest.fixture
def served(tmp_path) -> Iterator[tuple[Client, FleetState, list]]:
    state = FleetState(history=10, actions_log=tmp_path / "_actions.jsonl")
    state.known(["cam-1"])
    submitted: list = []
    dashboard = Dashboard(state, Auth(TOKEN, secure=False), lambda *a: submitted.append(a))
    server = DashboardServer(dashboard, DashboardConfig(port=free_port()))
    server.start()
    try:
        yield Client(server.url), state, submitted
    finally:
        server.stop()


def test_pages_and_json_are_served_with_a_strict_policy(served):
    client, state, _ = served
    status, body, headers = client.request("/")
    assert status == 200 and b'id="fleet-rows"' in body and b'"device_id": "cam-1"' in body
    assert "script-src" not in headers["content-security-policy"]  # default-src 'self' rules
    assert headers["content-security-policy"].startswith("default-src 'self'")
    assert client.request("/devices/cam-1")[0] == 200
    assert client.request("/devices/cam-9")[0] == 404
    assert json.loads(client.request("/api/fleet")[1])["rows"][0]["device_id"] == "cam-1"
    assert client.request("/devices/cam-1/frame.jpg")[0] == 404  # no frame probed yet
    labels = np.zeros((40, 50), np.uint8)
    view = FrameView(1.0, 0, np.zeros((40, 50, 3), np.uint8), labels, labels)
    state.session({"device_id": "cam-1"}, [view])
    status, body, headers = client.request("/devices/cam-1/frame.jpg")
    assert (
        status == 200 and headers["content-type"] == "image/jpeg" and headers["x-frame-seq"] == "1"
    )
    assert cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR).shape == (40, 108, 3)


def test_actions_are_refused_without_the_token_and_typed_with_it(served):
    client, state, submitted = served
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert client.act("cam-1", {"kind": "pause"})[0] == 401
    assert (
        client.act("cam-1", {"kind": "pause"}, Authorization="Bearer wrong-token-xxxxx")[0] == 401
    )
    assert (
        client.act("cam-1", {"kind": "pause"}, **bearer, **{"Content-Type": "text/plain"})[0] == 415
    )
    assert client.act("cam-9", {"kind": "pause"}, **bearer) == (404, {"error": "no such device"})
    status, answer = client.act("cam-1", {"kind": "rollback", "version": -1}, **bearer)
    assert status == 422 and answer["error"].startswith("rollback.version")
    status, answer = client.act("cam-1", {"kind": "sampling", "min_fps": 2, "max_fps": 1}, **bearer)
    assert status == 422 and "min_fps must not exceed max_fps" in answer["error"]
    status, _ = client.act("cam-1", {"kind": "pause", "pad": "x" * MAX_ACTION_BYTES}, **bearer)
    assert status == 413
    assert submitted == []  # nothing refused reached the daemon
    status, answer = client.act("cam-1", {"kind": "rollback", "version": 3}, **bearer)
    assert status == 202 and answer == {"id": 1, "state": "queued"}
    ((device, action, entry),) = submitted
    assert device == "cam-1" and action == Rollback(version=3) and entry.remote == "127.0.0.1"
    assert state.fleet()["actions"][0]["action"] == {"kind": "rollback", "version": 3}


def test_signing_in_gives_a_strict_cookie_that_acts(served):
    client, _, submitted = served
    status, body, _ = client.request("/login", b"token=wrong&next=/devices/cam-1")
    assert status == 401 and b'id="wrong"' in body
    form = f"token={TOKEN}&next=/devices/cam-1".replace("!", "%21").encode()
    status, _, headers = client.request("/login", form)
    assert status == 303 and headers["location"] == "/devices/cam-1"
    cookie = headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie
    assert "SameSite=strict" in cookie and TOKEN not in cookie
    status, _, headers = client.request(
        "/login", form.replace(b"/devices/cam-1", b"//evil.example")
    )
    assert headers["location"] == "/"  # only a path on this server
    session = cookie.split(";")[0]
    assert client.act("cam-1", {"kind": "resume"}, Cookie=session)[0] == 202
    assert submitted[0][1].kind == "resume"


def test_stray_credentials_are_refused_never_a_crash(served):
    client, _, submitted = served
    for headers in ({"Cookie": f"{COOKIE}=\u00e9"}, {"Authorization": "Bearer \u00e9" * 20},
                    {"Cookie": f"{COOKIE}=1.2.3"}):  # fmt: skip
        encoded = {k: v.encode("latin-1").decode("latin-1") for k, v in headers.items()}
        assert client.request("/", **encoded)[0] == 200  # a page still renders, read-only
        assert client.act("cam-1", {"kind": "pause"}, **encoded)[0] == 401
    status, body, _ = client.request("/login", b"token=%C3%A9&next=/")
    assert status == 401 and b'id="wrong"' in body
    assert submitted == []


def test_a_request_for_another_host_name_is_refused(served):
    """A web page that rebinds a name of its own to 127.0.0.1 reads nothing (DNS rebinding)."""
    client, _, _ = served
    assert client.request("/api/fleet", Host="attacker.example")[0] == 400
    assert client.request("/api/fleet", Host=f"localhost:{client.url.rsplit(':', 1)[1]}")[0] == 200


def test_off_loopback_every_page_needs_the_token(tmp_path):
    token = tmp_path / "token"
    token.write_text(TOKEN)
    config = DashboardConfig(port=free_port(), host="0.0.0.0", allow_plaintext=True,
                             token_file=token, server_names=["cams.example"])  # fmt: skip
    assert config.private and config.allowed_hosts == ["0.0.0.0", "cams.example"]
    with pytest.raises(ValidationError, match="set token_file"):
        DashboardConfig(port=1, host="10.0.0.2", allow_plaintext=True)
    state = FleetState(history=10)
    state.known(["cam-1"])
    server = serve.server(config, state, lambda *a: None, Counters())
    server.start()
    try:
        client, named = Client(f"http://127.0.0.1:{server.port}"), {"Host": "cams.example"}
        assert client.request("/api/fleet")[0] == 400  # not a name it serves
        status, _, headers = client.request("/devices/cam-1", **named)
        assert status == 303 and headers["location"] == "/login?next=/devices/cam-1"
        assert client.request("/api/fleet", **named)[0] == 401
        assert client.request("/devices/cam-1/frame.jpg", **named)[0] == 401
        assert client.request("/login", **named)[0] == 200
        assert client.request("/static/dashboard.js", **named)[0] == 200
        assert client.request("/api/fleet", **named, Authorization=f"Bearer {TOKEN}")[0] == 200
    finally:
        server.stop()


def test_a_read_only_dashboard_says_how_to_act(tmp_path):
    state = FleetState(history=10)
    state.known(["cam-1"])
    server = DashboardServer(Dashboard(state, Auth(None, False), lambda *a: None),
                             DashboardConfig(port=free_port()))  # fmt: skip
    server.start()
    try:
        status, answer = Client(server.url).act("cam-1", {"kind": "pause"})
    finally:
        server.stop()
    assert status == 403 and "set [dashboard] token_file" in answer["error"]


def test_the_live_view_sends_the_fleet_and_then_each_change(served):
    client, state, _ = served
    with urllib.request.urlopen(client.url + "/api/events", timeout=10) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        first = json.loads(_event(stream))
        assert [r["device_id"] for r in first["rows"]] == ["cam-1"]
        state.status("cam-2", True)
        second = json.loads(_event(stream))
        assert {r["device_id"]: r["online"] for r in second["rows"]} == {
            "cam-1": None,
            "cam-2": True,
        }


def _event(stream) -> str:
    while not (line := stream.readline().decode()).startswith("data: "):
        pass
    return line.removeprefix("data: ")


def test_a_port_in_use_is_one_line_naming_the_setting():
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        server = DashboardServer(Dashboard(FleetState(10), Auth(None, False), lambda *a: None),
                                 DashboardConfig(port=port))  # fmt: skip
        with pytest.raises(ConfigFileError, match=rf"\[dashboard\] port {port} on 127.0.0.1: .*"
                           "pick a free port, or 0 to turn the dashboard off"):  # fmt: skip
            server.start()


def test_a_bad_certificate_is_one_line_at_start(tmp_path: Path):
    (tmp_path / "c.pem").write_text("not a certificate")
    (tmp_path / "k.pem").write_text("not a key")
    config = DashboardConfig(port=free_port(), tls_cert=tmp_path / "c.pem",
                             tls_key=tmp_path / "k.pem")  # fmt: skip
    server = DashboardServer(Dashboard(FleetState(10), Auth(None, True), lambda *a: None), config)
    with pytest.raises(ConfigFileError, match=r"\[dashboard\] tls_cert .*c.pem / tls_key .*k.pem"):
        server.start()
