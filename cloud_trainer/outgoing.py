"""What the trainer sends a device: a message and its body, ready to send."""

from __future__ import annotations

from dataclasses import dataclass

from shared_schema.messages import AnyMessage


@dataclass(frozen=True)
class Outgoing:
    """A message for the device and its body, ready to send."""

    msg: AnyMessage
    body: bytes = b""
