"""The edge runtime: one device, from camera frames to model updates.

A frame goes one way: source → inference on the active model → result sinks, and, when the
sampler keeps it, → segment buffer (H.264 on a worker thread) → uplink (on-disk spool, MQTT).
Models come back through one entry point, ``submit_model_message``, which hands model and
update messages (and rollback orders) to the slots' worker; the new model reaches the frame
loop through the handshake of swap.py, between two frames. Control messages set the sampling
rate, T_update and encoder knobs.

Threads: the frame loop (the caller of ``run``), the prefetch reader and scaler, the MQTT
network loop and dispatcher, the segment encoder, the uplink sender, the model-slot worker and
the telemetry timer. Only the frame loop touches the active engine.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version as package_version

import numpy as np

from edge_runtime.backends.base import Engine
from edge_runtime.frames import Frame
from edge_runtime.model_slots import ModelSlots
from edge_runtime.oneadapt.adapter import KnobAdapter
from edge_runtime.opa.engine import DeviceLoad, OpaEngine
from edge_runtime.prefetch import Prefetcher
from edge_runtime.profile import Profile
from edge_runtime.results import ResultSink, SummaryPublisher
from edge_runtime.sampler import Sampler
from edge_runtime.scene_cut import SceneCutDetector
from edge_runtime.segment_buffer import EncodedSegment, SegmentBuffer
from edge_runtime.spool import Spool
from edge_runtime.swap import Handover, LoadedModel
from edge_runtime.telemetry import FrameStats, TelemetryReporter
from edge_runtime.uplink import NullUplink, Uplink
from shared_schema import prometheus
from shared_schema.counters import Counters
from shared_schema.endpoint import DeviceEndpoint
from shared_schema.envelope import Envelope
from shared_schema.gradient import GradientMap
from shared_schema.messages import (
    Ack,
    AckReason,
    Control,
    Gradient,
    Hello,
    MessageType,
    ModelFormat,
    OpaTelemetry,
    UpdateFormat,
)
from shared_schema.metrics import label_names
from shared_schema.prometheus import TelemetryCollector
from shared_schema.signing import Keyring
from shared_schema.topics import Plain, Topic, plain_json

log = logging.getLogger(__name__)

# What a device can apply to each kind of model file: value patches need a plain .tflite.
UPDATE_FORMATS = {
    ModelFormat.TFLITE: (UpdateFormat.QDELTA, UpdateFormat.AMS_FP16, UpdateFormat.ZPATCH),
    ModelFormat.EDGETPU_TFLITE: (UpdateFormat.ZPATCH,),
    ModelFormat.ONNX: (UpdateFormat.ZPATCH,),
}


@dataclass
class RunSummary:
    frames: int
    seconds: float
    swaps: int
    model_version: int | None
    counters: dict[str, int] = field(default_factory=dict)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


class EdgeRuntime:
    def __init__(
        self,
        profile: Profile,
        *,
        slots: ModelSlots,
        endpoint: DeviceEndpoint | None = None,
        uplink: Uplink | NullUplink | None = None,
        sinks: Sequence[ResultSink] = (),
        counters: Counters | None = None,
    ) -> None:
        self.profile = profile
        self.counters = counters or Counters()
        self.endpoint = endpoint
        self.uplink = uplink or NullUplink(self.counters)
        self._slots = slots
        self._handover = Handover(slots.active or slots.load())
        self.sinks = list(sinks)
        # the trainer's latest DNNGrad and the time of the frame it was taken on (OneAdapt)
        self.gradient: tuple[float, GradientMap] | None = None
        sampling = profile.sampling
        self.sampler = Sampler(
            sampling.initial_fps, min_fps=sampling.min_fps, max_fps=sampling.max_fps
        )
        self.segments = SegmentBuffer.from_config(
            profile.buffer, self._on_segment, sampling_rate_fps=self.sampler.rate_fps
        )
        self.adapter = None
        if profile.oneadapt.enabled:
            self.adapter = KnobAdapter(
                profile.oneadapt, profile.knobs, profile.buffer.initial_knobs,
                lambda knobs: self.segments.reconfigure(knobs=knobs), self.counters,
            )  # fmt: skip
        self.cuts = SceneCutDetector.of(profile.scene_cut)
        self.stats = FrameStats()
        self._telemetry = TelemetryReporter(self.stats)
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None
        self._metrics: TelemetryCollector | None = None  # [telemetry] prometheus_port

    @classmethod
    def from_profile(
        cls, profile: Profile, *, connect: bool = True, sinks: Sequence[ResultSink] = ()
    ) -> EdgeRuntime:
        """Everything a profile describes: slots, and unless ``connect`` is off, the MQTT
        endpoint with its spooled uplink and the optional results summary."""
        counters = Counters()
        keys = profile.model.trusted_keys
        if not keys:
            log.warning(
                "UNSIGNED: [model] allow_unsigned is on: this device takes any model, update or"
                " control from anyone who can publish on its topics (development only)"
            )
        slots = ModelSlots(
            profile.model.slot_dir,
            initial_model=profile.model.initial,
            open_engine=engine_opener(profile),
            device_id=profile.device.id,
            keyring=Keyring.load(keys) if keys else None,
            counters=counters,
        )
        slots.load()
        if not connect:
            return cls(profile, slots=slots, sinks=sinks, counters=counters)
        endpoint = DeviceEndpoint(profile.mqtt, profile.device.id, counters=counters)
        spool = Spool(
            profile.buffer.spool_dir,
            max_bytes=profile.buffer.spool_max_bytes,
            max_entries=profile.buffer.spool_max_segments,
            counters=counters,
        )
        summary = []
        if profile.telemetry.results_rate_hz > 0:
            classes = _label_count(profile) or slots.active.engine.num_classes or 256
            summary.append(
                SummaryPublisher(endpoint.send, profile.telemetry.results_rate_hz, classes)
            )
        return cls(
            profile,
            slots=slots,
            endpoint=endpoint,
            uplink=Uplink(endpoint, spool, counters),
            sinks=[*sinks, *summary],
            counters=counters,
        )

    # -- the model -------------------------------------------------------------------------

    @property
    def model(self) -> LoadedModel:
        """The model the next frame runs, and what the device reports."""
        return self._handover.upcoming

    @property
    def slots(self) -> ModelSlots:
        return self._slots

    def submit_model_message(self, envelope: Envelope) -> None:
        """The one way a model changes: a ``model`` or ``update`` message (or a rollback
        order) goes to the slots' worker; the frame loop keeps running meanwhile."""
        self._slots.submit(envelope)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        # Pure-Python work on other threads (parsing an update, MQTT handling) may hold the
        # GIL for this long before the frame loop gets it back; 5 ms would be a frame's slack.
        sys.setswitchinterval(0.001)
        self._slots.start(self._handover, send_ack=self._send)
        self.uplink.start()
        if self.endpoint is not None:
            self.endpoint.on(MessageType.MODEL, self._on_model_message)
            self.endpoint.on(MessageType.UPDATE, self._on_model_message)
            self.endpoint.on(MessageType.CONTROL, self._on_control)
            self.endpoint.on(MessageType.GRADIENT, self._on_gradient)
            self.endpoint.on_connect(self._announce)
            self.endpoint.start()
            self._serve_metrics()
            self._timer = threading.Thread(target=self._report, name="telemetry", daemon=True)
            self._timer.start()

    def run(self, frames: Iterable[Frame], max_frames: int | None = None) -> RunSummary:
        """Process frames until the source ends, ``max_frames`` were done or ``stop()``.

        The next frames are decoded and scaled to the model's input beside the frame loop
        (prefetch.py) while the current one is inferred, so those costs overlap inference
        instead of adding to it.
        """
        started = time.monotonic()
        with Prefetcher(frames, lambda: self.model.engine.input_size, self.stats) as prepared:
            for frame, rgb in prepared:
                self.process(frame, rgb)
                if self.endpoint is not None and self.endpoint.link.refusal is not None:
                    raise self.endpoint.link.refusal
                done = max_frames is not None and self.stats.frames >= max_frames
                if self._stop.is_set() or done:
                    break
        return RunSummary(
            frames=self.stats.frames,
            seconds=time.monotonic() - started,
            swaps=self.counters.get("slots.swaps"),
            model_version=self.model.version,
            counters=self.counters.snapshot(),
        )

    def _serve_metrics(self) -> None:
        """The device's own Prometheus endpoint, where the profile asks for one."""
        telemetry = self.profile.telemetry
        if telemetry.prometheus_port:
            self._metrics = TelemetryCollector(self.profile.device.id)
            prometheus.serve(self._metrics, telemetry.prometheus_host, telemetry.prometheus_port,
                             "telemetry.prometheus_port")  # fmt: skip

    def stop(self) -> None:
        """Ask the frame loop to finish after the current frame (safe from signal handlers)."""
        self._stop.set()

    def shutdown(self, drain_s: float = 10.0) -> None:
        """Deliver what is buffered (the last segment, the spool) and stop every thread."""
        self._stop.set()
        if self.adapter is not None:
            self.adapter.close()
        self.segments.close()
        if not self.uplink.drain(drain_s):
            log.warning("shutdown: %d segments stay spooled for the next start", self.uplink.depth)
        self.uplink.stop()
        self._slots.stop()
        if self.endpoint is not None:
            if self._timer is not None:
                self._timer.join(1.0)
            self.endpoint.stop()

    # -- the frame loop ------------------------------------------------------------------------

    def process(self, frame: Frame, rgb: np.ndarray | None = None) -> np.ndarray:
        """Run one frame through the active model; returns its label map. ``rgb`` is the frame
        already scaled to the model's input, when a prefetcher made it."""
        with self.stats.timed("swap"):
            self._handover.between_frames()  # a new model lands here, never inside a frame
        started = time.perf_counter()
        model, labels = self._handover.infer(lambda model: self._input(model, frame, rgb))
        latency = time.perf_counter() - started
        with self.stats.timed("sample"):
            cut = self._scene_cut(frame)
            sampled = self.sampler.offer(frame.timestamp, cut=cut)
            if cut:  # the cut's segment is sampled at the new rate
                self.segments.reconfigure(sampling_rate_fps=self.sampler.rate_fps)
            if sampled:
                self.segments.add(frame, scene_cut=cut)
                if self.adapter is not None:
                    self.adapter.sampled(frame)
        with self.stats.timed("sinks"):
            for sink in self.sinks:
                sink(frame, labels, model.version)
        self.stats.frame(latency, sampled)
        return labels

    def _scene_cut(self, frame: Frame) -> bool:
        """Whether ``frame`` starts a new scene (``edge_runtime.scene_cut``); if so it is
        sampled, and sampling goes to its maximum rate until the trainer's next control."""
        if self.cuts is None or not self.cuts.cut(frame):
            return False
        self.counters.inc("scene_cuts")
        return True

    @staticmethod
    def _input(model: LoadedModel, frame: Frame, rgb: np.ndarray | None) -> np.ndarray:
        height, width = model.engine.input_size
        if rgb is None or rgb.shape[:2] != (height, width):
            rgb = frame.rgb(width, height)
        return rgb

    def stage_seconds(self) -> dict[str, float]:
        """Where the time went since the start, per stage: wall time on the frame loop (``wait``
        for the next frame, ``late_scale``, ``swap``, ``inference``, ``sample``, ``sinks``), CPU
        time on the threads beside it (``source``, ``scale``, ``encode``, ``uplink``)."""
        encode = self.segments.counters.get("encode_cpu_us") / 1e6
        return self.stats.stages() | {"encode": encode}

    # -- messages ------------------------------------------------------------------------------

    def _on_segment(self, segment: EncodedSegment) -> None:
        with self.stats.timed("uplink", time.thread_time):  # on the encoder's thread
            self.uplink.submit(segment.message(model_version=self.model.version), segment.data)

    def _on_model_message(self, envelope: Envelope, topic: Topic) -> None:
        self.submit_model_message(envelope)

    def _on_control(self, envelope: Envelope, topic: Topic) -> None:
        control = envelope.msg
        assert isinstance(control, Control)
        reason = self._slots.refusal(envelope)
        detail = "signature does not verify"
        if reason is None:  # signed: then its knobs must lie within the profile's bounds
            knobs = control.encoder
            detail = "" if knobs is None else self.profile.knobs.refusal(knobs) or ""
            reason = AckReason.OUT_OF_BOUNDS if detail else None
        if reason is not None:  # the rates and knobs in force stay, the last good ones
            self.counters.inc(f"control.rejected.{reason.value}")
            log.warning("control: refused (%s) %s", reason.value, detail)
            self._send(self._ack_for(envelope, reason, detail))
            return
        rate = self.sampler.set_rate(control.sampling_rate_fps)
        self.segments.reconfigure(
            t_update_s=control.t_update_s, sampling_rate_fps=rate, knobs=control.encoder
        )
        if self.adapter is not None and control.encoder is not None:
            self.adapter.reset(control.encoder)
        log.info(
            "control: %.2f fps, T_update %.0f s, %s",
            rate,
            control.t_update_s,
            control.encoder or self.segments.settings.knobs,
        )
        if control.rollback_to is not None:
            self.submit_model_message(envelope)  # the slots acknowledge it
        else:
            self._send(self._ack_for(envelope))

    def _on_gradient(self, envelope: Envelope, topic: Topic) -> None:
        """The trainer's latest DNNGrad (OneAdapt), kept for the knob search; a forged one or
        one whose body does not fit its picture is counted and dropped, the last good kept."""
        msg = envelope.msg
        assert isinstance(msg, Gradient)
        reason = self._slots.refusal(envelope)
        if reason is None:
            try:
                grad = GradientMap.of_bytes(envelope.body, msg.scale, msg.width, msg.height)
            except ValueError as exc:
                reason = AckReason.BAD_PAYLOAD
                log.warning("gradient: refused (%s)", exc)
        if reason is not None:
            self.counters.inc(f"gradient.rejected.{reason.value}")
            return
        self.gradient = (msg.timestamp, grad)
        self.counters.inc("gradient.accepted")
        if self.adapter is not None:
            self.adapter.offer(msg.timestamp, grad, msg.utility, self.sampler.rate_fps)

    def _ack_for(
        self, envelope: Envelope, refused: AckReason | None = None, detail: str = ""
    ) -> Ack:
        model = self.model  # read once: the version and the hash of one model
        return Ack(
            ref_type="control",
            ref_seq=envelope.header.seq,
            ok=refused is None,
            reason=refused,
            detail=detail,
            model_version=model.version,
            model_sha256=model.sha256,
        )

    def _send(self, message: Ack) -> None:
        if self.endpoint is not None:
            self.endpoint.send(message)

    def _announce(self) -> None:
        model, profile = self.model, self.profile
        self.endpoint.send(  # type: ignore[union-attr]
            Hello(
                profile=profile.name,
                device_class=profile.device.device_class,
                runtime_version=package_version("amstream"),
                backend=profile.inference.backend,
                backends=(profile.inference.backend,),
                input_size=model.engine.input_size,
                model_version=model.version,
                model_sha256=model.sha256,
                update_formats=UPDATE_FORMATS[profile.model.format],
                max_message_bytes=profile.mqtt.max_message_bytes,
            )
        )

    def _report(self) -> None:
        interval = self.profile.telemetry.interval_s
        while not self._stop.wait(interval):
            counters = self.endpoint.counters  # type: ignore[union-attr]
            telemetry = self._telemetry.report(
                bytes_up=counters.get("bytes_out"),
                bytes_down=counters.get("bytes_in"),
                swaps=self.counters.get("slots.swaps"),
                spool_depth=self.uplink.depth,
                model_version=self.model.version,
                counters=self.counters.snapshot() | self.segments.counters.snapshot(),
                opa=opa_telemetry(self.model.engine),
            )
            self.endpoint.send(telemetry)  # type: ignore[union-attr]
            if self._metrics is not None:
                self._metrics.latest = telemetry
            state = self._telemetry.state(telemetry, sampling_fps=self.sampler.rate_fps)
            self.endpoint.publish_plain(  # type: ignore[union-attr]
                self.profile.device.id, Plain.STATE, plain_json(state)
            )


def engine_opener(profile: Profile) -> Callable[[bytes], Engine]:
    """How the device turns model bytes into its engine: the profile's back-end, or OPA's
    choice of sub-network on it where ``[opa]`` is on."""
    if not profile.opa.enabled:
        return profile.inference.open
    load = DeviceLoad()  # the device's, carried from model to model
    return lambda data: OpaEngine(data, profile.inference, profile.opa.budget_ms, load)


def opa_telemetry(engine: Engine) -> OpaTelemetry | None:
    """What OPA chose lately, where the engine is OPA's."""
    return engine.telemetry() if isinstance(engine, OpaEngine) else None


def _label_count(profile: Profile) -> int | None:
    labels = profile.model.labels
    if labels is None or not labels.is_file():
        return None
    return len(label_names(labels))


def install_signal_handlers(runtime: EdgeRuntime) -> None:
    """SIGINT / SIGTERM end the frame loop cleanly (the last segment is still delivered)."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: runtime.stop())
