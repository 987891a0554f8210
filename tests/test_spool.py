import pytest

from edge_runtime.durable import atomic_write
from edge_runtime.spool import Spool
from shared_schema.envelope import decode, encode
from shared_schema.messages import MessageType, Segment


def _segment(i: int) -> bytes:
    msg = Segment(
        width=64, height=64, timestamps=(float(i),), sampling_rate_fps=1.0, bitrate_kbps=200.0
    )
    return encode(msg, device_id="cam-1", seq=i, boot="0" * 16, body=bytes(100 + i))


def _timestamps(spool: Spool) -> list[float]:
    out = []
    while (entry := spool.oldest()) is not None:
        out.append(decode(entry.read()).msg.timestamps[0])
        spool.remove(entry)
    return out


def test_fifo_order_and_persistence_across_reopen(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20, max_entries=100)
    for i in range(5):
        spool.put(MessageType.SEGMENT, _segment(i))
    assert len(spool) == 5
    reopened = Spool(tmp_path, max_bytes=1 << 20, max_entries=100)
    assert _timestamps(reopened) == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert list(tmp_path.iterdir()) == []
    # Sequence numbers keep increasing after a reopen, so order survives restarts.
    reopened.put(MessageType.SEGMENT, _segment(9))
    assert Spool(tmp_path, max_bytes=1 << 20, max_entries=100).oldest().seq == 5


@pytest.mark.parametrize(("max_entries", "max_bytes"), [(3, 1 << 20), (100, 3 * 400)])
def test_bounds_drop_the_oldest_and_count(tmp_path, max_entries, max_bytes):
    spool = Spool(tmp_path, max_bytes=max_bytes, max_entries=max_entries)
    for i in range(6):
        spool.put(MessageType.SEGMENT, _segment(i))
    assert _timestamps(spool)[-1] == 5.0
    assert spool.counters.get("spool.dropped") >= 3


def test_power_cut_leftovers_are_cleaned_and_corrupt_entries_discarded(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20, max_entries=100)
    spool.put(MessageType.SEGMENT, _segment(0))
    spool.put(MessageType.SEGMENT, _segment(1))
    (tmp_path / "0000000000000002.segment.env.tmp").write_bytes(_segment(2)[:50])
    atomic_write(tmp_path / "0000000000000003.segment.env", b"AMS\x01 not an envelope")
    recovered = Spool(tmp_path, max_bytes=1 << 20, max_entries=100)
    assert recovered.counters.get("spool.corrupt") == 1
    assert _timestamps(recovered) == [0.0, 1.0]
    assert list(tmp_path.iterdir()) == []


def test_remove_is_idempotent(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20, max_entries=100)
    entry = spool.put(MessageType.SEGMENT, _segment(0))
    spool.remove(entry)
    spool.remove(entry)
    assert len(spool) == 0
