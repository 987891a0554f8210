"""The trainer's MQTT fronts on Ray: several, sharing the uplink subscription.

A front is a Ray actor (``FrontActor``) on the machine of the ``serve --ray`` process that
started it (its login's files are there), holding the front's MQTT connection. The broker hands
each uplink message to one front of the group. The front checks what can be checked of the
message alone (topic, envelope, sender, type: ``Endpoint.check``, so forged or malformed
payloads are refused and counted here and never reach an actor), then forwards it as it came
to the device's session actor, creating the actor on the device's first message (up to
``max_sessions`` session actors in the namespace). The forward returns once the actor holds the
message (a segment on disk), and only then does the front's link acknowledge it to the broker:
a front or an actor that dies before has the broker deliver it again, to a front of the group.
Session actors publish what they send down through a front's connection (``publish``).
Telemetry and status are the front's own (logged, counted, exported to Prometheus), and so are
the figures of the sessions that publish through it (their plain ``session`` topic, read as it
passes): a session's figures reach one front's Prometheus endpoint, the one its device id picks.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from cloud_trainer.config import TrainerConfig
from cloud_trainer.host import recently_active
from cloud_trainer.prometheus import TrainerMetrics
from cloud_trainer.scaleout.actor import (
    FORWARDED,
    FRONT_PREFIX,
    SESSION_PREFIX,
    SessionActor,
    SessionRetired,
    actor_name,
)
from shared_schema.cli import configure_logging
from shared_schema.config_files import ConfigFileError
from shared_schema.endpoint import TrainerEndpoint
from shared_schema.envelope import Envelope
from shared_schema.messages import MessageType, Telemetry
from shared_schema.mqtt import Inbound, Outbound
from shared_schema.topics import Plain, Topic, parse_plain_topic, shared_subscriptions

log = logging.getLogger(__name__)

REOPEN_S = 120.0  # how long an actor that left (idle) or died is opened again before giving up
DELIVER_TIMEOUT_S = 300.0  # a new actor loads the teacher and its checkpoint; Ray places it first
SESSIONS_CHECK_S = 5.0  # how long a count of the session actors in the namespace is trusted
FRONT_THREADS = 16  # the front actor's calls at once: session actors publishing through it


class RayConfigError(ConfigFileError):
    """A trainer.toml or command line that ``serve --ray`` cannot run."""


def check_ray_config(config: TrainerConfig) -> None:
    """Refuse what Ray cannot run (one line each, naming the key); say what it leaves off."""
    if config.recl.enabled:
        raise RayConfigError(
            "[recl] enabled: the expert zoo is shared within one process; serve RECL without"
            " --ray (a zoo shared across Ray actors is not built yet)"
        )
    on_gpu = any(d.startswith("cuda") for d in (config.training.device, config.teacher.device))
    if on_gpu and config.ray.num_gpus == 0:  # Ray hides the GPUs from an actor that asks none
        raise RayConfigError(
            '[ray] num_gpus: sessions train on "cuda": give each a share of a GPU (0.1: ten'
            " sessions per GPU)"
        )
    if config.dashboard.enabled:  # the trainer's provisioned config has it: not an error
        log.warning("[dashboard] port %d: not served with --ray (the dashboard sees the sessions"
                    " of one process); sessions' figures are on their retained metrics topics",
                    config.dashboard.port)  # fmt: skip


class FrontEndpoint(TrainerEndpoint):
    """The trainer's endpoint on a shared subscription that forwards what sessions take."""

    def __init__(
        self, config: TrainerConfig, index: int, forward: Callable[[Topic, Inbound], None]
    ) -> None:
        mqtt = config.mqtt
        if index:  # a broker that does not make the login the client id tells them apart so
            base = mqtt.client_id or config.trainer_id
            mqtt = mqtt.model_copy(update={"client_id": f"{base}-front{index}"})
        subscriptions = shared_subscriptions(mqtt.prefix, config.ray.group)
        super().__init__(mqtt, trainer_id=config.trainer_id, subscriptions=subscriptions)
        self._forward = forward

    def _validate(self, inbound: Inbound) -> tuple[Envelope | None, Topic]:
        _, topic = self.check(inbound)
        if topic.type not in FORWARDED:
            return super()._validate(inbound)  # telemetry: the front's own
        self._forward(topic, inbound)
        return None, topic


class FrontActor:
    def __init__(self, config: TrainerConfig, index: int) -> None:
        configure_logging(logging.INFO)
        self.config = config
        self.endpoint = FrontEndpoint(config, index, self._forward)
        self.endpoint.on(MessageType.TELEMETRY, self._telemetry)
        self.endpoint.on_status(self._status)
        self.metrics = TrainerMetrics()
        options = config.ray
        self._sessions_class = ray.remote(SessionActor)
        self._options = {
            "namespace": options.namespace,
            "lifetime": "detached",  # outlives the front that made it: every front reaches it
            "max_restarts": options.max_restarts,
            "max_task_retries": -1,  # a call to a restarting actor waits for it
            "num_cpus": options.num_cpus,
            "num_gpus": options.num_gpus,
        }
        self._actors: dict[str, object] = {}  # handles this front holds, by device
        self._sessions: tuple[float, int] = (-float("inf"), 0)  # (when counted, how many)

    # -- lifecycle (called by the serve process) -----------------------------------------------

    def start(self) -> None:
        self.metrics.serve(self.config.metrics)
        for device_id in recently_active(self.config):  # as the single daemon resumes them
            self.actor(device_id)
        self.endpoint.start()

    def wait_connected(self, timeout: float) -> bool:
        return self.endpoint.wait_connected(timeout)

    def refusal(self) -> str | None:
        refusal = self.endpoint.link.refusal
        return None if refusal is None else str(refusal)

    def counters(self) -> dict[str, int]:
        return self.endpoint.counters.snapshot()

    def stop(self) -> None:
        """Disconnect; the session actors stay (other fronts, or the next, reach them)."""
        self.endpoint.stop()

    # -- for the session actors ----------------------------------------------------------------

    def publish(self, messages: list[Outbound]) -> bool:
        """Publish a session's messages (one envelope, its chunks, or a plain topic's value)
        on this link; a session's figures also go to this front's Prometheus endpoint."""
        accepted = self.endpoint.link.publish_many(messages).accepted
        for message in messages:
            plain = parse_plain_topic(self.config.mqtt.prefix, message.topic)
            if plain is not None and plain[1] is Plain.SESSION:
                self._export(plain[0], message.payload)
        return accepted

    def _export(self, device_id: str, payload: bytes) -> None:
        """A session's figures (its plain JSON) for this front's Prometheus endpoint; what is
        not a JSON object is counted and skipped, and the message went out all the same."""
        try:
            figures = json.loads(payload)
        except ValueError:
            figures = None
        if not isinstance(figures, dict):
            self.endpoint.counters.inc("trainer.figures_unreadable")
            log.warning("%s: its session figures are not a JSON object: not exported", device_id)
            return
        self.metrics.session({**figures, "device_id": device_id})

    # -- forwarding ----------------------------------------------------------------------------

    def actor(self, device_id: str) -> object | None:
        """The device's session actor: the one in the namespace, or a new one where there is
        room for it (max_sessions)."""
        handle = self._actors.get(device_id)
        if handle is None:
            name = actor_name(device_id)
            try:
                handle = ray.get_actor(name, namespace=self.config.ray.namespace)
            except ValueError:  # none yet (or it left)
                if not self._room():
                    return None
                options = {**self._options, "name": name, "get_if_exists": True}
                handle = self._sessions_class.options(**options).remote(self.config, device_id)
            self._actors[device_id] = handle
        return handle

    def _room(self) -> bool:
        counted_at, count = self._sessions
        if time.monotonic() - counted_at > SESSIONS_CHECK_S:
            names = ray.util.list_named_actors()
            count = sum(1 for name in names if name.startswith(SESSION_PREFIX))
            counted_at = time.monotonic()
        if count >= self.config.max_sessions:
            return False
        self._sessions = (counted_at, count + 1)
        return True

    def _forward(self, topic: Topic, inbound: Inbound) -> None:
        """Hand the message to the device's session actor; one that left (idle) or died is
        opened again, for up to REOPEN_S (a leaving actor keeps its name while it saves)."""
        device_id = topic.device_id
        deadline = time.monotonic() + REOPEN_S
        while True:
            actor = self.actor(device_id)
            if actor is None:
                self.endpoint.counters.inc("trainer.sessions_refused")
                return
            try:
                ray.get(actor.deliver.remote(inbound.topic, inbound.payload),
                        timeout=DELIVER_TIMEOUT_S)  # fmt: skip
                self.endpoint.counters.inc(f"forwarded.{topic.type.value}")
                return
            except ray.exceptions.GetTimeoutError:  # never placed, or stuck: not this front too
                self._actors.pop(device_id, None)
                self.endpoint.counters.inc("trainer.forward_timeouts")
                log.error("%s: its session actor did not take a %s message in %.0f s: dropped;"
                          " is there room on the Ray cluster for [ray] num_cpus and num_gpus?",
                          device_id, topic.type.value, DELIVER_TIMEOUT_S)  # fmt: skip
                return
            except (SessionRetired, ray.exceptions.RayActorError) as exc:
                self._actors.pop(device_id, None)
                if time.monotonic() > deadline:
                    break
                log.info("%s: session actor gone (%s): opening it again", device_id,
                         type(exc).__name__)  # fmt: skip
                time.sleep(0.5)  # its name is freed as it leaves
        self.endpoint.counters.inc("trainer.forward_failed")
        log.error("%s: no session actor took a %s message in %.0f s: dropped (see the Ray"
                  " cluster's log)", device_id, topic.type.value, REOPEN_S)  # fmt: skip

    # -- the front's own -----------------------------------------------------------------------

    def _status(self, device_id: str, online: bool) -> None:
        self.metrics.online(device_id, online)

    def _telemetry(self, envelope: Envelope, topic: Topic) -> None:
        assert isinstance(envelope.msg, Telemetry)
        self.metrics.telemetry(topic.device_id, envelope.msg)


class RayFront:
    """``serve --ray``: this process's front, a Ray actor on this machine, named by its number
    (one per number in the namespace); it leaves with this process."""

    def __init__(self, config: TrainerConfig, address: str, index: int = 0) -> None:
        """``address``: the Ray cluster's (``auto``: the one this machine belongs to;
        ``local``: a cluster of this process's own)."""
        check_ray_config(config)
        if not ray.is_initialized():
            ray.init(address=None if address == "local" else address,
                     namespace=config.ray.namespace, logging_level=logging.WARNING)  # fmt: skip
        name = f"{FRONT_PREFIX}{index}"
        if name in ray.util.list_named_actors():
            raise RayConfigError(f"--front {index}: that front runs already; give another number")
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        options = {"name": name, "namespace": config.ray.namespace, "num_cpus": 0,
                   "max_concurrency": FRONT_THREADS, "scheduling_strategy": here}  # fmt: skip
        self.actor = ray.remote(FrontActor).options(**options).remote(config, index)

    def start(self) -> None:
        ray.get(self.actor.start.remote())

    def wait_connected(self, timeout: float) -> bool:
        return ray.get(self.actor.wait_connected.remote(timeout))

    @property
    def refusal(self) -> str | None:
        return ray.get(self.actor.refusal.remote())

    def counters(self) -> dict[str, int]:
        return ray.get(self.actor.counters.remote())

    def stop(self, timeout: float = 60.0) -> None:
        try:
            ray.get(self.actor.stop.remote(), timeout=timeout)
        finally:
            ray.kill(self.actor)
