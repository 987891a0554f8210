"""The trainer on a local Ray cluster (started here, on loopback) with real devices on a real
broker: two devices converge on their mirrors through session actors while two fronts split
their messages, none handled twice; a session actor's worker killed mid-phase is restarted from
its checkpoint with no full model resent; an idle session's actor leaves and the device's next
message opens it again. And, without Ray: what a front forwards, refuses and keeps."""

from __future__ import annotations

import os
import signal
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cloud_trainer.config import TrainerConfig, load_config
from cloud_trainer.scaleout.actor import SESSION_PREFIX, actor_name
from cloud_trainer.scaleout.front import FrontEndpoint, RayConfigError, check_ray_config
from cloud_trainer.tools.local_broker import free_port
from shared_schema.envelope import encode
from shared_schema.messages import MessageType
from shared_schema.mqtt import Inbound
from shared_schema.topics import Direction, shared_subscriptions, topic_for
from tests.mqtt_helpers import wait_until
from tests.samples import UPLINK
from tests.trainer_helpers import serve, start_device, terminate, trainer_raw, write_toml

NAMESPACE = "amstream"  # [ray] namespace's default


@pytest.fixture(scope="module")
def ray_cluster():
    """A Ray cluster of this process's own (4 logical CPUs: a session actor reserves one);
    yields its address, for fronts in other processes."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no network beyond loopback
    ray.init(num_cpus=4, namespace=NAMESPACE, include_dashboard=False,
             logging_level="WARNING")  # fmt: skip
    yield ray, ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture
def ray(ray_cluster):
    """The cluster, with no session actor left from the test before."""
    ray, _ = ray_cluster
    yield ray
    for name in ray.util.list_named_actors():
        if name.startswith(SESSION_PREFIX):
            ray.kill(ray.get_actor(name))


def _view(ray, device_id: str) -> dict:
    return ray.get(ray.get_actor(actor_name(device_id)).view.remote(), timeout=60)


def _alive(ray, device_id: str) -> bool:
    return actor_name(device_id) in ray.util.list_named_actors()


def _settle(ray, devices, *, counted: bool = True) -> None:
    """Devices paused; until every session is done and its device runs the mirror's latest, and
    (``counted``: its actor counted every message since it started) has had every segment its
    device sent."""
    for device in devices:
        device.pause()

    def has_all(view: dict, device) -> bool:
        received = view["counters"].get("received.segment", 0)
        return not counted or received >= device.runtime.endpoint.counters.get("sent.segment")

    def settled() -> bool:
        views = {d.device_id: _view(ray, d.device_id) for d in devices}
        return all(
            not views[d.device_id]["has_work"]
            and d.runtime.model.sha256 == views[d.device_id]["mirror_sha256"]
            and has_all(views[d.device_id], d)
            for d in devices
        )

    what = "sessions idle with every segment, devices on their mirror's latest"
    wait_until(settled, timeout=120, what=what)


@pytest.mark.broker
@pytest.mark.slow
def test_two_fronts_split_two_devices_messages_and_both_converge(tmp_path, broker, shared_dir, ray):
    from cloud_trainer.scaleout.front import RayFront

    fronts, ports = [], []
    for index, login in enumerate(("trainer", "trainer-front1")):  # a login each
        raw = trainer_raw(tmp_path, broker)
        raw["mqtt"].update(broker.mqtt_table(login))
        raw["metrics"]["prometheus_port"] = port = free_port()
        ports.append(port)
        fronts.append(RayFront(TrainerConfig.model_validate(raw), "auto", index))
    for front in fronts:
        front.start()
        assert front.wait_connected(10)
    videos = {"cam-a": "vtest.avi", "cam-b": "one-by-one-person-detection.mp4"}
    devices = [
        start_device(tmp_path, broker, d, str(shared_dir / "videos" / v)) for d, v in videos.items()
    ]
    try:
        wait_until(lambda: all(d.swaps >= 2 for d in devices), timeout=240,
                   what="two hot swaps on each device")  # fmt: skip
        _settle(ray, devices)
        for device in devices:
            view = _view(ray, device.device_id)
            assert device.runtime.model.version == view["mirror_version"] >= 2
            assert view["stats"]["full_models"] == 0
            sent = device.runtime.endpoint.counters.get("sent.segment")
            # every segment the device sent was taken once: none lost, none twice
            assert view["counters"].get("received.segment", 0) == sent >= 2
            assert device.runtime.counters.get("slots.rejected.bad_hash") == 0
        sent = sum(d.runtime.endpoint.counters.get("sent.segment") for d in devices)

        def forwarded() -> list[int]:
            return [f.counters().get("forwarded.segment", 0) for f in fronts]

        # a front counts a message once its actor's deliver returns, which can come after the
        # session counted it: on a loaded machine, a moment later
        wait_until(lambda: sum(forwarded()) >= sent, timeout=30, what="the fronts' counts")
        counts = forwarded()
        assert all(n > 0 for n in counts) and sum(counts) == sent  # split, not doubled
        _check_prometheus(ray, ports, devices)
    finally:
        for device in devices:
            device.close()
        for front in fronts:
            front.stop()


def _phases_scraped(ports: list[int]) -> dict[str, list[float]]:
    """Each session's phases as the fronts' Prometheus endpoints have them, by device."""
    phases: dict[str, list[float]] = {}
    for port in ports:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
        for family in text_string_to_metric_families(text.decode()):
            for sample in family.samples:
                if sample.name == "amstream_session_phases_total":
                    phases.setdefault(sample.labels["device"], []).append(sample.value)
    return phases


def _check_prometheus(ray, ports: list[int], devices) -> None:
    """Each session's figures reach Prometheus through the front it publishes through (its
    report comes every second): its phases, as far as its last report."""

    def reported() -> bool:
        phases = _phases_scraped(ports)
        return all(max(phases.get(d.device_id, [0])) >= 2 for d in devices)

    wait_until(reported, timeout=30, what="every session's phases on a front's endpoint")
    phases = _phases_scraped(ports)
    for device in devices:
        assert max(phases[device.device_id]) <= _view(ray, device.device_id)["stats"]["phases"]


@pytest.mark.broker
@pytest.mark.slow
def test_a_killed_session_actor_resumes_and_an_idle_one_leaves_and_returns(
    tmp_path, broker, shared_dir, ray, ray_cluster
):
    raw = trainer_raw(tmp_path, broker)
    raw["session_idle_s"] = 15.0  # longer than settling takes after the last message
    front = serve(write_toml(raw, tmp_path / "trainer.toml"), "--ray", ray_cluster[1])
    device = start_device(tmp_path, broker, "cam-k", str(shared_dir / "videos/vtest.avi"))
    try:
        wait_until(lambda: device.swaps >= 2, timeout=180, what="two updates before the kill")
        wait_until(lambda: _view(ray, "cam-k")["in_phase"], timeout=60, what="a phase running")
        pid = _view(ray, "cam-k")["pid"]
        os.kill(pid, signal.SIGKILL)
        swaps = device.swaps
        wait_until(lambda: device.swaps >= swaps + 2, timeout=180,
                   what="updates from the restarted session actor")  # fmt: skip
        assert _view(ray, "cam-k")["pid"] != pid  # restarted by Ray
        _settle(ray, [device], counted=False)
        assert _view(ray, "cam-k")["stats"]["full_models"] == 0  # it knew the device's file
        wait_until(lambda: not _alive(ray, "cam-k"), timeout=60, what="the idle actor leaving")
        swaps = device.swaps
        device.resume()
        wait_until(lambda: device.swaps >= swaps + 1, timeout=180,
                   what="an update from the session opened again")  # fmt: skip
        view = _view(ray, "cam-k")  # while the device plays: the actor stays
        assert view["stats"]["full_models"] == 0 and view["mirror_version"] > 2
        assert device.runtime.endpoint.counters.get("received.model") == 0
        assert device.runtime.counters.get("slots.rejected.bad_hash") == 0
    finally:
        device.close()
        terminate(front)


# -- without Ray ----------------------------------------------------------------------------------


def _inbound(device_id: str, msg_type: MessageType, sender: str | None = None) -> Inbound:
    msg, body = next((m, b) for m, b in UPLINK if m.type == msg_type)
    topic = topic_for("ams", device_id, msg_type, Direction.UP)
    payload = encode(msg, device_id=sender or device_id, seq=1, boot="0123456789abcdef", body=body)
    return Inbound(topic, payload, 1, False, False, 1, 0)


def test_a_front_forwards_what_sessions_take_and_refuses_forgeries(tmp_path):
    config = TrainerConfig.model_validate(trainer_raw(tmp_path))
    forwarded = []
    front = FrontEndpoint(config, 3, lambda topic, inbound: forwarded.append(topic.device_id))
    # a broker that does not make the login the client id tells the fronts apart by it
    telemetry = []
    front.on(MessageType.TELEMETRY, lambda envelope, topic: telemetry.append(topic.device_id))
    assert front.link.config.client_id == "trainer-front3"
    assert front._subscriptions() == shared_subscriptions("ams", "trainers")

    front.receive(_inbound("cam-1", MessageType.HELLO))
    front.receive(_inbound("cam-1", MessageType.SEGMENT))
    front.receive(_inbound("cam-2", MessageType.HELLO, sender="cam-1"))  # forged: another's topic
    front.receive(Inbound("ams/cam-2/up/hello", b"\x00junk", 1, False, False, 2, 0))
    front.receive(_inbound("cam-2", MessageType.TELEMETRY))
    assert forwarded == ["cam-1", "cam-1"] and telemetry == ["cam-2"]
    assert front.counters.get("rejected.wrong_device") == 1
    assert sum(v for k, v in front.counters.snapshot().items() if k.startswith("rejected.")) == 2


@pytest.mark.parametrize(
    ("section", "table"),
    [("recl", {"enabled": True}), ("ray", {"num_gpus": 0.0})],
)
def test_serve_with_ray_refuses_what_it_cannot_run(tmp_path, section, table):
    """The zoo lives in one process; Ray hides the GPU from sessions that ask for none."""
    raw = trainer_raw(tmp_path, device="cuda:0")
    raw["ray"] = {"num_gpus": 0.1}
    check_ray_config(TrainerConfig.model_validate(raw))  # refuses nothing else
    raw[section] = table
    with pytest.raises(RayConfigError, match=rf"\[{section}\]"):
        check_ray_config(TrainerConfig.model_validate(raw))


def test_the_provisioned_trainer_config_serves_on_ray_without_its_dashboard(
    tmp_path, fleet, caplog
):
    config = load_config(fleet.identity_dir("trainer") / "trainer.toml")
    assert config.dashboard.enabled  # the single daemon's, on loopback
    check_ray_config(config)
    assert "[dashboard] port 8470: not served with --ray" in caplog.text


def test_a_shared_subscription_takes_what_its_filter_takes():
    from shared_schema.mqtt import _matches

    assert _matches("$share/trainers/ams/+/up/#", "ams/cam-1/up/segment")
    assert not _matches("$share/trainers/ams/+/up/#", "ams/cam-1/down/update")
    with pytest.raises(ValueError):
        shared_subscriptions("ams", "a/b")
