"""One realistic message of every type, with its body, for round-trip tests."""

from __future__ import annotations

import hashlib

from shared_schema.messages import (
    Ack,
    AckReason,
    Control,
    EncoderKnobs,
    Gradient,
    Hello,
    Message,
    Metrics,
    Model,
    ModelFormat,
    RegionQuality,
    Results,
    Segment,
    Telemetry,
    Update,
    UpdateFormat,
)

MODEL_BYTES = bytes(range(256)) * 40
SHA = hashlib.sha256(MODEL_BYTES).hexdigest()

UPLINK: list[tuple[Message, bytes]] = [
    (
        Hello(
            profile="cpu",
            device_class="cpu",
            runtime_version="0.1.0",
            backend="litert",
            backends=("litert", "onnxruntime"),
            input_size=(513, 513),
            model_version=3,
            model_sha256=SHA,
            update_formats=(UpdateFormat.QDELTA, UpdateFormat.ZPATCH),
            max_message_bytes=1 << 20,
        ),
        b"",
    ),
    (
        Segment(
            width=640,
            height=360,
            timestamps=(10.0, 11.0, 12.0, 12.0, 13.5),
            sampling_rate_fps=1.0,
            bitrate_kbps=200.0,
            model_version=3,
        ),
        b"\x00\x00\x00\x01\x67" + bytes(5000),
    ),
    (
        Telemetry(
            uptime_s=120.5,
            fps=29.7,
            latency_p50_ms=14.2,
            latency_p95_ms=19.9,
            frames=3600,
            frames_sampled=120,
            swaps=4,
            bytes_up=300_000,
            bytes_down=45_000,
            spool_depth=0,
            model_version=3,
            counters={"rejected.bad_hash": 1, "segments_dropped": 0},
        ),
        b"",
    ),
    (Results(frame_ts=12.25, frames=30, model_version=3, class_fractions=(0.8, 0.0, 0.2)), b""),
    (
        Ack(
            ref_type="update",
            ref_seq=17,
            ok=False,
            reason=AckReason.BASE_MISMATCH,
            detail="device runs version 3, update is from 2",
            model_version=3,
            model_sha256=SHA,
            resync_from=3,
        ),
        b"",
    ),
]

DOWNLINK: list[tuple[Message, bytes]] = [
    (Model(version=4, format=ModelFormat.TFLITE, name="deeplabv3_mnv2_dm05"), MODEL_BYTES),
    (
        Update(
            base_version=4,
            base_sha256="c" * 64,
            new_version=5,
            result_sha256=SHA,
            format=UpdateFormat.QDELTA,
            signature="ab" * 64,
        ),
        b"\x28\xb5\x2f\xfd" + bytes(300),
    ),
    (
        Control(
            sampling_rate_fps=0.4,
            t_update_s=12.0,
            encoder=EncoderKnobs(
                bitrate_kbps=150.0,
                width=480,
                height=270,
                roi=RegionQuality(cols=2, rows=2, qoffsets=(-0.5, 0.0, 0.25, 1.0)),
            ),
        ),
        b"",
    ),
    (
        Gradient(width=513, height=513, scale=0.29, utility=1800.0, timestamp=41.0),
        bytes(range(33)) * 33,
    ),
    (Ack(ref_type="segment", ref_seq=9, ok=False, reason=AckReason.DECODE_ERROR), b""),
]

METRICS: list[tuple[Message, bytes]] = [
    (
        Metrics(
            mirror_version=7,
            device_version=6,
            sampling_rate_fps=0.4,
            t_update_s=12.0,
            training_seconds_last=18.5,
            training_seconds_mean=19.2,
            buffer_samples=96,
            classes=(0, 15),
            segments=30,
            segments_rejected=1,
            segments_dropped=0,
            frames=290,
            bytes_up=7_000_000,
            bytes_down=800_000,
            phases=29,
            updates_sent=29,
            updates_acked=28,
            updates_rejected=1,
            resyncs=1,
            full_models=0,
        ),
        b"",
    )
]

ALL: list[tuple[Message, bytes]] = UPLINK + DOWNLINK + METRICS
