"""RECL's model zoo (seed 003 §6.3.1, §6.3.3): expert students shared by every device.

An expert is an int8 student at the base model's frozen scales, stored as the qdelta that takes
the base file to it (the values its training moved, zstd'd: tens of KB where the file is
760 KB), beside a manifest of what is known about it: where and when it was trained, the
classes it saw, how often it was picked. The manifest is written atomically after every change,
each expert file before the manifest names it, so a power cut leaves the zoo as it was before or
after the change. At load an expert whose file is missing, fails to apply or gives a file other
than its recorded hash is refused (counted, set aside as ``.damaged``); the zoo works on without
it. The zoo holds at most ``capacity`` experts: adding one more evicts the least picked.

Beside its delta an expert may keep its training state (``.state``: the float master weights
under the int8 file and the optimizer's moments, a weights-only torch file, its sha256 in the
manifest), so that training goes on from it as from the session that made it rather than from
rounded weights and fresh moments. A state that fails its hash or does not load is refused
(``states_refused``) and the expert is used without it.

A model trained on from an expert may take its place (``refine``): the expert keeps its id,
picks and age, and its files, named by their content, are written beside the old ones, which go
once the manifest names the new; files the manifest does not name (a power cut between the two)
are removed at load.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from edge_runtime.durable import atomic_write, remove_partial_writes
from shared_schema.envelope import sha256_hex
from shared_schema.messages import UpdateFormat
from shared_schema.tflite_file import TFLiteFile
from shared_schema.update_formats import UpdateFormatError, apply_update, qdelta

log = logging.getLogger(__name__)

MANIFEST = "zoo.json"
_SUFFIX = ".qdelta"
_STATE = ".state"
_MATERIALIZED = 4  # expert files kept built in memory (the candidates of one selection)


@dataclass
class Expert:
    """What the manifest records of one expert."""

    id: str  # the first 16 hex digits of the sha256 of the file it joined with
    sha256: str  # of its file now (a refined expert's file is not the one it joined with)
    origin: str  # the device whose frames trained it
    classes: list[int]  # the classes of the samples it was trained on
    created_s: float  # wall-clock time it joined the zoo
    picks: int = 0  # how often a selection sent it
    joined_at: int = 0  # the zoo's selection count when it joined (pruning spares it for q)
    state_sha256: str | None = None  # of its training state's file, if it keeps one
    extra: dict[str, float] = field(default_factory=dict)  # e.g. the accuracy that admitted it
    refined: int = 0  # how often a model trained on from it took its place


class ExpertZoo:
    def __init__(
        self, directory: Path, base: bytes, *, capacity: int = 32, window: int = 3000
    ) -> None:
        """``window``: how many of the latest selections the zoo remembers (pruning's q)."""
        self.directory = directory
        self.capacity = capacity
        self.recent: deque[str] = deque(maxlen=window)  # expert picked per selection; "": none
        self._base = TFLiteFile(base)
        self._experts: OrderedDict[str, Expert] = OrderedDict()
        self._files: OrderedDict[str, bytes] = OrderedDict()  # materialized, least recent first
        self.selections = 0  # selections made with this zoo, over its whole life
        self.refused = 0  # expert files refused at load
        self.states_refused = 0  # training states refused (the expert is used without)
        self.evicted = 0
        directory.mkdir(parents=True, exist_ok=True)
        self._load()

    # -- reading -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._experts)

    def __contains__(self, expert_id: object) -> bool:
        return expert_id in self._experts

    @property
    def experts(self) -> list[Expert]:
        """Every expert, oldest first."""
        return list(self._experts.values())

    def get(self, expert_id: str) -> Expert:
        return self._experts[expert_id]

    def file(self, expert_id: str) -> bytes:
        """The expert's model file, built from the base and its delta."""
        if expert_id in self._files:
            self._files.move_to_end(expert_id)
            return self._files[expert_id]
        data = self._built(self._experts[expert_id])
        self._remember(expert_id, data)
        return data

    def state(self, expert_id: str) -> dict | None:
        """The expert's training state (``{"student": ..., "optimizer": ...}``), if it keeps
        one that passes its hash and loads."""
        expert = self._experts[expert_id]
        if expert.state_sha256 is None:
            return None
        path = self._path(expert, _STATE)
        try:
            raw = path.read_bytes()
            if sha256_hex(raw) != expert.state_sha256:
                raise ValueError("its sha256 is not the manifest's")
            # weights_only: tensors and plain values; a state file cannot run code
            return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        except Exception as exc:  # any unusable state: the expert goes on without one
            self.states_refused += 1
            expert.state_sha256 = None
            if path.exists():
                path.rename(path.with_name(path.name + ".damaged"))
            self._save()
            log.error("training state %s of the model zoo refused (%s); the expert is used"
                      " without it", path, exc)  # fmt: skip
            return None

    def find(self, data: bytes) -> str | None:
        """The id of the expert whose file is ``data``, if one is."""
        sha = sha256_hex(data)
        return next((e.id for e in self._experts.values() if e.sha256 == sha), None)

    def holds(self, data: bytes) -> str | None:
        """The id of the expert whose file ``data`` is, or was when it joined (a refined
        expert keeps that file's id), if one is."""
        joined = sha256_hex(data)[:16]
        return joined if joined in self._experts else self.find(data)

    # -- changing ------------------------------------------------------------------------------

    def add(
        self,
        data: bytes,
        *,
        origin: str,
        classes: Iterable[int],
        state: bytes | None = None,
        **extra: float,
    ) -> Expert:
        """Admit the model file ``data`` (of the base's layout), with its training ``state``
        (a torch file) if known; the least picked expert leaves first if the zoo is full. A
        file the zoo holds (``holds``) is that expert."""
        known = self.holds(data)
        if known is not None:
            return self._experts[known]
        body = self._delta(data)
        sha = sha256_hex(data)
        expert = Expert(sha[:16], sha, origin, sorted(int(c) for c in classes), time.time(),
                        joined_at=self.selections, extra=dict(extra))  # fmt: skip
        gone = [self._drop(self._least_picked(), evicted=True)
                for _ in range(len(self._experts) - self.capacity + 1)]  # fmt: skip
        self._write(expert, body, state)
        self._experts[expert.id] = expert
        self._remember(expert.id, bytes(data))
        self._save()
        self._unlink(*gone)
        return expert

    def refine(
        self,
        expert_id: str,
        data: bytes,
        state: bytes | None = None,
        classes: Iterable[int] | None = None,
        **extra: float,
    ) -> Expert:
        """A model trained on from the expert (``data``, with its training ``state``, on
        ``classes``) takes its place: the same id, picks and age, for the scene it serves. The
        old files go only once the manifest names the new ones, so a power cut leaves one of
        the two whole."""
        old = self._experts[expert_id]
        if self.holds(data) is not None:
            return old  # already in the zoo: nothing is learned by a second copy
        kept = old.classes if classes is None else sorted(int(c) for c in classes)
        new = replace(old, sha256=sha256_hex(data), state_sha256=None, refined=old.refined + 1,
                      classes=kept, extra={**old.extra, **extra})  # fmt: skip
        self._write(new, self._delta(data), state)
        self._experts[expert_id] = new
        self._remember(expert_id, bytes(data))
        self._save()
        self._unlink(old)
        return new

    def record_selection(self, expert_id: str | None) -> None:
        """A selection was made; ``expert_id`` is the expert it sent (None: none of the zoo's)."""
        self.selections += 1
        self.recent.append(expert_id or "")
        if expert_id is not None:
            self._experts[expert_id].picks += 1
        self._save()

    def remove(self, expert_ids: Iterable[str]) -> None:
        gone = [self._drop(expert_id, evicted=False) for expert_id in list(expert_ids)]
        self._save()
        self._unlink(*gone)

    # -- internals -----------------------------------------------------------------------------

    def _least_picked(self) -> str:
        return min(self._experts.values(), key=lambda e: (e.picks, e.created_s)).id

    def _drop(self, expert_id: str, *, evicted: bool) -> Expert:
        """The expert out of the zoo; its files go once the manifest no longer names it."""
        self._files.pop(expert_id, None)
        self.evicted += evicted
        return self._experts.pop(expert_id)

    def _delta(self, data: bytes) -> bytes:
        """The qdelta that takes the base file to ``data``."""
        layout = self._base.with_data(data)  # refuses a file of another layout
        return qdelta.encode(self._base, {t.index: layout.values(t) for t in layout.trainable})

    def _write(self, expert: Expert, body: bytes, state: bytes | None) -> None:
        """The expert's delta and state files, before the manifest names them."""
        atomic_write(self._path(expert), body)
        if state is not None:
            atomic_write(self._path(expert, _STATE), state)
            expert.state_sha256 = sha256_hex(state)

    def _unlink(self, *experts: Expert) -> None:
        for expert in experts:
            self._path(expert).unlink(missing_ok=True)
            self._path(expert, _STATE).unlink(missing_ok=True)

    def _remember(self, expert_id: str, data: bytes) -> None:
        self._files[expert_id] = data
        while len(self._files) > _MATERIALIZED:
            self._files.popitem(last=False)

    def _built(self, expert: Expert) -> bytes:
        body = self._path(expert).read_bytes()
        data = apply_update(UpdateFormat.QDELTA, self._base, body)
        if sha256_hex(data) != expert.sha256:
            raise UpdateFormatError("its delta does not make the file the manifest records")
        return data

    def _path(self, expert: Expert, suffix: str = _SUFFIX) -> Path:
        # named by its file's content, so that a refinement writes beside the files it replaces
        return self.directory / f"{expert.sha256[:16]}{suffix}"

    def _save(self) -> None:
        manifest = {
            "selections": self.selections,
            "recent": list(self.recent),
            "base_sha256": sha256_hex(self._base.data),
            "experts": [asdict(e) for e in self._experts.values()],
        }
        atomic_write(self.directory / MANIFEST, json.dumps(manifest, indent=1).encode())

    def _load(self) -> None:
        remove_partial_writes(self.directory)
        path = self.directory / MANIFEST
        if not path.exists():
            self._remove_unnamed()  # a first expert's, cut off before its manifest
            return
        try:
            manifest = json.loads(path.read_bytes())
            if manifest["base_sha256"] != sha256_hex(self._base.data):
                raise ValueError("its experts were trained from another base model")
            self.selections = int(manifest["selections"])
            self.recent.extend(str(r) for r in manifest["recent"])
            experts = [Expert(**e) for e in manifest["experts"]]
        except (ValueError, KeyError, TypeError) as exc:
            self.refused += 1
            for refused in [path, *self._files_on_disk()]:  # kept, for a person to look at
                refused.rename(refused.with_name(refused.name + ".damaged"))
            log.error("model zoo %s refused (%s); starting an empty zoo", path, exc)
            return
        for expert in experts:
            self._adopt(expert)
        if self.refused:
            self._save()
        self._remove_unnamed()

    def _remove_unnamed(self) -> None:
        """Expert files the manifest does not name: written for a change that a power cut
        kept from the manifest, or replaced by one whose old files it kept from going."""
        named = {
            self._path(e, suffix) for e in self._experts.values() for suffix in (_SUFFIX, _STATE)
        }
        for path in self._files_on_disk():
            if path not in named:
                path.unlink(missing_ok=True)

    def _files_on_disk(self) -> list[Path]:
        return [*self.directory.glob(f"*{_SUFFIX}"), *self.directory.glob(f"*{_STATE}")]

    def _adopt(self, expert: Expert) -> None:
        try:
            self._remember(expert.id, self._built(expert))
        except (OSError, UpdateFormatError) as exc:
            self.refused += 1
            damaged = self._path(expert)
            if damaged.exists():
                damaged.rename(damaged.with_name(damaged.name + ".damaged"))
            log.error("expert %s of the model zoo refused (%s); the zoo goes on without it",
                      expert.id, exc)  # fmt: skip
            return
        self._experts[expert.id] = expert
