"""Devices on this machine: the real edge runtime, a local profile, a video played in real time.

Used by the demo, the serving benchmark and the tests: each emulated device is the real
``EdgeRuntime`` with the ``cpu`` profile pointed at a local broker and a work directory.
"""

from __future__ import annotations

import threading
from pathlib import Path

from edge_runtime.profile import Profile, bundled_profile
from edge_runtime.runtime import EdgeRuntime
from edge_runtime.sources import open_source


def local_profile(
    mqtt: dict[str, object],
    workdir: Path,
    *,
    device_id: str = "cpu-0",
    video: Path | None = None,
    **sections: dict[str, object],
) -> Profile:
    """The ``cpu`` profile for a device on a local broker (``mqtt``: its ``[mqtt]`` table, e.g.
    ``LocalBroker.mqtt_table(device_id)``), with its slots and spool in ``workdir``;
    ``sections`` override profile tables (e.g. ``buffer={...}``)."""
    source = {"realtime": True, "loop": True, "uri": str(video.resolve()) if video else None}
    tables = {"mqtt": mqtt, "source": source}
    for name, values in sections.items():
        tables[name] = {**tables.get(name, {}), **values}
    return bundled_profile("cpu", workdir, device_id=device_id, **tables)


class EmulatedDevice:
    """An edge runtime playing a video in real time, looping, on its own thread."""

    def __init__(self, profile: Profile, video: Path) -> None:
        self.runtime = EdgeRuntime.from_profile(profile)
        self.runtime.start()
        self._video = video
        self._stop = threading.Event()
        self._thread = self._playing()

    def _playing(self) -> threading.Thread:
        thread = threading.Thread(target=self._play, name=self.device_id, daemon=True)
        thread.start()
        return thread

    @property
    def device_id(self) -> str:
        return self.runtime.profile.device.id

    @property
    def swaps(self) -> int:
        return self.runtime.counters.get("slots.swaps")

    def _play(self) -> None:
        with open_source(str(self._video), realtime=True, loop=True) as frames:
            for frame in frames:
                self.runtime.process(frame)
                if self._stop.is_set():
                    return

    def pause(self) -> None:
        """Stop playing; the samples so far go up as a last segment, and the device stays
        connected and takes updates."""
        self._stop.set()
        self._thread.join(10)
        self.runtime.segments.flush()

    def resume(self) -> None:
        """Play again (from the start of the video) after ``pause``."""
        self._stop.clear()
        self._thread = self._playing()

    def close(self) -> None:
        self.pause()
        self.runtime.shutdown(drain_s=2)
