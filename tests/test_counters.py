import logging
import threading

from shared_schema.counters import Counters, DuplicateFilter, RejectionLog


def test_counters_are_thread_safe():
    c = Counters()
    threads = [
        threading.Thread(target=lambda: [c.inc("x") for _ in range(10_000)]) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert c.get("x") == 40_000
    assert c.snapshot() == {"x": 40_000}


def test_rejection_log_counts_everything_but_throttles_lines(caplog):
    now = [0.0]
    c = Counters()
    log = RejectionLog(c, logging.getLogger("t"), interval_s=5.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING):
        for _ in range(100):
            log.reject("bad_hash", "body sha256 does not match")
        now[0] = 6.0
        log.reject("bad_hash", "again")
        log.reject("truncated", "short")
    assert c.get("rejected.bad_hash") == 101
    assert c.get("rejected.truncated") == 1
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert "99 more since the last report" in lines[1]


def test_duplicate_filter_is_bounded_lru_per_sender():
    f = DuplicateFilter(capacity=3, max_senders=2)
    assert [f.seen(("a", k)) for k in (1, 2, 3)] == [False] * 3
    assert f.seen(("a", 1)) is True  # refreshes 1
    assert f.seen(("a", 4)) is False  # evicts 2, the least recently seen
    assert f.seen(("a", 2)) is False
    assert f.seen(("a", 1)) is True
    for k in range(1000):  # a flood from b evicts only b's own keys
        f.seen(("b", k))
    assert f.seen(("a", 1)) is True
    f.seen(("c", 0))  # a third sender: b, the least recently heard, is forgotten
    assert f.seen(("a", 1)) is True and f.seen(("b", 999)) is False
