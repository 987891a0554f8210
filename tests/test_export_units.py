"""The export's parts that need neither onnx2tf nor a trained model: Edge TPU compiler driving
and log parsing, calibration sources, and how a new export is released to a device."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import av
import numpy as np
import pytest

from cloud_trainer.export.calibration import CalibrationError, load_frames, split
from cloud_trainer.export.edgetpu import OperationCounts, compile_model, parse_compiler_log
from cloud_trainer.export.release import release
from shared_schema.envelope import sha256_hex
from shared_schema.messages import Model, ModelFormat, Update, UpdateFormat
from shared_schema.update_formats import zpatch

# edgetpu_compiler's summary when some operations stay on the CPU (the documented format:
# coral.ai/docs/edgetpu/compiler), for a DeepLab-like model.
PARTIAL_LOG = """\
Edge TPU Compiler version 16.0.384591198
Started a compilation timeout timer of 180 seconds.

Model compiled successfully in 1021 ms.

Input model: student_int8.tflite
Input size: 479.04KiB
Output model: student_int8_edgetpu.tflite
Output size: 615.18KiB
On-chip memory used for caching model parameters: 553.25KiB
On-chip memory remaining for caching model parameters: 7.16MiB
Off-chip memory used for streaming uncached model parameters: 0.00B
Number of Edge TPU subgraphs: 1
Total number of operations: 71
Operation log: student_int8_edgetpu.log

Model successfully compiled but not all operations are supported by the Edge TPU. A percentage \
of the model will instead run on the CPU, which is slower. If possible, consider updating your \
model to use only operations supported by the Edge TPU. For details, visit g.co/coral/model-reqs.
Number of operations that will run on Edge TPU: 68
Number of operations that will run on CPU: 3

Operator                       Count      Status

QUANTIZE                       1          Mapped to Edge TPU
QUANTIZE                       1          Operation is otherwise supported, but not mapped due \
to some unspecified limitation
CONV_2D                        38         Mapped to Edge TPU
DEPTHWISE_CONV_2D              17         Mapped to Edge TPU
ADD                            10         Mapped to Edge TPU
MEAN                           1          Mapped to Edge TPU
CONCATENATION                  1          Mapped to Edge TPU
RESIZE_BILINEAR                2          Operation is otherwise supported, but not mapped due \
to some unspecified limitation
"""
# With every operation mapped the compiler prints only the table (with -s).
MAPPED_LOG = """\
Edge TPU Compiler version 16.0.384591198

Model compiled successfully in 812 ms.

Input model: student_int8.tflite
Output model: student_int8_edgetpu.tflite
Number of Edge TPU subgraphs: 1
Total number of operations: 5
Operation log: student_int8_edgetpu.log
See the operation log file for individual operation details.

Operator                       Count      Status

CONV_2D                        3          Mapped to Edge TPU
QUANTIZE                       2          Mapped to Edge TPU
"""


def test_parse_compiler_log_reads_the_summary_counts():
    assert parse_compiler_log(PARTIAL_LOG) == OperationCounts(on_tpu=68, on_cpu=3)


def test_parse_compiler_log_sums_the_operator_table_when_everything_is_mapped():
    assert parse_compiler_log(MAPPED_LOG) == OperationCounts(on_tpu=5, on_cpu=0)


def test_parse_compiler_log_without_counts():
    assert parse_compiler_log("Edge TPU Compiler version 16.0\nInvalid model") is None


def test_without_the_compiler_the_int8_model_is_delivered(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    model = tmp_path / "student_int8.tflite"
    model.write_bytes(b"model")
    result = compile_model(model, tmp_path / "out")
    assert not result.compiled and result.model == model and result.operations is None
    assert "edgetpu_compiler is not on PATH" in result.message
    assert "edgetpu-compiler Debian package" in result.message


def _fake_compiler(directory: Path, log: str, *, writes_model: bool = True) -> None:
    """A stand-in edgetpu_compiler: prints `log`, writes <stem>_edgetpu.tflite into -o DIR."""
    directory.mkdir()
    (directory / "log.txt").write_text(log)
    script = directory / "edgetpu_compiler"
    write = 'cp "$model" "$out/$(basename "$model" .tflite)_edgetpu.tflite"' if writes_model else ""
    script.write_text(
        "#!/bin/sh\n"
        'while [ $# -gt 1 ]; do case "$1" in -o) out="$2"; shift 2;; *) shift;; esac; done\n'
        f'model="$1"\n{write}\ncat "{directory / "log.txt"}"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


def test_a_compiler_on_path_compiles_and_reports_the_mapped_operations(tmp_path, monkeypatch):
    _fake_compiler(tmp_path / "bin", PARTIAL_LOG)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    model = tmp_path / "student_int8.tflite"
    model.write_bytes(b"model")
    result = compile_model(model, tmp_path / "out")
    assert result.compiled and result.model == tmp_path / "out" / "student_int8_edgetpu.tflite"
    assert result.operations == OperationCounts(68, 3)
    assert "68 operations on the Edge TPU, 3 on the CPU" in result.message


def test_a_compiler_that_writes_nothing_falls_back_to_the_int8_model(tmp_path, monkeypatch):
    _fake_compiler(tmp_path / "bin", "Internal compiler error. Aborting!", writes_model=False)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    model = tmp_path / "student_int8.tflite"
    model.write_bytes(b"model")
    result = compile_model(model, tmp_path / "out")
    assert not result.compiled and result.model == model
    assert "failed (no output file)" in result.message and "Aborting" in result.log


# --- calibration frames ---------------------------------------------------------------------


def _write_png(path: Path, rgb: np.ndarray) -> None:
    codec = av.CodecContext.create("png", "w")
    codec.width, codec.height, codec.pix_fmt = rgb.shape[1], rgb.shape[0], "rgb24"
    packets = codec.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24"))
    path.write_bytes(b"".join(bytes(p) for p in packets))


def test_frames_from_a_directory_of_images_are_scaled_to_the_model(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(5):
        _write_png(tmp_path / f"{i:02d}.png", rng.integers(0, 256, (48, 64, 3), np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    frames = load_frames(tmp_path, (33, 33), 3)
    assert frames.shape == (3, 33, 33, 3) and frames.dtype == np.uint8


def test_frames_from_a_video_are_spread_over_it(shared_dir):
    frames = load_frames(shared_dir / "videos/vtest.avi", (65, 65), 6)
    assert frames.shape == (6, 65, 65, 3)
    assert len({f.tobytes() for f in frames}) == 6  # different moments of the street


def test_frames_given_as_arrays_such_as_a_devices_samples(tmp_path):
    same = np.full((33, 33, 3), 7, np.uint8)
    other = np.zeros((40, 60, 3), np.uint8)
    frames = load_frames([same, other, same], (33, 33), 2)
    assert frames.shape == (2, 33, 33, 3)
    np.testing.assert_array_equal(frames[0], same)
    with pytest.raises(CalibrationError, match=r"\(H, W, 3\)"):
        load_frames([np.zeros((33, 33), np.uint8)] * 2, (33, 33), 2)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp / "absent.mp4", "no such video or image directory"),
        (lambda tmp: tmp, "0 frame"),
        (lambda tmp: (tmp / "junk.mp4").write_bytes(b"junk") and tmp / "junk.mp4", "cannot decode"),
    ],
    ids=["missing", "empty-directory", "not-a-video"],
)
def test_unusable_calibration_sources_say_why(tmp_path, make, message):
    with pytest.raises(CalibrationError, match=message):
        load_frames(make(tmp_path), (33, 33), 4)


def test_split_interleaves_held_out_frames():
    frames = np.arange(10).reshape(10, 1, 1, 1).astype(np.uint8)
    parts = split(frames, 4)
    assert parts.held_out.ravel().tolist() == [1, 5, 9]
    assert parts.calibration.ravel().tolist() == [0, 2, 3, 4, 6, 7, 8]
    with pytest.raises(ValueError):
        split(frames, 1)


# --- releasing a new export -------------------------------------------------------------------


def test_release_without_a_base_is_the_full_model():
    msg, body = release(b"new model", 3, ModelFormat.ONNX, name="student")
    assert isinstance(msg, Model) and body == b"new model"
    assert (msg.version, msg.format, msg.name) == (3, ModelFormat.ONNX, "student")


def test_release_from_the_devices_model_is_a_zpatch_when_smaller():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, 50_000, np.uint8).tobytes()
    new = base[:20_000] + b"changed" + base[20_000:]
    msg, body = release(new, 2, ModelFormat.TFLITE, base=base, base_version=1)
    assert isinstance(msg, Update) and msg.format == UpdateFormat.ZPATCH
    assert (msg.base_version, msg.new_version) == (1, 2)
    assert msg.base_sha256 == sha256_hex(base) and msg.result_sha256 == sha256_hex(new)
    assert len(body) < 1000 and zpatch.apply(base, body) == new


def test_release_of_an_unrelated_file_is_the_full_model():
    rng = np.random.default_rng(1)
    base, new = (rng.integers(0, 256, 5_000, np.uint8).tobytes() for _ in range(2))
    msg, body = release(new, 2, ModelFormat.TFLITE, base=base, base_version=1)
    assert isinstance(msg, Model) and body == new
