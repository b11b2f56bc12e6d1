"""A sink's lanes sleep until there is work (issue 21): idle lanes do not poll, the event
lane waits for a PUBACK without a 5-ms poll and still sees a lost connection at once, and a
round of summaries wakes its thread once per several summaries. Real mosquitto, spool and
paho; the counts are voluntary context switches (each one a sleep that ended)."""

from __future__ import annotations

import signal
import threading
import uuid

import pytest

from agent.config import BrokerConfig
from agent.outbox.forwarding import Forwarder
from agent.outbox.spool import Spool
from agent.records import EVENT, SUMMARY, Record
from agent.sinks.mqtt import MqttSink, MqttSinkConfig
from agent.testing.mosquitto import Mosquitto
from agent.transport.mqtt import Connection
from tests.support.mqtt import Collector
from tests.support.waiting import sleeps, until

pytestmark = pytest.mark.mosquitto


def timer_intervals(n: int, each: float) -> None:
    """Let ``n`` timer expiries of ``each`` s pass (a poll that often would have woken)."""
    done = threading.Event()
    for _ in range(n):
        done.wait(each)


def rec(kind: str, i: int) -> Record:
    return Record(kind, "p", f"d{i % 3}", {"i": i}, f"{kind}-{i}")


def sink_on(port: int, prefix: str, ack_timeout: float = 10) -> tuple[Connection, MqttSink]:
    conn = Connection("up", BrokerConfig(port=port), f"t-{prefix}")
    context = type("Context", (), {"connection": lambda self, name: conn})()
    config = MqttSinkConfig(
        type="mqtt",
        broker="up",
        events=f"{prefix}/e/{{device}}",
        summaries=f"{prefix}/s/{{device}}",
        ack_timeout=ack_timeout,
    )
    conn.start()
    assert conn.connected.wait(10), "sink connection not up"
    return conn, MqttSink(config, context)


def forwarder(tmp_path, sink: MqttSink) -> Forwarder:
    f = Forwarder("up", sink, Spool(tmp_path / "s.db"), batch=64, rate=1e6)
    f.start()
    return f


def deliver(f: Forwarder, records: list[Record]) -> None:
    """As a worker does: spool, kick; then until the spool has none of them left."""
    f.spool.wait(f.put(records))
    f.kick()
    assert until(lambda: f.spool.depth("up") == 0, 15), "not delivered"


def test_idle_lanes_do_not_wake(broker, tmp_path):
    conn, sink = sink_on(broker.port, f"l{uuid.uuid4().hex[:6]}")
    f = forwarder(tmp_path, sink)
    try:
        deliver(f, [rec(EVENT, 0), rec(SUMMARY, 1)])  # both lanes caught up
        before = [sleeps(t.native_id) for t in f._threads]
        timer_intervals(25, 0.1)  # 2.5 s or more: a 1-s idle poll wakes each lane twice
        woke = sum(sleeps(t.native_id) for t in f._threads) - sum(before)
        assert woke <= 1  # at most the end of a round still running at the first count
    finally:
        f.stop(drain_timeout=1)
        conn.stop()


def test_the_event_lane_sleeps_until_the_puback_and_sees_a_lost_connection(tmp_path):
    """While the broker holds an event's PUBACK (the broker stopped) the event lane sleeps
    (a 5-ms poll woke it ~100 times in 0.5 s) and the row stays in the spool; the PUBACK
    wakes it to delete the row, and a connection lost with an event in flight is seen long
    before the acknowledgement deadline (30 s here)."""
    (tmp_path / "mosq").mkdir()
    with Mosquitto(workdir=tmp_path / "mosq", persistence=False) as mosq:
        prefix = f"l{uuid.uuid4().hex[:6]}"
        conn, sink = sink_on(mosq.port, prefix, ack_timeout=30)
        f = forwarder(tmp_path, sink)
        try:
            deliver(f, [rec(EVENT, 0)])
            assert f.live is not None and f.live.caught_up
            lane = f._threads[0]
            mosq.proc.send_signal(signal.SIGSTOP)
            try:
                f.spool.wait(f.put([rec(EVENT, 1)]))
                f.kick()
                assert until(lambda: f.live.inflight, 10), "not published"
                before = sleeps(lane.native_id)
                timer_intervals(10, 0.05)
                assert sleeps(lane.native_id) - before <= 2  # the end of the round that published
                assert f.spool.depth("up") == 1  # no PUBACK yet: the row stays
            finally:
                mosq.proc.send_signal(signal.SIGCONT)
            assert until(lambda: f.spool.depth("up") == 0, 10), "the PUBACK did not settle it"

            mosq.proc.send_signal(signal.SIGSTOP)
            f.spool.wait(f.put([rec(EVENT, 2)]))
            f.kick()
            assert until(lambda: f.live.inflight, 10), "not published"
            mosq.proc.kill()  # the connection is reset with the event in flight
            mosq.proc.send_signal(signal.SIGCONT)
            assert until(lambda: f.failures >= 1, 10), "the lost connection went unnoticed"
            assert f.spool.depth("up") == 1  # undelivered: it stays for the next connection
        finally:
            f.stop(drain_timeout=1)
            conn.stop()


def test_a_round_of_summaries_wakes_its_thread_once_per_several(broker):
    """A live round of 240 summaries is acknowledged in a few waits (one summary in flight
    at a time woke the lane at least once per summary), and arrives in order."""
    prefix = f"l{uuid.uuid4().hex[:6]}"
    conn, sink = sink_on(broker.port, prefix)
    records = [rec(SUMMARY, i) for i in range(240)]
    try:
        sink.write_many(records[:1])  # the connection warmed up
        before = sleeps(threading.get_native_id())
        sink.write_many(records[1:])
        woke = sleeps(threading.get_native_id()) - before
        # one summary in flight at a time: a sleep per summary at least (1.2 measured); the
        # window: a wait per 6 summaries, plus handoffs of the GIL with paho's network thread
        # (0.35-0.42 per summary together, measured)
        assert woke < 0.75 * len(records)
        collector = Collector(broker.port, [f"{prefix}/s/#"])  # its thread not in the count
        try:
            sink.write_many(records)
            assert collector.wait_for(lambda: len(collector.of(prefix)) == len(records), 15)
            assert [m["id"] for m in collector.of(prefix)] == [r.id for r in records]
        finally:
            collector.close()
    finally:
        conn.stop()
