"""Forwarders: every spooled record delivered once, events by the express queue when caught up,
and a backlog in order."""

from __future__ import annotations

import sqlite3
import threading
import time

from agent.errors import NotConnectedError
from agent.log import structlog
from agent.outbox.forwarding import Express, Forwarder, submit
from agent.outbox.spool import Spool
from agent.outbox.ticket import AckTicket
from agent.records import EVENT, SUMMARY, Message, Record
from agent.stages.period import PeriodWrite
from tests.support.waiting import until


def rec(kind: str, i: int) -> Record:
    return Record(kind, "p", f"d{i % 3}", {"i": i}, f"{kind}-{i}")


class RecordingSink:
    """A sink that keeps what it was given; it refuses while ``down`` is set."""

    concurrent = True

    def __init__(self) -> None:
        self.got: list[str] = []
        self.down = threading.Event()
        self.lock = threading.Lock()

    def start(self) -> None: ...

    def close(self) -> None: ...

    def write_many(self, records) -> None:
        if self.down.is_set():
            raise NotConnectedError("down")
        with self.lock:
            self.got += [r.id for r in records]


def wait_for(pred, timeout: float = 10.0) -> None:
    assert until(pred, timeout, 0.01), "timed out"


def put_many(f: Forwarder, records: list[Record]) -> None:
    """Hand ``records`` to the forwarder (as a worker does) and return once committed."""
    f.spool.wait(f.put(records))


def test_express_rows_are_handed_over_before_commit_and_skipped_by_take(tmp_path):
    s = Spool(tmp_path / "s.db")
    f = Forwarder("a", RecordingSink(), s, batch=16, rate=1e6)  # lanes not started
    express: Express = f.express
    put_many(f, [rec(SUMMARY, 0), rec(EVENT, 1), rec(EVENT, 2)])
    fresh = express.pop(10)
    assert [r.id for _, r in fresh] == ["event-1", "event-2"]
    taken = s.take("a", 10)
    assert [r.id for _, r in taken] == ["event-1", "event-2", "summary-0"]  # committed too
    assert [r.id for _, r in express.skipped(taken)] == ["summary-0"]
    express.done(fresh)  # e.g. delivery failed: take owns them again
    assert [r.id for _, r in express.skipped(s.take("a", 10))] == [
        "event-1",
        "event-2",
        "summary-0",
    ]


def test_a_batch_ticket_resolves_once_every_sink_has_its_rows_and_the_totals(tmp_path):
    """The worker's QoS 1 ticket acknowledges the batch's input only once the rows of every
    sink and the period totals are committed (readable from another connection)."""
    s = Spool(tmp_path / "s.db")
    forwarders = [Forwarder(n, RecordingSink(), s, 16, 1e6) for n in ("a", "b")]
    seen = []

    def acknowledge(msgs: list[Message]) -> None:
        with sqlite3.connect(tmp_path / "s.db") as db:
            rows = db.execute("SELECT sink, COUNT(*) FROM outbox GROUP BY sink").fetchall()
            totals = db.execute("SELECT pipeline, device FROM period").fetchall()
        seen.append((msgs, rows, totals))

    msgs = [Message("in/d1", b"{}", ack=(1, (5,)))]
    ticket = AckTicket(msgs, acknowledge)
    totals = PeriodWrite("p", [("d1", b"[1]")])
    submit(s, forwarders, [rec(EVENT, 0), rec(SUMMARY, 1)], ticket, totals)
    s.wait()
    assert ticket.resolved
    assert seen == [(msgs, [("a", 2), ("b", 2)], [("p", "d1")])]
    s.close()


def test_every_record_delivered_once_while_events_take_the_express_queue(tmp_path):
    s = Spool(tmp_path / "s.db")
    sink = RecordingSink()
    f = Forwarder("a", sink, s, batch=64, rate=1e6)
    f.start()
    sent = []
    for i in range(300):
        batch = [rec(EVENT, i)] + ([rec(SUMMARY, i)] if i % 10 == 0 else [])
        put_many(f, batch)
        sent += [r.id for r in batch]
        if i % 50 == 0:  # let the lane catch up: the events after this take the express queue
            wait_for(lambda: s.depth("a") == 0)
    wait_for(lambda: s.depth("a") == 0 and len(sink.got) >= len(sent))
    f.stop(drain_timeout=1)
    assert sorted(sink.got) == sorted(sent)  # each once
    events = [x for x in sink.got if x.startswith("event")]
    assert events == [f"event-{i}" for i in range(300)]  # in order


def test_backlog_after_an_outage_keeps_its_order_and_loses_nothing(tmp_path):
    s = Spool(tmp_path / "s.db")
    sink = RecordingSink()
    sink.down.set()
    f = Forwarder("a", sink, s, batch=16, rate=1e6)
    f.start()
    for i in range(100):
        put_many(f, [rec(EVENT, i)])
    wait_for(lambda: f.failures >= 1)  # the event lane has failed: not caught up
    sink.down.clear()
    for i in range(100, 150):  # fresh events while the backlog drains
        put_many(f, [rec(EVENT, i)])
    wait_for(lambda: s.depth("a") == 0 and len(sink.got) >= 150)
    f.stop(drain_timeout=1)
    assert sink.got == [f"event-{i}" for i in range(150)]


class PacedForwarder(Forwarder):
    """Records the pauses it asks for instead of waiting them out (no clock in the test)."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.pauses: list[float] = []

    def _pace(self, pause: float) -> None:
        self.pauses.append(pause)


def test_a_backlog_is_paced_at_the_replay_rate(tmp_path):
    """After an outage the spooled rows go out in order, and after each full batch of the
    backlog the lane pauses for the batch's share of ``rate`` (8 rows at 40/s: 0.2 s, less
    the time the batch took)."""
    s = Spool(tmp_path / "s.db")
    sink = RecordingSink()
    sink.down.set()
    f = PacedForwarder("a", sink, s, 8, 40.0)
    f.start()
    put_many(f, [rec(SUMMARY, i) for i in range(40)])
    wait_for(lambda: f.failures >= 1)  # the lane has failed: what it finds is a backlog
    sink.down.clear()
    wait_for(lambda: len(sink.got) == 40)
    f.stop(drain_timeout=1)
    assert sink.got == [f"summary-{i}" for i in range(40)]
    assert len(f.pauses) == 5  # after each of the five full batches of 8
    assert all(p <= 8 / 40.0 for p in f.pauses), f.pauses


def test_live_records_are_not_paced_like_a_backlog(tmp_path):
    """replay_rate paces the drain of a backlog, never live records (10,000 devices' summaries
    each second would fall ever further behind)."""
    s = Spool(tmp_path / "s.db")
    sink = RecordingSink()
    f = PacedForwarder("a", sink, s, 8, 1.0)  # a paced backlog of 64 rows would take 64 s
    f.start()
    put_many(f, [rec(SUMMARY, 0)])
    wait_for(lambda: sink.got == ["summary-0"])  # the lane has caught up
    put_many(f, [rec(SUMMARY, i) for i in range(1, 65)])
    wait_for(lambda: len(sink.got) == 65, timeout=20)
    f.stop(drain_timeout=1)
    assert sink.got == [f"summary-{i}" for i in range(65)]
    assert f.pauses == []


class PipeliningSink(RecordingSink):
    """Publishes at once (``publish_many``); acknowledgements come while ``acks`` is set, and
    a delivery fails while ``down`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.acks = threading.Event()
        self.acks.set()
        self.threads: set[int] = set()

    def publish_many(self, records):
        if self.down.is_set():
            raise NotConnectedError("down")
        with self.lock:
            self.got += [r.id for r in records]
            self.threads.add(threading.get_ident())
        return Delivery(self)


class Delivery:
    def __init__(self, sink: PipeliningSink) -> None:
        self.sink = sink

    def done(self) -> bool:
        if self.sink.down.is_set():
            raise NotConnectedError("lost")
        return self.sink.acks.is_set()

    def notify(self, event: threading.Event) -> float:
        return time.monotonic() + 0.005  # nothing tells when ``acks`` is set: look in 5 ms

    def wait(self) -> None:
        until(lambda: self.sink.acks.is_set() or self.sink.down.is_set(), 5, 0.005)
        if not self.done():
            raise NotConnectedError("no acknowledgement")


def caught_up(tmp_path) -> tuple[Spool, PipeliningSink, Forwarder]:
    """A started forwarder whose event lane has delivered one event and caught up."""
    s = Spool(tmp_path / "s.db")
    sink = PipeliningSink()
    f = Forwarder("a", sink, s, batch=16, rate=1e6)
    f.start()
    put_many(f, [rec(EVENT, -1)])
    wait_for(lambda: s.depth("a") == 0 and f.live.caught_up)
    return s, sink, f


def test_pipelined_events_go_out_before_the_earlier_ones_are_acknowledged(tmp_path):
    s, sink, f = caught_up(tmp_path)
    sink.acks.clear()  # the broker holds its acknowledgements
    for i in range(40):
        put_many(f, [rec(EVENT, i)])
        f.kick()
    wait_for(lambda: len(sink.got) == 41)  # all published, none acknowledged
    assert s.depth("a") == 40
    sink.acks.set()
    wait_for(lambda: s.depth("a") == 0)
    f.stop(drain_timeout=1)
    assert sink.got == ["event--1"] + [f"event-{i}" for i in range(40)]  # once, in order


def test_kick_publishes_from_the_calling_thread_only_when_the_lane_is_caught_up(tmp_path):
    s = Spool(tmp_path / "s.db")
    sink = PipeliningSink()
    f = Forwarder("a", sink, s, batch=16, rate=1e6)  # lanes not started: kick alone
    f.put([rec(EVENT, 0)])
    f.kick()
    assert sink.got == []  # not caught up (as at start): the lane replays the spool first
    f.live.caught_up = True
    f.put([rec(EVENT, 1)])
    f.kick()
    assert sink.got == ["event-0", "event-1"]
    assert sink.threads == {threading.get_ident()}
    assert [r.id for _, r in f.live.inflight[0][0]] == ["event-0", "event-1"]


def test_failed_pipelined_deliveries_are_replayed_from_the_spool(tmp_path):
    s, sink, f = caught_up(tmp_path)
    sink.acks.clear()
    for i in range(30):
        put_many(f, [rec(EVENT, i)])
        f.kick()
    wait_for(lambda: len(sink.got) == 31)
    sink.down.set()  # the connection is lost with 30 events in flight
    for i in range(30, 40):
        put_many(f, [rec(EVENT, i)])
        f.kick()
    wait_for(lambda: f.failures >= 1)  # the lane saw the loss
    sink.down.clear()
    sink.acks.set()
    wait_for(lambda: s.depth("a") == 0)
    f.stop(drain_timeout=1)
    firsts = list(dict.fromkeys(sink.got))  # sent again after the loss: same ids
    assert firsts == ["event--1"] + [f"event-{i}" for i in range(40)]


class RefusingSink(RecordingSink):
    """Raises ValueError (not a connection error) for the ids in ``refuse``."""

    def __init__(self, refuse: set[str]) -> None:
        super().__init__()
        self.refuse = refuse
        self.refusals = 0

    def write_many(self, records) -> None:
        bad = [r.id for r in records if r.id in self.refuse or "*" in self.refuse]
        if bad:
            self.refusals += 1
            raise ValueError(f"cannot take {bad}")
        super().write_many(records)


def test_a_record_the_sink_refuses_on_its_own_is_moved_aside_and_the_lane_goes_on(tmp_path):
    """Before, the batch was retried every second for ever and nothing behind it left."""
    s = Spool(tmp_path / "s.db")
    sink = RefusingSink({"summary-3"})
    f = Forwarder("a", sink, s, batch=4, rate=1e6)
    f.start()
    put_many(f, [rec(SUMMARY, i) for i in range(10)])
    wait_for(lambda: s.depth("a") == 0 and len(sink.got) == 9)
    f.stop(drain_timeout=1)
    assert sink.got == [f"summary-{i}" for i in range(10) if i != 3]
    assert f.moved_aside == 1 and s.stats()["moved_aside"] == 1
    with sqlite3.connect(tmp_path / "s.db") as db:
        rows = db.execute("SELECT sink, reason, body FROM moved_aside").fetchall()
    assert len(rows) == 1 and rows[0][0] == "a" and "ValueError" in rows[0][1]
    assert b"summary-3" in rows[0][2]


def test_a_sink_that_refuses_everything_keeps_the_rows_and_backs_off(tmp_path):
    """Nothing is moved aside when the sink takes no record at all: it is the sink that is
    broken. Once it takes records again, all of them go out, in order."""
    s = Spool(tmp_path / "s.db")
    sink = RefusingSink({"*"})
    f = Forwarder("a", sink, s, batch=4, rate=1e6)
    f.start()
    put_many(f, [rec(SUMMARY, i) for i in range(6)])
    # four failures of the first 4 rows: 1 + 1 batch refusals, then from the third on the
    # batch and each of its rows alone (5 each). The sink is mended only after the fourth
    # one-by-one pass has ended (the lane waits out its backoff then): mended during a
    # pass, it would take some rows and the refused one would rightly be moved aside.
    wait_for(lambda: sink.refusals >= 12, timeout=30)
    assert f.errors >= 4 and s.depth("a") == 6 and f.moved_aside == 0
    sink.refuse = set()
    wait_for(lambda: s.depth("a") == 0, timeout=70)
    f.stop(drain_timeout=1)
    assert sink.got == [f"summary-{i}" for i in range(6)]
    assert f.errors == 0


def test_kick_logs_what_it_could_not_publish(tmp_path):
    s = Spool(tmp_path / "s.db")
    sink = PipeliningSink()

    def refuse(records):
        raise ValueError("no topic for this record")

    sink.publish_many = refuse
    f = Forwarder("a", sink, s, batch=16, rate=1e6)  # lanes not started: kick alone
    f.live.caught_up = True
    f.put([rec(EVENT, 0)])
    with structlog.testing.capture_logs() as logs:
        f.kick()
    assert [e["event"] for e in logs] == ["sink_publish_failed"]
    assert "ValueError: no topic" in logs[0]["error"]
    assert not f.live.caught_up  # the lane replays it from the spool
    s.close()
