"""W1 end-to-end benchmark (``python -m bench.w1``; docs/performance.md).

Each part runs as its own process: a private mosquitto (:mod:`bench.broker`), the load generator
(:mod:`bench.loadgen`), the collector (:mod:`bench.collector`) and the processors under test (the
agent, :mod:`bench.naive_agent`, :mod:`bench.paho_counter`). This module holds the MQTT setup they
share.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt

HOST = "127.0.0.1"
TELEMETRY = "plant/line1/+/telemetry"


def mqtt_client(client_id: str) -> mqtt.Client:
    """A paho 2.x client (MQTT 3.1.1) allowing 1,000 QoS 1 publishes in flight (default 20)."""
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311
    )
    client.max_inflight_messages_set(1000)
    return client


def connect(client: mqtt.Client, port: int) -> None:
    """Connect to the bench broker with Nagle off (it holds small packets back ~20 ms)."""
    client.connect(HOST, port, keepalive=60)
    sock = client.socket()
    assert isinstance(sock, socket.socket)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def subscribe_until_stopped(
    client: mqtt.Client, port: int, qos: int, period: float, tick: Callable[[], None]
) -> None:
    """Connect ``client`` (callbacks set), subscribe to the W1 telemetry and call ``tick``
    every ``period`` s until SIGTERM or SIGINT; then unsubscribe (UNSUBACK awaited <= 10 s)."""
    unsubscribed, stop = threading.Event(), threading.Event()
    client.on_unsubscribe = lambda *_: unsubscribed.set()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    connect(client, port)
    client.subscribe(TELEMETRY, qos)
    client.loop_start()
    while not stop.wait(period):
        tick()
    client.unsubscribe(TELEMETRY)
    unsubscribed.wait(10)


def all_acked(acked: Callable[[], int], published: Callable[[], int], timeout: float = 10) -> bool:
    """Wait up to ``timeout`` s for every QoS 1 publish to be acknowledged."""
    deadline = time.monotonic() + timeout
    while acked() < published() and time.monotonic() < deadline:
        time.sleep(0.01)
    return acked() >= published()


def until(predicate: Callable[[], object], timeout: float, interval: float = 0.05) -> bool:
    """Whether ``predicate`` became true within ``timeout`` s (checked once more at the end)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
