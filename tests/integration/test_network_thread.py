"""An idle connection's paho network thread looks at its keepalive every quarter of it,
not every second (agent/transport/client.py), and the connection still stays up: its
PINGREQs reach the broker before 1.5 x keepalive. Real mosquitto and paho; the counts are
voluntary context switches (each one a sleep that ended)."""

from __future__ import annotations

import threading
import uuid

import pytest

from agent.config import BrokerConfig
from agent.transport.mqtt import Connection
from tests.support.waiting import sleeps, until

pytestmark = pytest.mark.mosquitto


def started(port: int, keepalive: int) -> Connection:
    conn = Connection("b", BrokerConfig(port=port, keepalive=keepalive), f"n-{uuid.uuid4().hex}")
    conn.start()
    assert conn.connected.wait(10), "no connection"
    return conn


def test_an_idle_network_thread_wakes_once_per_quarter_keepalive(broker):
    """keepalive 40 s: the thread waits 10 s in select(); over 4 s or more (40 timer
    expiries of 0.1 s) it wakes at most twice (paho's own loop: 4 times or more)."""
    conn = started(broker.port, 40)
    try:
        thread = conn.client._thread
        assert thread is not None
        before, done = sleeps(thread.native_id), threading.Event()
        for _ in range(40):
            done.wait(0.1)
        assert sleeps(thread.native_id) - before <= 2
    finally:
        conn.stop()


def test_the_keepalive_holds_with_the_longer_wait(broker):
    """keepalive 5 s (the least allowed): idle for 9 s, past mosquitto's 1.5 x keepalive
    (7.5 s) for a client that sent nothing, the connection is the same one."""
    conn = started(broker.port, 5)
    try:
        dropped = until(lambda: not conn.connected.is_set(), 9)
        assert not dropped, "the broker dropped the connection: a PINGREQ came late"
        assert conn.connects == 1
    finally:
        conn.stop()
