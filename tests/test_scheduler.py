import threading
import time

from cloud_trainer.scheduler import RoundRobin


def test_round_robin_gives_each_session_one_step_per_round():
    order = []
    work = {"slow": 5, "a": 5, "b": 5}

    def step(session_id):
        order.append(session_id)
        time.sleep(0.03 if session_id == "slow" else 0.001)
        work[session_id] -= 1
        return work[session_id] > 0

    scheduler = RoundRobin(step)
    for session_id in ("slow", "a", "b"):
        scheduler.notify(session_id)
    worker = threading.Thread(target=scheduler.run)
    worker.start()
    deadline = time.monotonic() + 5
    while any(work.values()) and time.monotonic() < deadline:
        time.sleep(0.01)
    scheduler.stop()
    worker.join(2)
    assert order == ["slow", "a", "b"] * 5  # the slow session never delays others by more
    assert scheduler.steps == {"slow": 5, "a": 5, "b": 5}


def test_a_session_notified_twice_is_queued_once_and_calls_run_between_steps():
    seen = []
    scheduler = RoundRobin(lambda sid: seen.append(sid) or False)
    scheduler.notify("a")
    scheduler.notify("a")
    scheduler.call(lambda: seen.append("checkpoint"))
    scheduler.notify("b")
    _run_until_idle(scheduler)
    assert seen == ["a", "checkpoint", "b"]


def _run_until_idle(scheduler: RoundRobin) -> None:
    worker = threading.Thread(target=scheduler.run)
    worker.start()
    deadline = time.monotonic() + 10
    while not scheduler.idle and time.monotonic() < deadline:
        time.sleep(0.01)
    scheduler.stop()
    worker.join(2)


def test_a_failing_step_does_not_stop_the_worker():
    seen = []

    def step(session_id):
        seen.append(session_id)
        if session_id == "bad":
            raise RuntimeError("boom")
        return False

    scheduler = RoundRobin(step)
    for session_id in ("bad", "good"):
        scheduler.notify(session_id)
    worker = threading.Thread(target=scheduler.run)
    worker.start()
    deadline = time.monotonic() + 2
    while len(seen) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    scheduler.stop()
    worker.join(2)
    assert seen == ["bad", "good"]


def test_a_chooser_picks_among_the_queued_sessions_and_calls_keep_their_turn():
    seen = []
    scheduler = RoundRobin(lambda sid: seen.append(sid) or False, choose=lambda q: q[-1])
    for sid in ("a", "b", "c"):
        scheduler.notify(sid)
    scheduler.call(lambda: seen.append("checkpoint"))
    _run_until_idle(scheduler)
    # the last queued session first, each time; the call when it reaches the front
    assert seen == ["c", "b", "a", "checkpoint"]
