"""Forwarders: every spooled record delivered once, events by the express queue when caught up,
and a backlog in order."""

from __future__ import annotations

import threading
import time

from agent.delivery import Forwarder
from agent.errors import NotConnectedError
from agent.records import EVENT, SUMMARY, Record
from agent.spool import Spool
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


def test_express_rows_are_handed_over_before_commit_and_skipped_by_take(tmp_path):
    s = Spool(tmp_path / "s.db")
    express = s.express("a")
    s.put_many("a", [rec(SUMMARY, 0), rec(EVENT, 1), rec(EVENT, 2)])
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


def test_every_record_delivered_once_while_events_take_the_express_queue(tmp_path):
    s = Spool(tmp_path / "s.db")
    sink = RecordingSink()
    f = Forwarder("a", sink, s, batch=64, rate=1e6)
    f.start()
    sent = []
    for i in range(300):
        batch = [rec(EVENT, i)] + ([rec(SUMMARY, i)] if i % 10 == 0 else [])
        s.put_many("a", batch)
        sent += [r.id for r in batch]
        if i % 50 == 0:
            time.sleep(0.02)
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
        s.put_many("a", [rec(EVENT, i)])
    time.sleep(0.3)  # the event lane has failed at least once: not caught up
    sink.down.clear()
    for i in range(100, 150):  # fresh events while the backlog drains
        s.put_many("a", [rec(EVENT, i)])
    wait_for(lambda: s.depth("a") == 0 and len(sink.got) >= 150)
    f.stop(drain_timeout=1)
    assert sink.got == [f"event-{i}" for i in range(150)]


def test_a_backlog_drains_at_no_more_than_the_replay_rate(tmp_path):
    """After an outage the spooled rows go out in order, at most ``rate`` per second: a lower
    bound the forwarder's own pauses guarantee, whatever the machine's speed."""
    s = Spool(tmp_path / "s.db")
    sink = RecordingSink()
    sink.down.set()
    calls: list[float] = []
    write = sink.write_many
    sink.write_many = lambda records: (write(records), calls.append(time.monotonic()))
    f = Forwarder("a", sink, s, batch=8, rate=40.0)
    f.start()
    s.put_many("a", [rec(SUMMARY, i) for i in range(40)])
    time.sleep(0.3)  # the lane has failed at least once: a backlog
    sink.down.clear()
    wait_for(lambda: len(sink.got) == 40)
    f.stop(drain_timeout=1)
    assert sink.got == [f"summary-{i}" for i in range(40)]
    assert len(calls) == 5  # five full batches of 8
    assert calls[-1] - calls[0] >= 4 * 8 / 40.0 * 0.95  # four paced gaps of 0.2 s


def test_live_records_are_not_paced_like_a_backlog(tmp_path):
    """replay_rate paces the drain of a backlog, never live records (10,000 devices' summaries
    each second would fall ever further behind)."""
    s = Spool(tmp_path / "s.db")
    sink = RecordingSink()
    f = Forwarder("a", sink, s, batch=8, rate=1.0)  # paced, 64 rows would take 64 s
    f.start()
    s.put_many("a", [rec(SUMMARY, 0)])
    wait_for(lambda: sink.got == ["summary-0"])  # the lane has caught up
    s.put_many("a", [rec(SUMMARY, i) for i in range(1, 65)])
    wait_for(lambda: len(sink.got) == 65, timeout=20)
    f.stop(drain_timeout=1)
    assert sink.got == [f"summary-{i}" for i in range(65)]


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
    s.put_many("a", [rec(EVENT, -1)])
    wait_for(lambda: s.depth("a") == 0 and f.live.caught_up)
    return s, sink, f


def test_pipelined_events_go_out_before_the_earlier_ones_are_acknowledged(tmp_path):
    s, sink, f = caught_up(tmp_path)
    sink.acks.clear()  # the broker holds its acknowledgements
    for i in range(40):
        s.put_many("a", [rec(EVENT, i)])
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
    s.express("a")  # registered, as a started event lane does
    s.submit("a", [rec(EVENT, 0)])
    f.kick()
    assert sink.got == []  # not caught up (as at start): the lane replays the spool first
    f.live.caught_up = True
    s.submit("a", [rec(EVENT, 1)])
    f.kick()
    assert sink.got == ["event-0", "event-1"]
    assert sink.threads == {threading.get_ident()}
    assert [r.id for _, r in f.live.inflight[0][0]] == ["event-0", "event-1"]


def test_failed_pipelined_deliveries_are_replayed_from_the_spool(tmp_path):
    s, sink, f = caught_up(tmp_path)
    sink.acks.clear()
    for i in range(30):
        s.put_many("a", [rec(EVENT, i)])
        f.kick()
    wait_for(lambda: len(sink.got) == 31)
    sink.down.set()  # the connection is lost with 30 events in flight
    for i in range(30, 40):
        s.put_many("a", [rec(EVENT, i)])
        f.kick()
    time.sleep(0.3)
    sink.down.clear()
    sink.acks.set()
    wait_for(lambda: s.depth("a") == 0)
    f.stop(drain_timeout=1)
    firsts = list(dict.fromkeys(sink.got))  # sent again after the loss: same ids
    assert firsts == ["event--1"] + [f"event-{i}" for i in range(40)]
