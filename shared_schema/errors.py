"""The one error type of the wire protocol.

Every malformed, hostile or unexpected payload or topic raises ``ProtocolError``; its ``reason`` is
a short stable code that receivers use as a counter name, so rejections can be monitored.
"""

from __future__ import annotations

from shared_schema.compat import StrEnum


class Reason(StrEnum):
    TRUNCATED = "truncated"
    BAD_MAGIC = "bad_magic"
    UNSUPPORTED_VERSION = "unsupported_version"
    OVERSIZE = "oversize"
    BAD_HEADER = "bad_header"
    BAD_HASH = "bad_hash"
    TRAILING_BYTES = "trailing_bytes"
    BAD_TOPIC = "bad_topic"
    WRONG_TYPE = "wrong_type"
    WRONG_DEVICE = "wrong_device"
    BAD_CHUNK = "bad_chunk"


class ProtocolError(ValueError):
    """A payload or topic that violates the protocol; ``reason`` names the rule it broke."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
