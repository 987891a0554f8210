"""Frame sources on real videos: timestamps, pacing, looping, and bad input of every kind."""

from __future__ import annotations

import itertools
import logging
import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import av
import pytest

from edge_runtime.sources import FrameSource, SourceError, open_source

CLIP_FRAMES = 15  # a short real clip: the first 1.5 s of vtest.avi at 10 fps, 192x144
CLIP_FPS = 10


@pytest.fixture(scope="module")
def videos(shared_dir: Path) -> Path:
    return shared_dir / "videos"


@pytest.fixture(scope="module")
def clip(videos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    with av.open(str(videos / "vtest.avi")) as src, av.open(str(path), "w") as dst:
        stream = dst.add_stream("libx264", rate=CLIP_FPS)
        stream.width, stream.height, stream.pix_fmt = 192, 144, "yuv420p"
        for picture in itertools.islice(src.decode(video=0), CLIP_FRAMES):
            small = picture.reformat(width=192, height=144, format="yuv420p")
            small.pict_type = av.video.frame.PictureType.NONE
            dst.mux(stream.encode(small))
        dst.mux(stream.encode(None))
    return path


def _cut(src: Path, dst: Path, fraction: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def _read_all(source: FrameSource) -> list:
    with source:
        return list(source)


@pytest.mark.parametrize(
    ("name", "fps", "size"),
    [
        ("vtest.avi", 10.0, (768, 576)),
        ("one-by-one-person-detection.mp4", 10.0, (768, 432)),
        ("car-detection.mp4", 12.5, (768, 432)),
        ("bottle-detection.mp4", 179 / 6, (640, 360)),
    ],
)
def test_timestamps_follow_the_files_rate(videos: Path, name: str, fps: float, size: tuple):
    with open_source(str(videos / name)) as source:
        frames = list(itertools.islice(source, 60))
    assert source.fps == pytest.approx(fps)
    assert [f.index for f in frames] == list(range(60))
    assert {(f.width, f.height) for f in frames} == {size}
    stamps = [f.timestamp for f in frames]
    assert stamps[0] == 0.0
    assert all(b > a for a, b in itertools.pairwise(stamps))
    assert stamps[-1] / 59 == pytest.approx(1 / fps, rel=0.02)
    assert frames[5].rgb(64, 48).shape == (48, 64, 3)


def test_a_whole_file_plays_to_its_end(videos: Path):
    source = open_source(f"file://{videos / 'vtest.avi'}")
    frames = _read_all(source)
    assert len(frames) == source.frames_read == 795
    assert frames[-1].timestamp == pytest.approx(79.4)
    assert not source.truncated
    assert source.counters.snapshot() == {"frames": 795}


def test_realtime_paces_a_file_and_fast_mode_does_not(clip: Path):
    duration = (CLIP_FRAMES - 1) / CLIP_FPS
    started = time.monotonic()
    paced = _read_all(open_source(str(clip), realtime=True))
    paced_s = time.monotonic() - started
    started = time.monotonic()
    fast = _read_all(open_source(str(clip)))
    fast_s = time.monotonic() - started
    assert len(paced) == len(fast) == CLIP_FRAMES
    assert [f.timestamp for f in paced] == [f.timestamp for f in fast]
    assert 0.8 * duration <= paced_s < duration + 1.0
    assert fast_s < 0.25 * duration


def test_loop_replays_with_timestamps_and_indexes_carrying_on(clip: Path):
    with open_source(str(clip), loop=True) as source:
        frames = list(itertools.islice(source, 3 * CLIP_FRAMES + 2))
    assert [f.index for f in frames] == list(range(len(frames)))
    stamps = [f.timestamp for f in frames]
    assert all(b - a == pytest.approx(1 / CLIP_FPS) for a, b in itertools.pairwise(stamps))
    assert source.counters.get("loops") == 3
    assert not source.truncated


def test_truncated_avi_plays_what_it_has_then_warns(videos: Path, tmp_path: Path, caplog):
    path = _cut(videos / "vtest.avi", tmp_path / "half.avi")
    with caplog.at_level(logging.WARNING, logger="edge_runtime.sources"):
        source = open_source(str(path))
        frames = _read_all(source)
    # The AVI header declares 795 frames; half the bytes hold about half of them.
    assert 350 < len(frames) < 450
    assert source.truncated and source.counters.get("truncated") == 1
    [record] = [r for r in caplog.records if "truncated" in r.getMessage()]
    assert f"ended after {len(frames)} frames" in record.getMessage()
    assert "795 frames" in record.getMessage() and "half.avi" in record.getMessage()


def test_truncated_file_in_strict_mode_raises_at_its_end(videos: Path, tmp_path: Path):
    path = _cut(videos / "vtest.avi", tmp_path / "half.avi")
    delivered = []
    with open_source(str(path), strict=True) as source, pytest.raises(SourceError) as err:
        delivered.extend(source)
    assert len(delivered) > 350  # every decodable frame came first
    assert "half.avi" in str(err.value) and "truncated" in str(err.value)


def test_truncated_mp4_with_its_index_in_front_plays_and_loops(videos: Path, tmp_path: Path):
    path = _cut(videos / "one-by-one-person-detection.mp4", tmp_path / "half.mp4")
    with open_source(str(path), loop=True) as source:
        frames = list(itertools.islice(source, 700))  # past the cut (686 frames): it loops
    assert source.truncated and source.counters.get("loops") >= 1
    assert all(b.timestamp > a.timestamp for a, b in itertools.pairwise(frames))
    # At most the packet the cut went through, once per pass.
    assert source.corrupt_packets <= source.counters.get("loops") + 1


def test_mp4_cut_before_its_index_does_not_open(videos: Path, tmp_path: Path):
    # bottle-detection.mp4 keeps its index (moov) at the end: half the file has none.
    path = _cut(videos / "bottle-detection.mp4", tmp_path / "cut.mp4")
    with pytest.raises(SourceError, match=r"cannot open '.*cut\.mp4'.*Invalid data"):
        open_source(str(path))


def test_corrupt_packets_are_skipped_and_counted(videos: Path, tmp_path: Path, caplog):
    data = bytearray((videos / "car-detection.mp4").read_bytes())
    rng = random.Random(1)
    for _ in range(20):
        at = rng.randrange(len(data) // 10, len(data) * 9 // 10)
        data[at : at + 2000] = rng.randbytes(2000)
    path = tmp_path / "damaged.mp4"
    path.write_bytes(data)
    with caplog.at_level(logging.WARNING, logger="edge_runtime.sources"):
        source = open_source(str(path))
        frames = _read_all(source)
    assert source.corrupt_packets >= 2
    assert len(frames) >= 377 - 2 * source.corrupt_packets
    assert not source.truncated
    assert sum("skipped a packet" in r.getMessage() for r in caplog.records) == 1  # throttled


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "No such file or directory"),
        (random.Random(2).randbytes(100_000), "Invalid data"),
        (b"hello world\n" * 1000, "Invalid data"),
    ],
)
def test_files_that_are_not_videos(tmp_path: Path, content: bytes | None, reason: str):
    path = tmp_path / "video.mp4"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SourceError) as err:
        open_source(str(path))
    assert str(path) in str(err.value) and reason in str(err.value)


def test_refused_stream_fails_at_once():
    started = time.monotonic()
    with pytest.raises(SourceError, match=r"rtsp://127\.0\.0\.1:9/nothing.*refused"):
        open_source("rtsp://127.0.0.1:9/nothing")
    assert time.monotonic() - started < 3.0


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1]
    server.close()
    for conn in accepted:
        conn.close()


@pytest.mark.parametrize("scheme", ["rtsp", "http"])
def test_silent_stream_times_out(silent_server: int, scheme: str):
    started = time.monotonic()
    with pytest.raises(SourceError, match="no answer within 1 s"):
        open_source(f"{scheme}://127.0.0.1:{silent_server}/live", timeout_s=1.0)
    assert time.monotonic() - started < 4.0


@pytest.mark.parametrize("spec", ["/dev/video99", "v4l2:///dev/video99"])
def test_missing_camera(spec: str):
    with pytest.raises(SourceError, match=r"cannot open '.*/dev/video99'"):
        open_source(spec, size=(640, 480), fps=15)


def test_picamera2_without_the_package():
    try:
        import picamera2  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("picamera2 is installed here")
    with pytest.raises(SourceError, match="picamera2 package is not installed"):
        open_source("picamera2:")


def test_close_stops_iteration_and_is_idempotent(clip: Path):
    source = open_source(str(clip))
    frames = iter(source)
    assert next(frames).index == 0
    source.close()
    source.close()
    assert list(frames) == []
    assert source.fps == pytest.approx(CLIP_FPS)
