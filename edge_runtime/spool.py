"""A bounded on-disk FIFO of encoded envelopes that survives restarts and power cuts.

Each entry is one file written with ``durable.atomic_write``, so after a power cut an entry is
either whole or absent (leftover temporary files are removed at start). Entries are named by a
sequence number, so the oldest is first in name order. When a bound is exceeded the oldest
entries are dropped and counted.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from edge_runtime.durable import atomic_write, remove_partial_writes
from shared_schema.counters import Counters
from shared_schema.envelope import decode
from shared_schema.messages import MessageType

log = logging.getLogger(__name__)

_SUFFIX = ".env"


@dataclass(frozen=True)
class SpoolEntry:
    seq: int
    msg_type: MessageType
    path: Path
    size: int

    def read(self) -> bytes:
        return self.path.read_bytes()


class Spool:
    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int,
        max_entries: int,
        counters: Counters | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.counters = counters or Counters()
        self._lock = threading.Lock()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._entries = self._recover()
        self._next_seq = self._entries[-1].seq + 1 if self._entries else 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def put(self, msg_type: MessageType, payload: bytes) -> SpoolEntry:
        """Persist one encoded envelope; returns once it is durable on disk."""
        with self._lock:
            seq = self._next_seq
            self._next_seq += 1
        path = self.directory / f"{seq:016d}.{msg_type.value}{_SUFFIX}"
        atomic_write(path, payload)
        entry = SpoolEntry(seq, msg_type, path, len(payload))
        with self._lock:
            self._entries.append(entry)
            evicted = self._evict()
        for old in evicted:
            self._unlink(old)
            self.counters.inc("spool.dropped")
            log.warning("spool full: dropped %s (%d bytes)", old.path.name, old.size)
        return entry

    def entries(self) -> list[SpoolEntry]:
        """Every entry, oldest first."""
        with self._lock:
            return list(self._entries)

    def oldest(self) -> SpoolEntry | None:
        with self._lock:
            return self._entries[0] if self._entries else None

    def remove(self, entry: SpoolEntry) -> None:
        """Forget an entry once the broker has it (a no-op if it was already evicted)."""
        with self._lock:
            if entry not in self._entries:
                return
            self._entries.remove(entry)
        self._unlink(entry)

    def _evict(self) -> list[SpoolEntry]:
        evicted = []
        total = sum(e.size for e in self._entries)
        while len(self._entries) > 1 and (
            len(self._entries) > self.max_entries or total > self.max_bytes
        ):
            old = self._entries.pop(0)
            total -= old.size
            evicted.append(old)
        return evicted

    def _recover(self) -> list[SpoolEntry]:
        remove_partial_writes(self.directory)  # writes a power cut interrupted: never accepted
        entries = []
        for path in sorted(self.directory.glob(f"*{_SUFFIX}")):
            entry = self._load(path)
            if entry is not None:
                entries.append(entry)
        if entries:
            log.info("spool %s: %d entries to resend", self.directory, len(entries))
        return entries

    def _load(self, path: Path) -> SpoolEntry | None:
        try:
            seq_text, type_text, _ = path.name.split(".", 2)
            data = path.read_bytes()
            msg_type = decode(data).type
            if msg_type != MessageType(type_text):
                raise ValueError("type in the name disagrees with the envelope")
            return SpoolEntry(int(seq_text), msg_type, path, len(data))
        except (OSError, ValueError) as exc:  # ProtocolError is a ValueError
            self.counters.inc("spool.corrupt")
            log.error("spool: discarding unreadable entry %s: %s", path.name, exc)
            path.unlink(missing_ok=True)
            return None

    def _unlink(self, entry: SpoolEntry) -> None:
        entry.path.unlink(missing_ok=True)
