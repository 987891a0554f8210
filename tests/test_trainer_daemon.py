"""The trainer daemon with real devices on a real broker: two devices on two real videos each
hot-swap verified updates and end on their mirror's file; a trainer killed with SIGKILL
resumes every device without resending full models; an operator's rollback reaches a device."""

from __future__ import annotations

import json
import queue
import signal
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cloud_trainer.config import TrainerConfig
from cloud_trainer.daemon import TrainerDaemon
from cloud_trainer.dashboard.actions import Rollback
from cloud_trainer.tools.emulation import local_profile
from cloud_trainer.tools.local_broker import free_port
from edge_runtime.runtime import EdgeRuntime
from shared_schema.envelope import decode, sha256_hex
from shared_schema.messages import Metrics
from shared_schema.mqtt import MqttLink
from tests.mqtt_helpers import wait_until
from tests.trainer_helpers import (
    serve,
    start_device,
    terminate,
    trainer_raw,
    two_scenes,
    write_toml,
)

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def _settled(devices, mirror_sha) -> bool:
    return all(d.runtime.model.sha256 == mirror_sha(d) for d in devices)


def test_two_devices_each_hot_swap_verified_updates(tmp_path, broker, shared_dir):
    raw = trainer_raw(tmp_path, broker)
    raw["metrics"]["prometheus_port"] = port = free_port()
    daemon = TrainerDaemon(TrainerConfig.model_validate(raw))
    daemon.start()
    assert daemon.endpoint.wait_connected(10)
    videos = {"cam-a": "vtest.avi", "cam-b": "one-by-one-person-detection.mp4"}
    devices = [
        start_device(tmp_path, broker, d, str(shared_dir / "videos" / v)) for d, v in videos.items()
    ]
    try:
        wait_until(
            lambda: all(d.swaps >= 2 for d in devices),
            timeout=240,
            what="two hot swaps on each device",
        )
        for device in devices:
            device.pause()  # no more segments: the trainer finishes what it has
        assert daemon.wait_idle(120)
        mirror = {d: s.mirror for d, s in daemon.sessions.items()}
        wait_until(
            lambda: _settled(devices, lambda d: mirror[d.runtime.profile.device.id].sha256),
            timeout=60,
            what="devices on the mirror's file",
        )
        for device in devices:
            session = daemon.sessions[device.runtime.profile.device.id]
            assert device.runtime.model.version == session.mirror.version >= 2
            assert session.stats.full_models == 0 and session.stats.segments >= 2
            assert device.runtime.counters.get("slots.rejected.bad_hash") == 0
        daemon.report()
        _check_prometheus(port, daemon)
        session = json.loads(_retained(broker, "ams/cam-a/session"))  # plain JSON, for people
        assert session["device_id"] == "cam-a" and session["phases"] >= 2
    finally:
        for device in devices:
            device.close()
        daemon.stop()


def _check_prometheus(port: int, daemon: TrainerDaemon) -> None:
    """Counters as counters, levels as gauges, the devices' telemetry and status beside the
    sessions' figures, as a Prometheus server scrapes them."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples = {
        (family.name, family.type, sample.name, sample.labels.get("device")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    for device_id in ("cam-a", "cam-b"):
        phases = daemon.sessions[device_id].stats.phases
        key = ("amstream_session_phases", "counter", "amstream_session_phases_total", device_id)
        assert samples[key] == phases >= 2
        gauge = ("amstream_session_mirror_version", "gauge", "amstream_session_mirror_version")
        assert samples[(*gauge, device_id)] == daemon.sessions[device_id].mirror.version
        assert samples[("amstream_device_fps", "gauge", "amstream_device_fps", device_id)] > 0
        frames = ("amstream_device_frames", "counter", "amstream_device_frames_total", device_id)
        assert samples[frames] > 0
        assert samples[("amstream_device_online", "gauge", "amstream_device_online", device_id)]


def _retained(broker, topic: str) -> bytes:
    received: queue.Queue[bytes] = queue.Queue()
    link = MqttLink(broker.client_config("monitor", persistent_session=False), client_id="reader")
    link.subscribe(topic, 1, lambda m: received.put(m.payload))
    link.start()
    try:
        return received.get(timeout=10)
    finally:
        link.stop()


def _retained_metrics(broker, device_id: str) -> Metrics:
    """The trainer's latest figures for a device, from its retained metrics topic."""
    received: queue.Queue[Metrics] = queue.Queue()
    link = MqttLink(broker.client_config("monitor", persistent_session=False), client_id="watcher")
    link.subscribe(f"ams/{device_id}/metrics", 1, lambda m: received.put(decode(m.payload).msg))
    link.start()
    try:
        return received.get(timeout=10)
    finally:
        link.stop()


def test_a_killed_trainer_resumes_without_resending_full_models(tmp_path, broker, shared_dir):
    config_path = write_toml(trainer_raw(tmp_path, broker), tmp_path / "trainer.toml")
    trainer = serve(config_path)
    device = start_device(tmp_path, broker, "cam-k", str(shared_dir / "videos/vtest.avi"))
    mirror_dir = tmp_path / "ckpt" / "cam-k" / "mirror"

    def latest_mirror_sha() -> str:
        return sha256_hex(sorted(mirror_dir.glob("v*.tflite"))[-1].read_bytes())

    try:
        wait_until(lambda: device.swaps >= 2, timeout=180, what="two updates before the kill")
        time.sleep(2.5)  # at least one periodic checkpoint of the session
        trainer.send_signal(signal.SIGKILL)
        trainer.wait()
        swaps_at_kill = device.swaps
        trainer = serve(config_path)
        wait_until(
            lambda: device.swaps >= swaps_at_kill + 2,
            timeout=180,
            what="updates from the restarted trainer",
        )
        device.pause()
        wait_until(
            lambda: device.runtime.model.sha256 == latest_mirror_sha(),
            timeout=90,
            what="the device on the restarted trainer's latest version",
        )
        figures = _retained_metrics(broker, "cam-k")
        assert figures.full_models == 0  # the restarted session knew the device's file
        assert device.runtime.endpoint.counters.get("received.model") == 0
        assert device.runtime.counters.get("slots.rejected.bad_hash") == 0
    finally:
        device.close()
        terminate(trainer)


def test_a_second_device_receives_an_expert_the_first_one_trained(tmp_path, broker, shared_dir):
    raw = trainer_raw(tmp_path, broker, iterations=10, lr=1e-4, batch_size=2)
    # any device model no worse than the other candidates joins the zoo; any better one is taken
    raw["recl"] = {"enabled": True, "margin": 0.0, "top_k": 2, "samples": 3,
                   "admission": {"alpha": 0.0}}  # fmt: skip
    daemon = TrainerDaemon(TrainerConfig.model_validate(raw))
    daemon.start()
    assert daemon.endpoint.wait_connected(10)
    video = str(shared_dir / "videos/vtest.avi")
    devices = [start_device(tmp_path, broker, "cam-a", video)]
    try:
        wait_until(lambda: daemon.host.reuse.stats.admitted >= 1, timeout=240,
                   what="an expert of cam-a in the zoo")  # fmt: skip
        devices.append(start_device(tmp_path, broker, "cam-b", video))
        wait_until(lambda: "cam-b" in daemon.sessions and daemon.sessions["cam-b"].stats.reuses,
                   timeout=240, what="cam-b trained on from an expert")  # fmt: skip
        wait_until(lambda: devices[1].swaps >= 1, timeout=120, what="cam-b's hot swap")
        picked = [e for e in daemon.host.reuse.zoo.experts if e.picks]
        assert picked and picked[0].origin == "cam-a"
        assert devices[1].runtime.counters.get("slots.rejected.bad_hash") == 0
        assert daemon.sessions["cam-b"].stats.full_models == 0  # an ordinary signed update
        assert (tmp_path / "ckpt" / "_zoo" / "zoo.json").exists()
        daemon.report()  # the zoo's figures ride on every session's metrics message
        figures = _retained_metrics(broker, "cam-b")
        assert figures.reuses >= 1 and figures.switch_bytes > 0
        assert figures.zoo is not None and figures.zoo.reused >= 1 and figures.zoo.zoo_experts >= 1
    finally:
        for device in devices:
            device.close()
        daemon.stop()


def test_a_devices_scene_cut_is_judged_by_the_trainer_at_once(tmp_path, broker, shared_dir):
    """[scene_cut] on the device, RECL on the trainer: the cars go up, then the first bottle
    frame alone, flagged; the daemon's session counts the cut, runs RECL's selection on that
    frame at once (one selection per segment: two) and sends its rate control again, which
    the device takes."""
    raw = trainer_raw(tmp_path, broker)
    raw["recl"] = {"enabled": True}
    daemon = TrainerDaemon(TrainerConfig.model_validate(raw))
    daemon.start()
    assert daemon.endpoint.wait_connected(10)
    profile = local_profile(broker.mqtt_table("cam-9"), tmp_path / "cam-9", device_id="cam-9",
                            source={"realtime": False, "loop": False},
                            sampling={"initial_fps": 0.5}, scene_cut={"enabled": True})  # fmt: skip
    runtime = EdgeRuntime.from_profile(profile)
    runtime.start()
    try:
        assert runtime.endpoint.wait_connected(10)
        frames, _ = two_scenes(shared_dir)
        runtime.run(frames)
        wait_until(lambda: "cam-9" in daemon.sessions
                   and daemon.sessions["cam-9"].stats.segments == 2,
                   timeout=60, what="the cars' segment and the cut's")  # fmt: skip
        assert daemon.wait_idle(60)
        session, reuse = daemon.sessions["cam-9"], daemon.host.reuse
        assert session.stats.scene_cuts == 1 and runtime.counters.get("scene_cuts") == 1
        assert reuse.stats.selections == 2
        wait_until(lambda: runtime.endpoint.counters.get("received.control") >= 1,
                   timeout=30, what="the control the cut made the trainer send again")  # fmt: skip
        assert not [k for k in runtime.counters.snapshot() if k.startswith("control.rejected")]
    finally:
        runtime.shutdown(drain_s=2)
        daemon.stop()


def test_the_trainers_dnngrad_steps_a_devices_knobs(tmp_path, broker, shared_dir):
    raw = trainer_raw(tmp_path, broker, iterations=2, batch_size=2)
    raw["oneadapt"] = {"enabled": True}
    daemon = TrainerDaemon(TrainerConfig.model_validate(raw))
    daemon.start()
    assert daemon.endpoint.wait_connected(10)
    video = str(shared_dir / "videos/vtest.avi")
    device = start_device(tmp_path, broker, "cam-a", video, oneadapt={"enabled": True})
    try:
        wait_until(lambda: device.runtime.counters.get("oneadapt.steps") >= 1, timeout=120,
                   what="a knob step from the trainer's gradient")  # fmt: skip
        knobs = device.runtime.segments.settings.knobs
        assert knobs.crf is not None and device.runtime.profile.knobs.refusal(knobs) is None
        assert device.runtime.counters.get("gradient.rejected.bad_signature") == 0
        session = daemon.sessions["cam-a"]
        assert 0 < session.stats.gradient_bytes <= 33 * 33 * session.stats.segments
    finally:
        device.close()
        daemon.stop()


def test_an_operators_rollback_reaches_the_device_as_a_signed_control(tmp_path, broker, shared_dir):
    raw = trainer_raw(tmp_path, broker)
    raw["dashboard"] = {"port": free_port()}  # the fleet's state, where actions are logged
    daemon = TrainerDaemon(TrainerConfig.model_validate(raw))
    daemon.start()
    assert daemon.endpoint.wait_connected(10)
    device = start_device(tmp_path, broker, "cam-a", str(shared_dir / "videos/vtest.avi"))
    try:
        wait_until(lambda: device.swaps >= 2, timeout=240, what="two hot swaps")
        device.pause()
        assert daemon.wait_idle(120)
        session = daemon.sessions["cam-a"]
        wait_until(lambda: device.runtime.model.sha256 == session.mirror.sha256, timeout=60,
                   what="the device on the mirror's file")  # fmt: skip
        back = session.mirror.version - 1
        expected = sha256_hex(session.mirror.versions()[back])
        entry = daemon.fleet.action("cam-a", {"kind": "rollback", "version": back}, "test")
        daemon.act("cam-a", Rollback(version=back), entry)
        wait_until(lambda: device.runtime.model.version == back, timeout=60,
                   what="the device back on its standby slot")  # fmt: skip
        assert device.runtime.model.sha256 == expected
        assert device.runtime.counters.get("slots.rollbacks") == 1  # a swap, no new file
        wait_until(lambda: entry.state != "queued", timeout=30, what="the action's end")
        assert entry.state == "done" and "a signed control" in entry.detail, entry
        wait_until(lambda: session.device.version == back, timeout=30, what="the device's ack")
        assert session.mirror.version == back and session.stats.rollbacks_ordered == 1
    finally:
        device.close()
        daemon.stop()
