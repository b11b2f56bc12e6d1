"""The SQLite outbox: rows leave only when acknowledged, in order, within a cap and a TTL."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from agent.outbox.spool import Spool
from agent.outbox.ticket import AckTicket
from agent.records import EVENT, STATS, SUMMARY, Message, Record
from tests.support.spooling import put_many
from tests.support.waiting import sleeps


def rec(kind: str, i: int) -> Record:
    return Record(kind, "p", f"d{i % 5}", {"i": i, "pad": "x" * 100}, f"id-{kind}-{i}")


@dataclass
class Call:
    """A ticket that runs ``fn`` when the spool's writer resolves it."""

    fn: Callable[[], object]

    def resolve(self) -> None:
        self.fn()


def test_row_leaves_only_after_ack(tmp_path):
    """Taking is not deleting: unacknowledged rows come back; acknowledged ones are gone."""
    s = Spool(tmp_path / "s.db")
    put_many(s, "a", [rec(EVENT, i) for i in range(3)])
    first = s.take("a", 10)
    assert [r.id for _, r in s.take("a", 10)] == [r.id for _, r in first]
    s.ack([rid for rid, _ in first[:2]])
    assert [r.id for _, r in s.take("a", 10)] == ["id-event-2"]
    assert s.depth("a") == 1 and s.depth("other") == 0


def test_events_before_summaries_each_in_order(tmp_path):
    """Events leave first; within a kind, the order of insertion."""
    s = Spool(tmp_path / "s.db")
    put_many(s, "a", [rec(SUMMARY, 1), rec(STATS, 2), rec(EVENT, 3)])
    put_many(s, "a", [rec(SUMMARY, 4), rec(EVENT, 5)])
    ids = [r.id for _, r in s.take("a", 10)]
    assert ids == ["id-event-3", "id-event-5", "id-summary-1", "id-stats-2", "id-summary-4"]


def test_rows_survive_a_reopen(tmp_path):
    """What was committed is there after the process is gone (the file is the outbox)."""
    s = Spool(tmp_path / "s.db")
    put_many(s, "a", [rec(EVENT, i) for i in range(50)])
    del s  # no close(): as after a crash
    again = Spool(tmp_path / "s.db")
    assert [r.payload["i"] for _, r in again.take("a", 100)] == list(range(50))


def test_cap_drops_the_oldest_counted_and_reported(tmp_path):
    """Past the cap the oldest rows go (of any kind); the newest stay; every drop counted."""
    s = Spool(tmp_path / "s.db", max_bytes=20_000)
    n = 1000
    for i in range(0, n, 10):
        put_many(s, "a", [rec(EVENT if j % 2 else SUMMARY, j) for j in range(i, i + 10)])
    kept = [r.payload["i"] for _, r in s.take("a", n)]
    stats = s.stats()
    print(f"\nspool cap: put {n}, kept {len(kept)}, dropped {stats['dropped']}")
    assert stats["dropped"] > 0 and stats["dropped"] + len(kept) == n
    assert stats["depth"] == len(kept) and stats["bytes"] <= 20_000
    assert sorted(kept) == list(range(n - len(kept), n))  # exactly the newest survive


def test_ttl_expires_rows_counted(tmp_path):
    """Rows older than the TTL are dropped on the next take, and counted."""
    s = Spool(tmp_path / "s.db", ttl=1e-6)
    put_many(s, "a", [rec(EVENT, i) for i in range(7)])
    assert s.take("a", 10) == []
    assert s.stats()["expired"] == 7 and s.depth() == 0


def test_put_many_holds_one_serialised_body_at_a_time(tmp_path):
    """orjson gives every result a 4 KiB buffer: 10,000 summaries serialised up front held
    ~40 MB during the INSERT. Streamed into executemany they peak at a few MB."""
    import tracemalloc

    s = Spool(tmp_path / "s.db")
    records = [rec(SUMMARY, i) for i in range(10_000)]
    tracemalloc.start()
    try:
        put_many(s, "a", records)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert s.depth("a") == 10_000
    assert peak < 10 << 20, f"peak {peak >> 20} MiB"


def test_tickets_resolve_in_order_after_their_records_are_committed(tmp_path):
    """A write's tickets (e.g. acknowledging QoS 1 input) are resolved once the records are
    readable from the file, in submission order."""
    import sqlite3

    s = Spool(tmp_path / "s.db")
    seen = []

    def then(k: int, last: int):
        def check():
            db = sqlite3.connect(tmp_path / "s.db")
            (n,) = db.execute("SELECT COUNT(*) FROM outbox WHERE id <= ?", (last,)).fetchone()
            db.close()
            seen.append((k, n))

        return check

    total = 0
    for k in range(20):
        batch = [rec(EVENT, total + i) for i in range(k % 4 + 1)]
        total += len(batch)
        last = s.submit("a", batch)
        s.after([Call(then(k, last))])
    s.wait()
    assert [k for k, _ in seen] == list(range(20))
    expected, n = [], 0
    for k in range(20):
        n += k % 4 + 1
        expected.append(n)
    assert [c for _, c in seen] == expected
    s.close()


def test_a_full_disk_pauses_writes_and_they_resume_by_themselves(tmp_path):
    """A real full filesystem: commits fail, nothing is acknowledged, ``failing`` and the
    stats say so; once space is freed the same submissions commit, in order, by themselves."""
    from tests.support.disk import fill, small_disk
    from tests.support.waiting import until

    with small_disk(tmp_path / "disk") as disk:
        s = Spool(disk / "s.db")
        put_many(s, "a", [rec(EVENT, 0)])
        filler = fill(disk)
        acked: list[int] = []
        big = [Record(SUMMARY, "p", "d", {"i": i, "pad": "x" * 2000}, f"b-{i}") for i in range(800)]
        s.submit("a", big, [Call(lambda: acked.append(1))])
        assert until(lambda: s.failing, 10)
        assert acked == [] and s.stats()["write_failing"] and s.write_failures >= 1
        s.submit("a", [rec(EVENT, 1)], [Call(lambda: acked.append(2))])  # queued, no raise
        filler.unlink()
        s.wait()
        assert acked == [1, 2] and not s.failing
        assert len(s.take("a", 5000)) == 802
        s.close()


def test_an_undecodable_row_is_dead_lettered_and_the_rest_flows(tmp_path):
    """A row whose body cannot be decoded (damaged on disk) moves to ``dead_letter``, is
    counted, and the rows behind it are delivered."""
    import sqlite3

    s = Spool(tmp_path / "s.db")
    put_many(s, "a", [rec(EVENT, i) for i in range(3)])
    db = sqlite3.connect(tmp_path / "s.db")
    db.execute("UPDATE outbox SET body = x'00ff' WHERE id = 2")
    db.commit()
    db.close()
    assert [r.id for _, r in s.take("a", 10)] == ["id-event-0", "id-event-2"]
    assert s.stats()["dead"] == 1 and s.depth("a") == 2
    db = sqlite3.connect(tmp_path / "s.db")
    assert db.execute("SELECT id, body FROM dead_letter").fetchall() == [(2, b"\x00\xff")]


def test_an_unreadable_spool_is_moved_aside_and_a_fresh_one_started(tmp_path):
    """Garbage where the spool should be: the file (and its -wal) is renamed aside, logged,
    and a new spool works."""
    path = tmp_path / "s.db"
    path.write_bytes(b"this is not an sqlite file" * 100)
    (tmp_path / "s.db-wal").write_bytes(b"junk")
    s = Spool(path)
    assert s.moved_aside is not None and s.moved_aside.exists()
    assert s.moved_aside.read_bytes().startswith(b"this is not")
    assert not (tmp_path / "s.db-wal").exists() or s.depth() == 0
    put_many(s, "a", [rec(EVENT, 0)])
    assert [r.id for _, r in s.take("a", 10)] == ["id-event-0"]


def test_a_truncated_spool_is_moved_aside(tmp_path):
    """A spool cut short (a power cut mid-copy, a full disk): moved aside, a fresh one used."""
    path = tmp_path / "s.db"
    s = Spool(path)
    put_many(s, "a", [Record(SUMMARY, "p", "d", {"pad": "x" * 3000}, f"i{i}") for i in range(200)])
    s.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    again = Spool(path)
    assert again.moved_aside is not None
    put_many(again, "a", [rec(EVENT, 0)])
    assert again.depth("a") == 1


def test_payloads_with_numpy_or_odd_values_are_stored_not_fatal(tmp_path):
    """A plugin's payload with numpy scalars or arrays, or an object JSON has no type for,
    is written (numbers, lists, str()) instead of failing the commit for every later record."""
    s = Spool(tmp_path / "s.db")
    odd = {"score": np.float32(1.5), "n": np.int64(3), "v": np.arange(2), "at": tmp_path}
    put_many(s, "a", [Record(EVENT, "p", "d", odd, "e-1")])
    put_many(s, "a", [Record(EVENT, "p", "d", {"score": 2.0}, "e-2")])
    (_, first), (_, second) = s.take("a", 10)
    assert first.payload == {"score": 1.5, "n": 3, "v": [0, 1], "at": str(tmp_path)}
    assert second.payload == {"score": 2.0}


def test_a_ticket_that_raises_does_not_stop_the_writer(tmp_path):
    """Before, the writer thread died and ``wait`` (the agent's shutdown) blocked for ever."""
    s = Spool(tmp_path / "s.db")
    ran: list[int] = []

    def broken() -> None:
        raise RuntimeError("acknowledgement failed")

    s.submit("a", [Record(SUMMARY, "p", "d", {}, "r1")], [Call(broken)])
    s.submit("a", [Record(SUMMARY, "p", "d", {}, "r2")], [Call(lambda: ran.append(2))])
    waiter = threading.Thread(target=s.wait, daemon=True)
    waiter.start()
    waiter.join(10)
    assert not waiter.is_alive(), "wait() blocked: the writer died"
    assert ran == [2] and s.depth("a") == 2
    s.close()


def test_wait_returns_only_after_a_ticket_only_write_resolved(tmp_path):
    """``wait()`` covers ``after`` tickets (a batch without records acknowledges its QoS 1
    input this way): a reload stopping a pipeline disconnects its source only after them."""
    s = Spool(tmp_path / "s.db")
    entered, release, ran, returned = (threading.Event() for _ in range(4))

    def acknowledge():
        entered.set()
        release.wait(10)
        ran.set()

    s.after([Call(acknowledge)])
    assert entered.wait(10)  # the writer took the job and is resolving its ticket
    waiter = threading.Thread(target=lambda: (s.wait(), returned.set()))
    waiter.start()
    assert not returned.wait(0.5), "wait() returned while the ticket was still resolving"
    release.set()
    assert returned.wait(10) and ran.is_set()
    waiter.join()
    s.close()


def test_period_totals_follow_batches_and_flushes_in_commit_order(tmp_path):
    """A flush clears only what came before it, even inside one group commit; the rows
    outlive the process, and the open count rises on every open (the id incarnation)."""
    from agent.stages.period import PeriodWrite, cleared

    s = Spool(tmp_path / "s.db")
    first = s.incarnation
    s.after((), PeriodWrite("p", [("d1", b"[1]"), ("d2", b"[2]")]))
    s.submit("a", [rec(SUMMARY, 1)], (), cleared("p"))
    s.after((), PeriodWrite("p", [("d1", b"[3]")]))
    s.after((), PeriodWrite("q", [("d9", b"[9]")]))
    s.wait()
    del s  # no close(): as after a crash
    again = Spool(tmp_path / "s.db")
    rows = sorted((p, d, b) for p, d, b, _ in again.period_rows())
    assert rows == [("p", "d1", b"[3]"), ("q", "d9", b"[9]")]
    assert again.incarnation == first + 1


def test_opening_on_a_full_disk_waits_until_it_can_write(tmp_path):
    """A restart while the disk is still full: the open retries (no exception, no crash
    loop) and succeeds by itself once there is space, the open count committed."""
    import threading

    from tests.support.disk import fill, small_disk

    with small_disk(tmp_path / "disk") as disk:
        first = Spool(disk / "s.db")
        put_many(first, "a", [rec(EVENT, 0)])
        first.close()
        filler = fill(disk)
        opened: list[Spool] = []
        errors: list[BaseException] = []

        def open_it() -> None:
            try:
                opened.append(Spool(disk / "s.db"))
            except BaseException as e:
                errors.append(e)

        t = threading.Thread(target=open_it)
        t.start()
        t.join(1.0)
        stuck = t.is_alive() and not opened
        filler.unlink()
        t.join(30)
        assert stuck and not errors
        assert opened and opened[0].incarnation == 2 and opened[0].depth("a") == 1
        opened[0].close()


def test_closing_while_writes_fail_gives_them_up_unacknowledged(tmp_path, monkeypatch):
    """SIGTERM with the disk still full: close() returns after CLOSE_RETRY, the records are
    counted as abandoned and their QoS 1 tickets never resolved (the broker keeps the input)."""
    from agent.outbox import spool as spool_module
    from tests.support.disk import fill, small_disk
    from tests.support.waiting import until

    monkeypatch.setattr(spool_module, "CLOSE_RETRY", 0.5)
    with small_disk(tmp_path / "disk") as disk:
        s = Spool(disk / "s.db")
        fill(disk)
        acked: list[Message] = []
        pad = "x" * 2000
        big = [Record(SUMMARY, "p", "d", {"i": i, "pad": pad}, f"b-{i}") for i in range(800)]
        ticket = AckTicket([Message("t", b"{}", ack=(1, (7,)))], acked.extend)
        s.submit("a", big, [ticket])
        assert until(lambda: s.failing, 10)
        s.close()
        assert acked == [] and not ticket.resolved and s.abandoned_records == 800


def test_a_write_after_a_quiet_spell_costs_the_writer_one_wake_up(tmp_path):
    """The group-commit wait only pays on a busy spool: a write that comes long after the
    last commit is committed at once, one wake-up of the writer each (two before: the
    notification and the end of the wait)."""
    sp = Spool(tmp_path / "s.db", sync="normal")  # no fsync: no I/O waits in the count
    quiet = threading.Event()
    sp.submit("up", [rec(EVENT, 0)])
    sp.wait()
    writer = sp._writer.native_id
    before, commits = sleeps(writer), sp.commits
    for i in range(1, 21):
        quiet.wait(0.03)  # 30 ms apart: 3x BUSY_GAP
        sp.submit("up", [rec(SUMMARY, i)])
        sp.wait()
    assert sp.commits - commits == 20
    assert sleeps(writer) - before < 30  # 20 writes: 40 or more with a wait after each
    sp.close()
