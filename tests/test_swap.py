"""The swap handshake with engines that return set label maps: one warm-up function for both
threads, a trial decided on a frame, and the running model changed only between two frames."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from edge_runtime.swap import Handover, LoadedModel, warm_up

RGB = np.zeros((2, 2, 3), np.uint8)
SEVERAL = np.array([[0, 1], [2, 3]])
ONE_CLASS = np.zeros((2, 2), int)


class FakeEngine:
    input_size = (2, 2)
    num_classes = None

    def __init__(self, labels: np.ndarray | Exception) -> None:
        self.labels = labels
        self.calls = 0
        self.closed = False

    def infer(self, rgb: np.ndarray) -> np.ndarray:
        assert not self.closed, "inference on a closed engine"
        self.calls += 1
        if isinstance(self.labels, Exception):
            raise self.labels
        return self.labels

    def close(self) -> None:
        self.closed = True


def _model(labels: np.ndarray | Exception, version: int | None = None) -> LoadedModel:
    return LoadedModel(FakeEngine(labels), version, f"{version}" * 64, "A", b"")


def test_warm_up_accepts_a_model_whose_output_is_usable():
    labels, reason = warm_up(FakeEngine(SEVERAL[::-1]), RGB, SEVERAL)
    assert reason is None and np.array_equal(labels, SEVERAL[::-1])
    # with nothing to compare with, running a frame is enough
    assert warm_up(FakeEngine(ONE_CLASS), RGB, None) == (ONE_CLASS, None)


@pytest.mark.parametrize(
    ("output", "running", "why"),
    [
        (ONE_CLASS, SEVERAL, "all one class"),
        (SEVERAL[:1], SEVERAL, "shape"),
        (RuntimeError("tensor mismatch"), SEVERAL, "warm-up failed: tensor mismatch"),
    ],
)
def test_warm_up_refuses_a_model_that_cannot_serve(output, running, why):
    _, reason = warm_up(FakeEngine(output), RGB, running)
    assert reason is not None and why in reason


def test_one_class_everywhere_is_fine_where_the_running_model_saw_one_too():
    assert warm_up(FakeEngine(ONE_CLASS), RGB, ONE_CLASS)[1] is None


def _frames_until(handover: Handover, done, timeout: float = 10.0) -> list[LoadedModel]:
    """Run frames as the frame loop does until ``done()``; the model of each frame's labels."""
    ran, deadline = [], time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "the handshake did not finish"
        handover.between_frames()
        model, labels = handover.infer(lambda model: RGB)
        assert labels is model.engine.labels
        ran.append(model)
    return ran


def _offer(handover: Handover, model: LoadedModel) -> tuple[threading.Thread, list]:
    verdict: list[str | None] = []
    worker = threading.Thread(target=lambda: verdict.append(handover.try_out(model)))
    worker.start()
    return worker, verdict


def test_an_accepted_trial_runs_from_its_warm_up_frame_on():
    running, new = _model(SEVERAL), _model(SEVERAL[::-1], version=1)
    handover = Handover(running)
    handover.record_frame(RGB, SEVERAL)
    worker, verdict = _offer(handover, new)
    ran = _frames_until(handover, lambda: bool(verdict))
    worker.join(5)
    ran += _frames_until(handover, lambda: len(ran) >= 5)
    first = ran.index(new)  # its warm-up frame, whose labels were that frame's result
    assert verdict == [None] and all(model is running for model in ran[:first])
    # every frame after the warm-up stays on it: the version they report never goes back
    assert all(model is new for model in ran[first:]) and new.engine.calls == len(ran) - first
    assert handover.running is new and handover.upcoming is new
    handover.hand_over(new, retired=running.engine)  # recorded in slots.json: confirms it
    assert not running.engine.closed  # closed only between two frames
    assert handover.between_frames() is new and running.engine.closed


def test_a_model_that_cannot_be_recorded_is_handed_back():
    running, new = _model(SEVERAL), _model(SEVERAL[::-1], version=1)
    handover = Handover(running)
    handover.record_frame(RGB, SEVERAL)
    worker, verdict = _offer(handover, new)
    _frames_until(handover, lambda: bool(verdict))
    worker.join(5)
    assert handover.running is new
    handover.hand_over(running, retired=new.engine)  # what the worker does if slots.json fails
    assert handover.upcoming is running
    assert handover.between_frames() is running and new.engine.closed


def test_a_frame_the_new_model_cannot_take_refuses_it_and_runs_on_the_old_one():
    running, new = _model(SEVERAL), _model(SEVERAL[::-1], version=1)
    handover = Handover(running)
    handover.record_frame(RGB, SEVERAL)
    worker, verdict = _offer(handover, new)

    def prepare(model: LoadedModel) -> np.ndarray:
        if model is new:
            raise ValueError("frame too small")
        return RGB

    ran, deadline = [], time.monotonic() + 10
    while not verdict and time.monotonic() < deadline:
        handover.between_frames()
        ran.append(handover.infer(prepare)[0])  # never raises: the frame loop goes on
    worker.join(5)
    assert verdict and "cannot be scaled to its input: frame too small" in verdict[0]
    assert all(model is running for model in ran) and new.engine.calls == 0
    assert handover.running is running


def test_a_refused_trial_never_serves_a_frame():
    running, collapsed = _model(SEVERAL), _model(ONE_CLASS, version=1)
    handover = Handover(running)
    handover.record_frame(RGB, SEVERAL)
    worker, verdict = _offer(handover, collapsed)
    ran = _frames_until(handover, lambda: bool(verdict))
    worker.join(5)
    assert "one class" in verdict[0]
    assert collapsed.engine.calls == 1  # warmed up on a frame, which ran again on the old one
    assert all(model is running for model in ran)
    assert handover.between_frames() is running


def test_without_frames_the_worker_warms_up_on_the_latest_frame():
    running = _model(SEVERAL)
    handover = Handover(running, trial_timeout_s=0)
    assert handover.try_out(_model(ONE_CLASS)) is None  # no frame ever ran: nothing to compare
    handover.record_frame(RGB, SEVERAL)
    collapsed, good = _model(ONE_CLASS, 1), _model(SEVERAL[::-1], 2)
    assert "one class" in handover.try_out(collapsed)
    assert handover.try_out(good) is None
    assert collapsed.engine.calls == good.engine.calls == 1
    handover.hand_over(good)
    assert handover.upcoming is good  # what the device reports, before any frame runs
    assert handover.running is running  # the frame loop alone moves it


def test_the_worker_starts_heavy_work_as_a_frame_ends(monkeypatch):
    monkeypatch.setattr("edge_runtime.swap.FRAME_END_TIMEOUT_S", 60.0)  # only a frame ends it
    handover = Handover(_model(SEVERAL))
    waiting = threading.Thread(target=handover.after_next_frame)
    waiting.start()
    _frames_until(handover, lambda: not waiting.is_alive())
    waiting.join()


def test_without_a_frame_loop_the_worker_does_not_wait_for_a_frame(monkeypatch):
    monkeypatch.setattr("edge_runtime.swap.FRAME_END_TIMEOUT_S", 60.0)
    handover = Handover(_model(SEVERAL), trial_timeout_s=0)
    waiting = threading.Thread(target=handover.after_next_frame)
    waiting.start()
    waiting.join(30)
    assert not waiting.is_alive()
