"""The demo as a user runs it, watched in a real browser: headless Chromium from the
distribution's packages, driven by Selenium, on the dashboard the demo starts.

Screenshots go to ``$AMS_TEST_ARTIFACTS`` (default ``test-artifacts/`` in the checkout), under
``dashboard/``: look at them after a run.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from cloud_trainer.cli import main
from cloud_trainer.tools.browser import headless_chromium
from cloud_trainer.tools.local_broker import free_port

ARTIFACTS = Path(os.environ.get("AMS_TEST_ARTIFACTS", Path(__file__).parents[1] / "test-artifacts"))
TOKEN = "0123456789abcdef0123456789abcdef"


def _artifacts() -> Path:
    folder = ARTIFACTS / "dashboard"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):  # this run's pictures only
        old.unlink()
    return folder


def _until(what: str, check: Callable[[], object], timeout: float) -> object:
    """``check()`` once it is truthy; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if value := check():
                return value
        except Exception:  # the page is between two draws: look again
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _rows(browser: WebDriver) -> dict[str, list[str]]:
    """The fleet table as drawn: device -> its cells' text."""
    # in one script: the live view redraws the table between two WebDriver calls
    return browser.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('#fleet-rows tr')].map("
        "  r => [r.dataset.device, [...r.cells].map(c => c.textContent)]))"
    )


def _drawn(browser: WebDriver) -> int:
    return int(browser.find_element(By.TAG_NAME, "body").get_attribute("data-drawn") or 0)


def _watch_the_dashboard(url: str, shots: Path, seen: dict[str, object]) -> None:
    """What a person does while the demo runs; each step's finding goes into ``seen``."""
    browser = headless_chromium()
    try:
        _until("the dashboard to answer", lambda: browser.get(url) or True, 60)
        _until("two rows", lambda: set(_rows(browser)) == {"demo-0", "demo-1"}, 90)
        first, drawn = _rows(browser), _drawn(browser)
        browser.save_screenshot(str(shots / "fleet-start.png"))
        _until("the rows to change", lambda: _rows(browser) != first and _drawn(browser) > drawn,
               60)  # fmt: skip
        seen["rows_updated"] = True
        # a device that has taken an update (its model cell says v1 or later)
        _until("demo-0 on version 1", lambda: _rows(browser)["demo-0"][2].split()[0] != "v0", 90)
        browser.save_screenshot(str(shots / "fleet.png"))
        seen["fleet_row"] = _rows(browser)["demo-0"]
        _device_page(browser, url, shots, seen)
    except Exception as exc:
        browser.save_screenshot(str(shots / "failure.png"))
        seen["failure"] = f"{type(exc).__name__}: {exc}"
    finally:
        browser.quit()


def _device_page(browser: WebDriver, url: str, shots: Path, seen: dict[str, object]) -> None:
    browser.get(url + "devices/demo-0")
    plot = browser.find_element(By.ID, "plot")
    _until("the plot's points", lambda: int(plot.get_attribute("data-points") or 0) >= 2, 60)
    seen["plot_lines"] = len(plot.find_elements(By.TAG_NAME, "polyline"))
    overlay = _until("the overlay", lambda: browser.execute_script(
        "const img = document.getElementById('overlay');"
        "return img.complete && img.naturalWidth > 0 ? [img.naturalWidth, img.naturalHeight] : null"
    ), 60)  # fmt: skip
    seen["overlay"] = overlay
    browser.save_screenshot(str(shots / "device.png"))
    # not signed in: the page offers the action, the server refuses it
    browser.find_element(By.CSS_SELECTOR, "button[data-action='pause']").click()
    result = browser.find_element(By.ID, "act-result")
    seen["unauthenticated"] = _until("a refusal", lambda: "refused" in result.text and result.text,
                                     20)  # fmt: skip
    browser.find_element(By.ID, "sign-in").click()
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "login-submit").click()
    _until("the device page again", lambda: browser.current_url.endswith("/devices/demo-0"), 20)
    browser.find_element(By.ID, "rollback-version").send_keys("0")
    browser.find_element(By.CSS_SELECTOR, "#rollback-form button").click()
    result = browser.find_element(By.ID, "act-result")
    seen["queued"] = _until("the action queued", lambda: "queued" in result.text, 20)
    seen["action_log"] = _until("the action done", lambda: [
        r.text for r in browser.find_elements(By.CSS_SELECTOR, "#device-actions tr.done")
    ], 60)  # fmt: skip
    # the device answered over the broker: it verified the signed update and runs that file
    seen["rollback_row"] = _until("the device's ack of the rollback", lambda: [
        r.text for r in browser.find_elements(By.CSS_SELECTOR, "#updates tr")
        if "rollback to v0" in r.text and r.text.endswith("acked")
    ], 60)  # fmt: skip
    browser.set_window_size(1400, 2400)
    browser.save_screenshot(str(shots / "device-after-rollback.png"))
    browser.get(url)  # the fleet again, the action in its log (the README's picture)
    _until("the action in the fleet's log",
           lambda: browser.find_elements(By.CSS_SELECTOR, "#actions tr.done"), 20)  # fmt: skip
    browser.set_window_size(1400, 560)
    browser.save_screenshot(str(shots / "fleet-after-rollback.png"))


@pytest.mark.slow
@pytest.mark.broker
def test_the_demo_with_two_devices_in_a_browser(shared_dir, tmp_path, capsys):
    """The demo's report, and its dashboard as a person uses it: two rows that update, a
    device page with its plot and overlay, an action refused before signing in, and a
    rollback that reaches the device over the real broker."""
    videos = [shared_dir / "videos" / v for v in ("vtest.avi", "one-by-one-person-detection.mp4")]
    out, port, token = tmp_path / "report", free_port(), tmp_path / "token"
    token.write_text(TOKEN)
    shots, seen = _artifacts(), {}
    watcher = threading.Thread(target=_watch_the_dashboard,
                               args=(f"http://127.0.0.1:{port}/", shots, seen))  # fmt: skip
    watcher.start()
    argv = ["demo", "--devices", "2", "--duration", "110", "--out", str(out),
            "--dashboard-port", str(port), "--dashboard-token-file", str(token)]  # fmt: skip
    assert main([*argv, *(a for v in videos for a in ("--video", str(v)))]) == 0
    watcher.join(30)
    printed = capsys.readouterr().out
    assert f"demo: dashboard on http://127.0.0.1:{port}/ (to act on a device" in printed
    assert "failure" not in seen, seen
    assert seen["rows_updated"] and seen["plot_lines"] == 2, seen
    assert seen["overlay"][0] > 2 * seen["overlay"][1], seen  # two copies side by side
    assert "refused (401)" in seen["unauthenticated"], seen
    assert any("rollback" in row and "done" in row for row in seen["action_log"]), seen
    assert seen["rollback_row"], seen
    _the_demos_report(printed, out, videos)


def _the_demos_report(printed: str, out: Path, videos: list[Path]) -> None:
    assert printed.startswith("demo: broker on 127.0.0.1:")
    assert f"demo report: {out / 'report.md'}" in printed
    assert "demo-1: " in printed and "updates" in printed  # the live view's lines (no tty)
    report = json.loads((out / "report.json").read_text())
    devices = {d["device_id"]: d for d in report["devices"]}
    assert [devices[d]["video"] for d in ("demo-0", "demo-1")] == [v.name for v in videos]
    for device in devices.values():
        assert device["frames"] > 200 and device["updates_applied"] >= 1, device
        assert device["probes"] >= 10 and 0.0 < device["miou"] <= 1.0, device
        assert device["uplink_kbps"] > 0 and device["downlink_kbps"] > 0, device
        assert report["trainer"][device["device_id"]]["full_models"] == 0
    assert report["trainer"]["demo-0"]["rollbacks_ordered"] == 1
    assert (out / "miou_over_time.png").stat().st_size > 0
    assert "| demo-1 | one-by-one-person-detection.mp4 |" in (out / "report.md").read_text()


@pytest.mark.slow
def test_the_rendering_benchmark_runs_in_a_browser(tmp_path, capsys):
    """bench-dashboard at a small size (the 100-device figure is a benchmark, not a test)."""
    argv = ["bench-dashboard", "--devices", "20", "--rounds", "1", "--json"]
    assert main([*argv, "--results-dir", str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["by_devices"]) == {"1", "20"}
    for timings in result["by_devices"].values():
        assert timings["first_draw_ms"] > 0 and timings["redraw_ms"] >= 0
    saved = json.loads(Path(result["saved_to"]).read_text())
    assert saved["benchmark"] == "bench-dashboard" and saved["results"]["devices"] == 20
