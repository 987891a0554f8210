"""The demo's report from device status files: running mIoU, the summary per device, files."""

from __future__ import annotations

import json

import pytest

from cloud_trainer.tools.demo_report import device_summary, read_status, running_miou, write_report


def _status(device_id: str = "demo-0", updates: list[float] | None = None) -> dict:
    # probes every 10 s: the device's model gains 5 points over the pretrained after 25 s
    history = [[t, 1 if t >= 25 else None, 0.7 + (0.05 if t >= 25 else 0.0), 0.7]
               for t in range(0, 60, 10)]  # fmt: skip
    return {
        "device_id": device_id,
        "video": "vtest.avi",
        "elapsed_s": 60.0,
        "frames": 600,
        "fps": 10.0,
        "sampling_fps": 1.0,
        "model_version": 1,
        "updates_applied": 1,
        "uplink_kbps": 150.0,
        "downlink_kbps": 2.0,
        "history": history,
        "updates": [25.0] if updates is None else updates,
        "done": True,
    }


def test_running_miou_covers_the_last_20_seconds():
    device, pretrained = running_miou(_status())  # probes at 30, 40 and 50 s
    assert device == pytest.approx(0.75) and pretrained == pytest.approx(0.7)
    assert running_miou({**_status(), "history": []}) == (None, None)


def test_summary_compares_the_same_frames_since_the_first_update():
    summary = device_summary(_status())
    assert summary["miou"] == pytest.approx((3 * 0.7 + 3 * 0.75) / 6, abs=1e-4)
    assert summary["miou_since_first_update"] == pytest.approx(0.75)
    assert summary["miou_pretrained_since_first_update"] == pytest.approx(0.7)
    never = device_summary(_status(updates=[]))
    assert never["miou_since_first_update"] is None and never["probes"] == 6


def test_report_files_and_a_status_not_yet_written(tmp_path):
    assert read_status(tmp_path / "missing.json") is None
    (tmp_path / "partial.json").write_text('{"device_id": ')  # never atomic-written: ignored
    assert read_status(tmp_path / "partial.json") is None
    settings = {"devices": 2, "duration_s": 60, "ran_s": 61.0, "broker": "x:1", "training": {}}
    report = write_report(tmp_path / "out", [_status(), _status("demo-1")], {}, settings)
    assert [d["device_id"] for d in report["devices"]] == ["demo-0", "demo-1"]
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["devices"][1]["updates_applied"] == 1
    assert (
        "| demo-1 | vtest.avi | 10.0 | 1 | 72.5 | 70.0 | 75.0 | 70.0 | 150.0 / 2.0 |"
        in (tmp_path / "out" / "report.md").read_text()
    )
    assert (tmp_path / "out" / "miou_over_time.png").stat().st_size > 0
