"""The MQTT source over a real mosquitto, fast path and stock paho alike."""

from __future__ import annotations

import time

import pytest

from agent.config import BrokerConfig, SourceConfig
from agent.testing.mosquitto import Mosquitto
from agent.transport.intake import Intake
from agent.transport.source import MqttSource
from tests.support.mqtt import client
from tests.support.waiting import until

pytestmark = pytest.mark.mosquitto

PATHS = [pytest.param(True, id="fast"), pytest.param(False, id="stock")]


def start_source(port, fast, *, qos=0, protocol="5", clean=True, cid=None, keepalive=30):
    broker = BrokerConfig(
        port=port,
        protocol=protocol,
        clean_start=clean,
        keepalive=keepalive,
        reconnect_min=0.1,
        reconnect_max=0.5,
    )
    cfg = SourceConfig(broker="b", topics=["src/#"], qos=qos, fast_path=fast)
    intake = Intake(100_000)
    src = MqttSource("b", broker, cfg, intake, cid or f"src-{time.monotonic_ns()}")
    subscribed = []
    src.conn.client.on_subscribe = lambda *a: subscribed.append(1)
    src.start()
    wait(lambda: subscribed, "subscription")
    assert src.conn.fast == fast
    return src, intake, subscribed


def wait(pred, what, timeout=20.0):
    assert until(pred, timeout, 0.02), f"timed out waiting for {what}"


def drain(intake, n, timeout=20.0):
    """At least ``n`` messages from ``intake`` (fewer if they do not come in time)."""
    got = []

    def enough() -> bool:
        got.extend(intake.drain(10_000))
        return len(got) >= n

    until(enough, timeout, 0.01)
    return got


@pytest.mark.parametrize("fast", PATHS)
@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
@pytest.mark.parametrize("qos", [0, 1])
def test_every_message_arrives_intact(broker, fast, protocol, qos):
    """Small and large payloads, QoS 0 and 1, MQTT 3.1.1 and 5: all, in order, unchanged."""
    src, intake, _ = start_source(broker.port, fast, qos=qos, protocol=protocol)
    pub = client(broker.port, "p")
    payloads = [f"m{i}".encode() * (i % 7) for i in range(2000)]
    payloads[100] = bytes(range(256)) * 400  # 100 KiB, many socket reads
    infos = [pub.publish(f"src/d{i % 13}", p, qos=qos) for i, p in enumerate(payloads)]
    for info in infos:
        info.wait_for_publish(10)
    got = drain(intake, len(payloads))
    src.stop()
    pub.disconnect()
    assert [m.payload for m in got] == payloads
    assert [m.topic for m in got] == [f"src/d{i % 13}" for i in range(len(payloads))]


@pytest.mark.parametrize("fast", PATHS)
def test_qos1_messages_are_acknowledged(tmp_path, fast):
    """After a clean disconnect, a persistent session has nothing left to redeliver."""
    with Mosquitto(workdir=tmp_path) as b:
        src, intake, _ = start_source(b.port, fast, qos=1, clean=False, cid="ack-test")
        pub = client(b.port, "p")
        for i in range(300):
            pub.publish("src/x", str(i).encode(), qos=1).wait_for_publish(10)
        done = drain(intake, 300)
        assert len(done) == 300
        src.acknowledge(done)  # a persistent QoS 1 session acknowledges processed messages
        src.stop()
        src2, intake2, _ = start_source(b.port, fast, qos=1, clean=False, cid="ack-test")
        pub.publish("src/marker", b"end", qos=1).wait_for_publish(10)
        # anything redelivered would come before the marker: the session's backlog first
        got = drain(intake2, 1)
        src2.stop()
        pub.disconnect()
        assert [m.payload for m in got] == [b"end"]


def one_through(port: int, src, intake, topic: str, payload: bytes) -> list[bytes]:
    """Publish one message (QoS 1) and return the payloads the source took in; stops it."""
    pub = client(port, "p")
    pub.publish(topic, payload, qos=1).wait_for_publish(10)
    got = drain(intake, 1)
    src.stop()
    pub.disconnect()
    return [m.payload for m in got]


@pytest.mark.parametrize("fast", PATHS)
def test_reconnects_and_resubscribes_after_broker_restart(tmp_path, fast):
    with Mosquitto(workdir=tmp_path) as b:
        src, intake, subscribed = start_source(b.port, fast)
        b.restart()
        wait(lambda: len(subscribed) >= 2, "resubscription after restart")
        assert one_through(b.port, src, intake, "src/after", b"1") == [b"1"]
        assert src.conn.connects == 2


@pytest.mark.slow
@pytest.mark.parametrize("fast", PATHS)
def test_keepalive_holds_an_idle_connection(broker, fast):
    """Idle for over two keepalive periods: pings answered, no reconnect, still receiving."""
    src, intake, _ = start_source(broker.port, fast, keepalive=5)
    pings: list[str] = []
    src.conn.client.on_log = lambda c, u, level, buf: (
        buf.startswith("Received PINGRESP") and (pings.append(buf))
    )
    wait(lambda: len(pings) >= 2, "two keepalive periods with PINGRESPs", timeout=30)
    assert one_through(broker.port, src, intake, "src/late", b"still here") == [b"still here"]
    assert src.conn.connects == 1
