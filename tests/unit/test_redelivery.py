"""The committed-input identities (agent/runtime/redelivery.py): only a DUP of committed
input is left out; the record is bounded, committed with its batch, and outlives the process.
"""

from __future__ import annotations

import sqlite3

from agent.outbox.spool import Spool
from agent.outbox.ticket import AckTicket
from agent.records import SUMMARY, Message, Record
from agent.runtime.redelivery import Redeliveries
from agent.stages.period import PeriodWrite
from tests.support.waiting import until


def msg(mid: int, body: bytes = b'{"v":[1]}', dup: bool = False, topic: str = "p/d1/t") -> Message:
    return Message(topic, body, 0.0, None, mid, dup)


def test_only_a_dup_of_committed_input_is_left_out():
    r = Redeliveries()
    first = [msg(1), msg(2, b'{"v":[2]}'), msg(-1, b"qos0")]
    keep, write = r.screen(first)
    assert keep == first and write is not None and len(r) == 2
    again = [
        msg(1, dup=True),  # committed: left out
        msg(1),  # no DUP: a new message that reuses the packet id
        msg(2, b'{"v":[3]}', dup=True),  # same packet id, another payload
        msg(2, dup=True, topic="p/d2/t"),  # same packet id and payload, another topic
        msg(3, dup=True),  # a DUP never committed (its PUBACK lost before processing)
        msg(-1, b"qos0", dup=True),  # QoS 0: never matched
    ]
    keep, write = r.screen(again)
    assert keep == again[1:]
    assert r.redelivered == 1
    # the one left out is recorded again: its new PUBACK may be lost in turn
    keep, _ = r.screen([msg(1, dup=True), msg(3, dup=True)])
    assert keep == [] and r.redelivered == 3


def test_a_dup_later_in_the_same_batch_is_left_out():
    """After a reconnect the broker redelivers what the old connection could not acknowledge;
    the first copy may still be queued in the same batch."""
    r = Redeliveries()
    keep, _ = r.screen([msg(7), msg(8, b"x"), msg(7, dup=True)])
    assert [m.mid for m in keep] == [7, 8] and r.redelivered == 1


def test_the_window_is_bounded_in_memory_and_in_the_spool(tmp_path):
    s = Spool(tmp_path / "s.db")
    r = Redeliveries(window=100)
    for b in range(50):
        _, write = r.screen([msg(b * 30 + i, b"%d" % i) for i in range(30)])
        s.after((), PeriodWrite("p", inputs=write))
        assert len(r) <= 100 + 30
    s.wait()
    rows = s.input_rows("p")
    assert len(rows) == 4 and [b for b, _ in rows] == [47, 48, 49, 50]  # 90 >= 100 - 30 kept
    assert len(r) == 120
    keep, _ = r.screen([msg(0, b"0", dup=True), msg(49 * 30, b"0", dup=True)])
    assert [m.mid for m in keep] == [0]  # forgotten: processed (never drop a real message)
    s.close()


def test_identities_outlive_the_process_per_pipeline(tmp_path):
    s = Spool(tmp_path / "s.db")
    r, q = Redeliveries(), Redeliveries()
    _, write = r.screen([msg(5), msg(6)])
    s.after((), PeriodWrite("p", inputs=write))
    _, write = q.screen([msg(9)])
    s.after((), PeriodWrite("q", inputs=write))
    s.wait()
    del s  # no close(): as after a SIGKILL
    again = Spool(tmp_path / "s.db")
    r2 = Redeliveries(again.input_rows("p"))
    keep, write = r2.screen([msg(5, dup=True), msg(6, dup=True), msg(9, dup=True)])
    assert [m.mid for m in keep] == [9] and r2.redelivered == 2
    assert write.batch == 2  # numbering goes on after the batches on disk
    again.close()


def test_identities_commit_with_their_batch_or_not_at_all(tmp_path):
    """A commit that fails after the identities were written (a real SQLite abort in the
    same transaction) leaves neither the batch's records nor its identities; once it
    commits, both are there."""
    path = tmp_path / "s.db"
    s = Spool(path)
    other = sqlite3.connect(path, timeout=10, isolation_level=None)
    other.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON period BEGIN SELECT RAISE(ABORT, 'no'); END"
    )
    r = Redeliveries()
    _, write = r.screen([msg(1), msg(2)])
    acked = []
    record = Record(SUMMARY, "p", "d1", {"count": 2}, "id-1")
    s.submit(
        "a",
        [record],
        [AckTicket([], lambda _: acked.append(1))],
        PeriodWrite("p", [("d1", b"[2]")], inputs=write),
    )
    assert until(lambda: s.failing, 10)

    def on_disk() -> tuple[int, int]:
        inputs = other.execute("SELECT COUNT(*) FROM inputs").fetchone()[0]
        return other.execute("SELECT COUNT(*) FROM outbox").fetchone()[0], inputs

    assert on_disk() == (0, 0) and acked == []
    other.execute("DROP TRIGGER refuse")
    s.wait()
    assert on_disk() == (1, 1) and acked == [1]
    other.close()
    s.close()
