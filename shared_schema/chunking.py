"""Chunking for brokers that cap message size (SPEC §4).

A whole encoded envelope that exceeds the broker's limit is cut into slices, each sent as a
``chunk`` envelope on the original message's topic. The receiver reassembles the bytes, checks
their length and sha256, and decodes the inner envelope as if it had arrived whole, so chunking
adds no trust: the inner envelope is validated exactly like any other.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from shared_schema.envelope import (
    DEFAULT_LIMITS,
    PREFIX_SIZE,
    Envelope,
    Limits,
    encode,
    sha256_hex,
)
from shared_schema.errors import ProtocolError, Reason
from shared_schema.messages import Chunk, MessageType

# Room left in every chunk for its own prefix and JSON header (a chunk header is ~400 bytes).
CHUNK_OVERHEAD = 1024
MIN_MESSAGE_BYTES = 4 * CHUNK_OVERHEAD


def split(
    encoded: bytes,
    max_message_bytes: int,
    *,
    inner_type: MessageType,
    device_id: str,
    boot: str,
    next_seq: Callable[[], int],
) -> list[bytes]:
    """The payloads to publish for one encoded envelope: itself, or its chunks."""
    if len(encoded) <= max_message_bytes:
        return [encoded]
    if max_message_bytes < MIN_MESSAGE_BYTES:
        raise ValueError(f"max_message_bytes must be at least {MIN_MESSAGE_BYTES}")
    step = max_message_bytes - CHUNK_OVERHEAD
    count = -(-len(encoded) // step)
    total_sha = sha256_hex(encoded)
    return [
        encode(
            Chunk(
                inner_type=inner_type,
                msg_id=total_sha[:32],
                index=i,
                count=count,
                total_len=len(encoded),
                total_sha256=total_sha,
            ),
            device_id=device_id,
            seq=next_seq(),
            boot=boot,
            body=encoded[i * step : (i + 1) * step],
        )
        for i in range(count)
    ]


@dataclass
class _Partial:
    first: Chunk
    started: float
    parts: dict[int, bytes] = field(default_factory=dict)
    size: int = 0


class Reassembler:
    """Collects chunks per (sender, message); bounded in messages, bytes and time, per sender
    and in all. A sender over its own bounds loses its own oldest partial message; over the
    overall bounds, the sender holding the most bytes loses its oldest: one sender's flood
    never evicts another's message."""

    def __init__(
        self,
        *,
        limits: Limits = DEFAULT_LIMITS,
        max_pending: int = 16,
        max_bytes: int = 512 * 2**20,
        per_sender_pending: int = 2,
        per_sender_bytes: int = 128 * 2**20,
        ttl_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limits = limits
        self._max_pending = max_pending
        self._max_bytes = max_bytes
        self._per_sender = (per_sender_pending, per_sender_bytes)
        self._ttl_s = ttl_s
        self._clock = clock
        self._pending: OrderedDict[tuple[str, str], _Partial] = OrderedDict()
        self.discarded = 0  # partial messages dropped unfinished (expired or evicted)

    @property
    def pending_bytes(self) -> int:
        return sum(p.size for p in self._pending.values())

    def add(self, env: Envelope) -> bytes | None:
        """Take one chunk envelope; returns the whole inner envelope's bytes once complete."""
        chunk = env.msg
        assert isinstance(chunk, Chunk)
        self._expire()
        self._check_size(chunk)
        key = (env.device_id, chunk.msg_id)
        partial = self._pending.get(key)
        if partial is None:
            partial = self._pending[key] = _Partial(first=chunk, started=self._clock())
        elif _identity(partial.first) != _identity(chunk):
            raise ProtocolError(Reason.BAD_CHUNK, f"chunk {chunk.index} disagrees with its message")
        if chunk.index in partial.parts:
            return None  # a QoS 1 duplicate
        if partial.size + len(env.body) > chunk.total_len:
            del self._pending[key]
            raise ProtocolError(Reason.BAD_CHUNK, "chunks add up to more than total_len")
        partial.parts[chunk.index] = env.body
        partial.size += len(env.body)
        self._evict(keep=key)
        if len(partial.parts) < chunk.count:
            return None
        del self._pending[key]
        whole = b"".join(partial.parts[i] for i in range(chunk.count))
        if len(whole) != chunk.total_len or sha256_hex(whole) != chunk.total_sha256:
            raise ProtocolError(Reason.BAD_CHUNK, "reassembled message fails its length or hash")
        return whole

    def _check_size(self, chunk: Chunk) -> None:
        limit = PREFIX_SIZE + self._limits.header_bytes + self._limits.body_limit(chunk.inner_type)
        if chunk.total_len > min(limit, self._max_bytes):
            raise ProtocolError(
                Reason.OVERSIZE,
                f"chunked {chunk.inner_type.value} of {chunk.total_len} bytes exceeds the limit",
            )

    def _expire(self) -> None:
        deadline = self._clock() - self._ttl_s
        for key in [k for k, p in self._pending.items() if p.started < deadline]:
            del self._pending[key]
            self.discarded += 1

    def _evict(self, keep: tuple[str, str]) -> None:
        """Oldest first, never the message just extended: the sender's own over its bounds,
        then the biggest sender's while all of them are over theirs."""
        sender = keep[0]
        pending, size = self._per_sender
        while self._over(self._of(sender), pending, size):
            self._drop(sender, keep)
        while self._over(list(self._pending), self._max_pending, self._max_bytes):
            biggest = max(
                {k[0] for k in self._pending if k != keep},
                key=lambda s: sum(self._pending[k].size for k in self._of(s)),
            )
            self._drop(biggest, keep)

    def _of(self, sender: str) -> list[tuple[str, str]]:
        return [k for k in self._pending if k[0] == sender]

    def _over(self, keys: list[tuple[str, str]], pending: int, size: int) -> bool:
        return len(keys) > 1 and (
            len(keys) > pending or sum(self._pending[k].size for k in keys) > size
        )

    def _drop(self, sender: str, keep: tuple[str, str]) -> None:
        oldest = next(k for k in self._pending if k[0] == sender and k != keep)
        del self._pending[oldest]
        self.discarded += 1


def _identity(chunk: Chunk) -> tuple[object, ...]:
    return (chunk.inner_type, chunk.count, chunk.total_len, chunk.total_sha256)
