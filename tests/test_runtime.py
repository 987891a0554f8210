"""The whole device on a real broker, a real video and the real student: segments up,
control and model updates down, a hot swap without stopping the frame loop."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from edge_runtime.h264 import decode_segment
from edge_runtime.profile import bundled_profile
from edge_runtime.runtime import EdgeRuntime
from edge_runtime.sources import open_source
from shared_schema.endpoint import TrainerEndpoint
from shared_schema.envelope import sha256_hex
from shared_schema.gradient import GradientMap
from shared_schema.messages import (
    AckReason,
    Control,
    EncoderKnobs,
    Gradient,
    MessageType,
    RegionQuality,
)
from shared_schema.signing import Signer
from shared_schema.tflite_file import TFLiteFile
from tests.mirror import Mirror
from tests.mqtt_helpers import Inbox, wait_until
from tests.trainer_helpers import two_scenes


def device_profile(tmp_path, broker=None, **sections):
    tables = {
        "telemetry": {"interval_s": 0.5, "results_rate_hz": 2.0},
        "source": {"realtime": False, "loop": False},
    }
    if broker is not None:
        tables["mqtt"] = broker.mqtt_table("cpu-0")
    for name, values in sections.items():
        tables[name] = {**tables.get(name, {}), **values}
    return bundled_profile("cpu", tmp_path, device_id="cpu-0", **tables)


@pytest.fixture
def video(shared_dir):
    return str(shared_dir / "videos/vtest.avi")


def test_labels_equal_a_bare_interpreter(tmp_path, video):
    profile = device_profile(tmp_path)
    runtime = EdgeRuntime.from_profile(profile, connect=False)
    bare = Interpreter(str(profile.model.initial), num_threads=2)
    bare.allocate_tensors()
    (inp,), (out,) = bare.get_input_details(), bare.get_output_details()
    with open_source(video) as frames:
        for _, frame in zip(range(5), frames, strict=False):
            labels = runtime.process(frame)
            bare.set_tensor(inp["index"], frame.rgb(513, 513)[None])
            bare.invoke()
            assert np.array_equal(labels, bare.get_tensor(out["index"])[0])
    runtime.shutdown()


def test_run_times_each_stage_with_the_scaling_beside_the_frame_loop(tmp_path, video):
    runtime = EdgeRuntime.from_profile(device_profile(tmp_path), connect=False)
    with open_source(video) as frames:
        summary = runtime.run(frames, max_frames=30)
    runtime.shutdown()  # encodes the last segment: 3 sampled frames
    stages = runtime.stage_seconds()
    on_the_loop = ("wait", "late_scale", "swap", "inference", "sample", "sinks")
    assert 0 < stages["inference"] < sum(stages.get(s, 0.0) for s in on_the_loop)
    assert sum(stages.get(s, 0.0) for s in on_the_loop) <= summary.seconds
    assert stages["source"] > 0 and stages.get("scale", 0.0) + stages.get("late_scale", 0.0) > 0
    assert stages["encode"] > 0 and summary.frames == 30


@pytest.fixture
def trainer(broker):
    endpoint = TrainerEndpoint(broker.client_config())
    inbox = Inbox(endpoint)
    endpoint.start()
    assert endpoint.wait_connected(10)
    yield endpoint, inbox
    endpoint.stop(timeout=1.0)


def _start(profile):
    runtime = EdgeRuntime.from_profile(profile)
    runtime.start()
    assert runtime.endpoint.wait_connected(10)
    return runtime


@pytest.mark.broker
def test_device_uplink_hello_telemetry_and_control(tmp_path, broker, trainer, video, trainer_key):
    endpoint, inbox = trainer
    runtime = _start(device_profile(tmp_path, broker))
    hello, _ = inbox.of_type(MessageType.HELLO)
    assert hello.msg.model_sha256 == runtime.model.sha256 and hello.msg.input_size == (513, 513)
    with open_source(video) as frames:
        runtime.run(frames, max_frames=105)  # 10.5 s of video at 1 fps: one full segment
        segment, _ = inbox.of_type(MessageType.SEGMENT, timeout=30)
        assert segment.msg.timestamps == tuple(float(t) for t in range(10))
        pictures = decode_segment(segment.body, expected_frames=10)
        assert (pictures[0].width, pictures[0].height) == (768, 576)

        control = Signer(trainer_key).sign("cpu-0", Control(sampling_rate_fps=0.5, t_update_s=6.0))
        assert endpoint.send("cpu-0", control).wait(5)
        ack, _ = inbox.of_type(MessageType.ACK)
        assert ack.msg.ok and ack.msg.ref_type == "control"
        wait_until(lambda: runtime.sampler.rate_fps == 0.5, what="the new rate")
        runtime.run(frames, max_frames=300)
    runtime.shutdown()
    rates = []
    while True:
        try:
            env, _ = inbox.of_type(MessageType.SEGMENT, timeout=5)
        except AssertionError:
            break
        rates.append((env.msg.sampling_rate_fps, env.msg.timestamps))
    assert rates, "segments after the control message"
    later = [ts for rate, ts in rates if rate == 0.5]
    assert later and all(np.allclose(np.diff(ts), 2.0) for ts in later if len(ts) > 1)
    assert all(ts[-1] - ts[0] < 6.0 for ts in later)
    telemetry, _ = inbox.of_type(MessageType.TELEMETRY)
    assert telemetry.msg.frames > 0 and telemetry.msg.latency_p95_ms > 0
    results, _ = inbox.of_type(MessageType.RESULTS)
    assert abs(sum(results.msg.class_fractions) - 1.0) < 1e-6


@pytest.mark.broker
def test_a_scene_cut_goes_up_at_once(tmp_path, broker, trainer, shared_dir):
    """[scene_cut] on: the cars sampled so far go up as they are, the first bottle frame right
    after them in a segment of its own, flagged, long before T_update; then sampling runs at
    the profile's maximum rate."""
    _, inbox = trainer
    frames, first_bottle = two_scenes(shared_dir)
    profile = device_profile(tmp_path, broker, sampling={"initial_fps": 0.5},
                             scene_cut={"enabled": True})  # fmt: skip
    runtime = _start(profile)
    runtime.run(frames)
    cars, _ = inbox.of_type(MessageType.SEGMENT, timeout=30)
    cut, _ = inbox.of_type(MessageType.SEGMENT, timeout=30)
    assert not cars.msg.scene_cut and max(cars.msg.timestamps) < first_bottle
    assert cut.msg.scene_cut and cut.msg.timestamps == (first_bottle,)
    assert (cut.msg.width, cut.msg.height) == (frames[-1].width, frames[-1].height)
    assert runtime.counters.get("scene_cuts") == 1 and runtime.sampler.rate_fps == 1.0
    runtime.shutdown()
    rest, _ = inbox.of_type(MessageType.SEGMENT, timeout=30)
    assert not rest.msg.scene_cut and 1.0 <= rest.msg.timestamps[0] - first_bottle < 1.1


@pytest.mark.broker
def test_hot_swap_over_mqtt_keeps_frames_flowing(tmp_path, broker, trainer, video, trainer_key):
    endpoint, inbox = trainer
    profile = device_profile(tmp_path, broker)
    runtime = _start(profile)
    mirror = Mirror(profile.model.initial.read_bytes(), key=trainer_key, device_id="cpu-0")
    for version in (1, 2):
        mirror.next_version(version)
    done = threading.Event()

    def send_updates():
        for frm, to in ((0, 1), (1, 2)):
            msg, body = mirror.update_message(frm, to)
            endpoint.send("cpu-0", msg, body).wait(5)
            inbox.of_type(MessageType.ACK, timeout=30)
        done.set()

    sender = threading.Thread(target=send_updates)
    ran = []  # the model version of every frame
    with open_source(video, loop=True) as frames:
        for frame in frames:
            ran.append(runtime.model.version)
            runtime.process(frame)
            if len(ran) == 20:
                sender.start()  # updates arrive while frames flow
            if done.is_set() and len(ran) > 40 and ran[-20] == 2:
                break
    sender.join(5)
    assert runtime.model.version == 2
    assert runtime.model.sha256 == sha256_hex(mirror.versions[2])
    assert runtime.counters.get("slots.swaps") == 2
    # each version ran frames, in order, and the loop never stopped to swap
    assert [v for i, v in enumerate(ran) if i == 0 or v != ran[i - 1]] == [None, 1, 2]
    runtime.shutdown()
    restarted = EdgeRuntime.from_profile(profile, connect=False)
    assert restarted.model.version == 2  # the active slot survived the restart
    restarted.shutdown()


@pytest.mark.broker
def test_a_collapsed_model_is_refused_on_its_warm_up_frame(
    tmp_path, broker, trainer, video, trainer_key
):
    """While frames flow, a new model's first frame is its warm-up: a model whose output
    collapses to one class is refused there, and that frame's result comes from the old one."""
    endpoint, inbox = trainer
    profile = device_profile(tmp_path, broker)
    delivered = []
    runtime = EdgeRuntime.from_profile(
        profile, sinks=[lambda frame, labels, version: delivered.append(np.unique(labels).size)]
    )
    runtime.start()
    assert runtime.endpoint.wait_connected(10)
    mirror = Mirror(profile.model.initial.read_bytes(), key=trainer_key, device_id="cpu-0")
    base = TFLiteFile(mirror.versions[0])
    last_bias = [t for t in base.trainable if t.dtype == np.int32][-1]
    biased = base.values(last_bias).copy()
    biased[0] = np.iinfo(np.int32).max // 2  # background wins every pixel
    mirror.versions[1] = base.patched({last_bias.index: biased})
    msg, body = mirror.update_message(0, 1)
    with open_source(video, loop=True) as frames:
        for count, frame in enumerate(frames):
            runtime.process(frame)
            if count == 10:
                assert endpoint.send("cpu-0", msg, body).wait(5)
            if runtime.counters.get("slots.rejected.invalid_model") or count > 600:
                break
    ack, _ = inbox.of_type(MessageType.ACK, timeout=10)
    assert not ack.msg.ok and ack.msg.reason == "invalid_model"
    assert "one class" in ack.msg.detail
    assert runtime.model.version is None
    assert min(delivered) > 1  # no frame's result came from the collapsed model
    runtime.shutdown()


@pytest.mark.broker
def test_a_device_applies_signed_knobs_within_its_bounds_and_keeps_them_against_others(
    tmp_path, broker, trainer, video, trainer_key
):
    endpoint, inbox = trainer
    runtime = _start(device_profile(tmp_path, broker, knobs={"max_bitrate_kbps": 1000.0}))
    inbox.of_type(MessageType.HELLO)
    signer = Signer(trainer_key)
    knobs = EncoderKnobs(bitrate_kbps=300.0, width=384,
                         roi=RegionQuality(cols=2, rows=1, qoffsets=(-0.5, 0.5)))  # fmt: skip
    good = signer.sign("cpu-0", Control(sampling_rate_fps=1.0, t_update_s=4.0, encoder=knobs))
    assert endpoint.send("cpu-0", good).wait(5)
    ack, _ = inbox.of_type(MessageType.ACK)
    assert ack.msg.ok
    wait_until(lambda: runtime.segments.settings.knobs == knobs, what="the new knobs")
    for bad in (EncoderKnobs(bitrate_kbps=5000.0), EncoderKnobs(width=32)):
        control = Control(sampling_rate_fps=0.5, t_update_s=8.0, encoder=bad)
        assert endpoint.send("cpu-0", signer.sign("cpu-0", control)).wait(5)
        ack, _ = inbox.of_type(MessageType.ACK)
        assert not ack.msg.ok and ack.msg.reason == AckReason.OUT_OF_BOUNDS
        assert "encoder." in ack.msg.detail and "[knobs]" in ack.msg.detail
    assert runtime.counters.get("control.rejected.out_of_bounds") == 2
    # the last good knobs and rates stay in force, and the segments are made with them
    assert runtime.segments.settings.knobs == knobs and runtime.sampler.rate_fps == 1.0
    with open_source(video) as frames:
        runtime.run(frames, max_frames=50)
    segment, _ = inbox.of_type(MessageType.SEGMENT, timeout=30)
    pictures = decode_segment(segment.body)
    assert (pictures[0].width, pictures[0].height) == (384, 288)
    assert segment.msg.bitrate_kbps == 300.0
    runtime.shutdown()


def test_knob_bounds_are_checked_when_the_profile_loads(tmp_path):
    from edge_runtime.profile import ProfileError

    with pytest.raises(ProfileError, match="min_qp"):
        device_profile(tmp_path, knobs={"min_qp": 40, "max_qp": 30})
    with pytest.raises(ProfileError, match=r"encoder\.bitrate_kbps"):
        device_profile(tmp_path, knobs={"max_bitrate_kbps": 100.0})  # the [buffer]'s is 200
    refuse_roi = device_profile(tmp_path, knobs={"max_roi_qoffset": 0.0}).knobs
    roi = RegionQuality(cols=1, rows=1, qoffsets=(0.25,))
    assert "encoder.roi.qoffsets" in refuse_roi.refusal(EncoderKnobs(roi=roi))
    assert refuse_roi.refusal(EncoderKnobs(qp=30)) is None


@pytest.mark.broker
def test_a_device_keeps_the_trainers_signed_gradient_and_counts_the_others(
    tmp_path, broker, trainer, trainer_key
):
    endpoint, inbox = trainer
    runtime = _start(device_profile(tmp_path, broker))
    inbox.of_type(MessageType.HELLO)
    values = np.arange(33 * 33, dtype=np.float32).reshape(33, 33) / 100
    body, scale = GradientMap(values, 513, 513).quantized()
    signer = Signer(trainer_key)
    msg = Gradient(width=513, height=513, scale=scale, utility=900.0, timestamp=12.0)
    forged = signer.sign("cpu-0", msg, body).model_copy(update={"scale": scale * 2})
    for sent, payload in (
        (msg, body),  # unsigned
        (forged, body),  # its signature covers another scale
        (signer.sign("cpu-0", msg, body[:-1]), body[:-1]),  # a byte short of its picture
        (signer.sign("cpu-0", msg, body), body),
    ):
        assert endpoint.send("cpu-0", sent, payload).wait(5)
    wait_until(lambda: runtime.counters.get("gradient.accepted") == 1, what="the gradient")
    assert runtime.counters.get("gradient.rejected.bad_signature") == 2
    assert runtime.counters.get("gradient.rejected.bad_payload") == 1
    timestamp, kept = runtime.gradient
    assert timestamp == 12.0 and (kept.width, kept.height) == (513, 513)
    assert np.allclose(kept.values, values, atol=scale / 255)
    runtime.shutdown()


@pytest.mark.broker
def test_oneadapt_steps_the_knobs_on_each_gradient_within_the_bounds(
    tmp_path, broker, trainer, video, trainer_key
):
    endpoint, inbox = trainer
    bounds = {"min_crf": 20.0, "max_crf": 40.0}
    runtime = _start(device_profile(tmp_path, broker, knobs=bounds, oneadapt={"enabled": True}))
    inbox.of_type(MessageType.HELLO)
    with open_source(video) as frames:
        runtime.run(frames, max_frames=25)
    sampled = list(runtime.adapter._frames)
    assert sampled, "frames the sampler took"
    # the teacher's gradient everywhere: quality is worth its bits at this λ
    values = np.ones((33, 33), np.float32)
    body, scale = GradientMap(values, 513, 513).quantized()
    signer = Signer(trainer_key)
    # the second names a frame the device never took (or no longer keeps)
    for timestamp, counter in ((sampled[-1], "oneadapt.steps"), (1e6, "oneadapt.frame_missing")):
        msg = Gradient(width=513, height=513, scale=scale, utility=50.0, timestamp=timestamp)
        assert endpoint.send("cpu-0", signer.sign("cpu-0", msg, body), body).wait(5)
        wait_until(lambda c=counter: runtime.counters.get(c) == 1, what=counter)
    assert runtime.counters.get("oneadapt.steps") == 1
    knobs = runtime.segments.settings.knobs
    assert knobs.crf is not None and runtime.profile.knobs.refusal(knobs) is None
    runtime.shutdown()
