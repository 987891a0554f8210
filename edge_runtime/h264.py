"""The uplink's codec: frames to one self-contained H.264 segment and back.

The device encodes sampled frames with ``encode_segment``; the trainer decodes the uploaded bytes
with ``decode_segment``/``decode_frames`` from this same module, so both sides agree on every
detail of the format: Annex-B byte stream, SPS/PPS in band, the first frame an IDR, no B-frames.
Encoding is a pure function of the frames and the knobs, so OneAdapt can re-encode the same frames
at perturbed knobs (SPEC §9).

Rate control is x264's average bitrate with a VBV buffer of ``VBV_FRAMES`` per-frame budgets.
Plain ABR cannot converge within a segment of ten frames (measured up to 1.7× the target); the
buffer bounds the overshoot, the first IDR included, to one buffer. Measured on ten samples of
each shared video at 200 kbps: 0.96-1.10× of ``bitrate × duration`` at 768 px wide; smaller
frames with a generous budget come in below it (0.3-0.8×), as x264 has no use for more bits.
Frames are samples taken at ``fps`` (0.1-1 per second) and x264 is told that rate, so each
frame's budget is ``bitrate / fps``.

Per-region quality (``EncoderKnobs.roi``) reaches x264 as region-of-interest side data on each
picture, set by FFmpeg's ``addroi`` filter, one per region with a non-zero offset; x264 moves
those macroblocks' quantiser by the offset within the same rate control.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import av
import av.filter
import numpy as np
from av.video.frame import PictureType

from edge_runtime.frames import Frame
from shared_schema.messages import EncoderKnobs, RegionQuality

# Measured on 768x576 samples at 200 kbps, one x86 core: "veryfast" takes ~9 ms a frame and comes
# within 0.8 dB PSNR of "medium" (32 ms); "ultrafast" (no CABAC) loses another 1 dB.
DEFAULT_PRESET = "veryfast"
VBV_FRAMES = 4  # x264's VBV buffer size, in per-frame budgets (see the module docstring)
_SIZE_MARGIN = 0.9  # room left when re-aiming at a byte limit: x264's rate control is not exact


class SegmentDecodeError(ValueError):
    """Bytes that are not one complete, undamaged H.264 segment of the expected length."""


def upload_size(
    src_width: int, src_height: int, width: int | None = None, height: int | None = None
) -> tuple[int, int]:
    """The size a segment is encoded at: the knobs' width/height, the source's for those unset.

    With one of the two given, the other follows the source's aspect ratio. Both are rounded down
    to even numbers: 4:2:0 chroma has half the luma's resolution in each direction.
    """
    if width is None and height is None:
        width, height = src_width, src_height
    elif height is None:
        assert width is not None
        height = round(width * src_height / src_width)
    elif width is None:
        width = round(height * src_width / src_height)
    return even(width), even(height)


def even(n: float) -> int:
    """``n`` rounded down to an even number of pixels, at least 2 (4:2:0 chroma)."""
    whole = int(n)
    return max(2, whole - whole % 2)


def encode_segment(
    frames: Sequence[Frame],
    knobs: EncoderKnobs,
    fps: float,
    *,
    preset: str = DEFAULT_PRESET,
    threads: int = 1,
) -> bytes:
    """Encode ``frames`` (any sizes, any pixel formats) into one H.264 Annex-B segment.

    The upload size comes from the knobs and the first frame (``upload_size``); ``fps`` is the
    rate the frames were sampled at. ``threads`` defaults to one: the encoder shares a small CPU
    with inference, and a segment is due only once per T_update.
    """
    if not frames:
        raise ValueError("a segment needs at least one frame")
    if fps <= 0:
        raise ValueError(f"fps must be positive, not {fps}")
    width, height = upload_size(frames[0].width, frames[0].height, knobs.width, knobs.height)
    codec = _x264(width, height, knobs, fps, preset, threads)
    regions = _roi_graph(width, height, codec.time_base, knobs.roi) if knobs.roi else None
    packets: list[av.Packet] = []
    for pts, frame in enumerate(frames):
        picture = frame.video.reformat(width=width, height=height, format="yuv420p")
        if picture is frame.video:  # reformat had nothing to do; never stamp the caller's frame
            picture = av.VideoFrame.from_ndarray(picture.to_ndarray(), format="yuv420p")
        picture.pts = pts
        picture.time_base = codec.time_base  # else PyAV rescales pts from the source's time base
        if regions is not None:
            regions.push(picture)
            picture = regions.pull()
        picture.pict_type = PictureType.NONE  # libx264 obeys a decoded I type: let x264 choose
        packets.extend(codec.encode(picture))
    packets.extend(codec.encode(None))
    return b"".join(bytes(packet) for packet in packets)


def _x264(
    width: int, height: int, knobs: EncoderKnobs, fps: float, preset: str, threads: int
) -> av.VideoCodecContext:
    codec = av.CodecContext.create("libx264", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
    codec.framerate = Fraction(fps).limit_denominator(1000)
    codec.time_base = 1 / codec.framerate
    codec.thread_count = threads
    # No B-frames: each frame decodes as soon as it arrives and segments stay in capture order.
    options = {"preset": preset, "x264-params": "bframes=0"}
    if knobs.qp is not None:
        options["qp"] = str(knobs.qp)
    elif knobs.crf is not None:
        options["crf"] = f"{knobs.crf:.2f}"
    else:
        bits_per_s = round(knobs.bitrate_kbps * 1000)
        codec.bit_rate = bits_per_s
        options["maxrate"] = str(bits_per_s)
        options["bufsize"] = str(round(bits_per_s * VBV_FRAMES / fps))
    codec.options = options
    return codec


def region_boxes(width: int, height: int, roi: RegionQuality) -> list[tuple[int, int, int, int]]:
    """Each region's (x, y, w, h) in a ``width`` × ``height`` picture, row by row: the grid's
    lines at whole pixels, so the regions tile the picture."""
    xs = [width * c // roi.cols for c in range(roi.cols + 1)]
    ys = [height * r // roi.rows for r in range(roi.rows + 1)]
    return [(xs[c], ys[r], xs[c + 1] - xs[c], ys[r + 1] - ys[r])
            for r in range(roi.rows) for c in range(roi.cols)]  # fmt: skip


def _roi_graph(
    width: int, height: int, time_base: Fraction, roi: RegionQuality
) -> av.filter.Graph | None:
    """buffer → addroi per region with a non-zero offset → buffersink; None if there is none."""
    boxes = [(box, q) for box, q in zip(region_boxes(width, height, roi), roi.qoffsets,
                                        strict=True) if q != 0.0]  # fmt: skip
    if not boxes:
        return None
    graph = av.filter.Graph()
    last = graph.add_buffer(width=width, height=height, format="yuv420p", time_base=time_base)
    for (x, y, w, h), q in boxes:
        node = graph.add("addroi", f"x={x}:y={y}:w={w}:h={h}:qoffset={q:.4f}")
        last.link_to(node)
        last = node
    last.link_to(graph.add("buffersink"))
    graph.configure()
    return graph


def bitrate_for_size(max_bytes: int, frames: int, fps: float) -> float:
    """A bitrate (kbps) at which ``frames`` frames sampled at ``fps`` encode within ``max_bytes``.

    The VBV buffer lets a segment overshoot its average budget by up to one buffer, so the byte
    limit has to cover the frames' budgets plus the buffer.
    """
    per_frame_bits = _SIZE_MARGIN * max_bytes * 8 / (frames + VBV_FRAMES)
    return per_frame_bits * fps / 1000


def decode_segment(
    data: bytes, expected_frames: int | None = None, size: tuple[int, int] | None = None
) -> list[av.VideoFrame]:
    """The pictures of one segment, in order; ``SegmentDecodeError`` for anything less.

    Truncated or damaged data shows up as a decoder error, a frame FFmpeg marks corrupt (it
    conceals damage rather than failing), or fewer frames than expected. A segment is held to
    what its message says, picture by picture as they decode: at most ``expected_frames``
    pictures, each of ``size`` (width, height), so a small body cannot decode into more memory
    than its header admits.
    """
    if not data:
        raise SegmentDecodeError("empty segment")
    codec = av.CodecContext.create("h264", "r")
    pictures: list[av.VideoFrame] = []
    try:
        for packet in [*codec.parse(data), *codec.parse(None)]:
            _keep(pictures, codec.decode(packet), expected_frames, size)
        _keep(pictures, codec.decode(None), expected_frames, size)
    except av.error.FFmpegError as exc:
        raise SegmentDecodeError(
            f"not decodable H.264 after {len(pictures)} frames: {exc.strerror or exc}"
        ) from exc
    damaged = [i for i, picture in enumerate(pictures) if picture.is_corrupt]
    if damaged:
        raise SegmentDecodeError(
            f"frame {damaged[0]} of {len(pictures)} is damaged (truncated or corrupt data)"
        )
    if not pictures:
        raise SegmentDecodeError(f"no frame in {len(data)} bytes (not H.264, or cut short)")
    if expected_frames is not None and len(pictures) != expected_frames:
        raise SegmentDecodeError(
            f"{len(pictures)} frames decoded where {expected_frames} were expected"
        )
    return pictures


def _keep(
    pictures: list[av.VideoFrame],
    decoded: Sequence[av.VideoFrame],
    expected_frames: int | None,
    size: tuple[int, int] | None,
) -> None:
    for picture in decoded:
        if size is not None and (picture.width, picture.height) != size:
            raise SegmentDecodeError(
                f"frame {len(pictures)} is {picture.width}x{picture.height}, the segment says"
                f" {size[0]}x{size[1]}"
            )
        if expected_frames is not None and len(pictures) == expected_frames:
            raise SegmentDecodeError(f"more than the {expected_frames} frames the segment says")
        pictures.append(picture)


def decode_frames(
    data: bytes,
    timestamps: Sequence[float],
    first_index: int = 0,
    size: tuple[int, int] | None = None,
) -> list[Frame]:
    """The segment as ``Frame``s stamped with the timestamps its ``Segment`` message carries
    (and, given ``size``, of the width and height it says).

    ``frame.rgb(width, height)`` then gives the pixels the device's own frames give.
    """
    pictures = decode_segment(data, expected_frames=len(timestamps), size=size)
    return [
        Frame(first_index + i, timestamp, picture)
        for i, (timestamp, picture) in enumerate(zip(timestamps, pictures, strict=True))
    ]


def decode_rgb(data: bytes, timestamps: Sequence[float], width: int, height: int) -> np.ndarray:
    """The segment as one NxHxWx3 uint8 RGB batch at the given size (``Frame.rgb`` of each)."""
    return np.stack([frame.rgb(width, height) for frame in decode_frames(data, timestamps)])
