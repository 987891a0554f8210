"""The wire protocol shared by edge devices and the cloud trainer (SPEC §4).

Topics (``topics``), message types (``messages``), the envelope that frames them
(``envelope``), chunking for capped brokers (``chunking``), and the MQTT layer both sides use
(``mqtt``, ``endpoint``). Nothing else in the project builds a topic or parses a payload.
"""

from shared_schema.endpoint import DeviceEndpoint, TrainerEndpoint
from shared_schema.envelope import DEFAULT_LIMITS, Envelope, Limits, decode, encode
from shared_schema.errors import ProtocolError, Reason
from shared_schema.messages import (
    SCHEMA_VERSION,
    Ack,
    AckReason,
    Control,
    EncoderKnobs,
    Hello,
    MessageType,
    Model,
    ModelFormat,
    Results,
    Segment,
    Telemetry,
    Update,
    UpdateFormat,
)
from shared_schema.mqtt import BrokerConfig, TlsConfig
from shared_schema.topics import Direction, Topic, parse_topic, topic_for

__all__ = [
    "DEFAULT_LIMITS",
    "SCHEMA_VERSION",
    "Ack",
    "AckReason",
    "BrokerConfig",
    "Control",
    "DeviceEndpoint",
    "Direction",
    "EncoderKnobs",
    "Envelope",
    "Hello",
    "Limits",
    "MessageType",
    "Model",
    "ModelFormat",
    "ProtocolError",
    "Reason",
    "Results",
    "Segment",
    "Telemetry",
    "TlsConfig",
    "Topic",
    "TrainerEndpoint",
    "Update",
    "UpdateFormat",
    "decode",
    "encode",
    "parse_topic",
    "topic_for",
]
