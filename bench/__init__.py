"""W1 end-to-end benchmark (``python -m bench.w1``; docs/performance.md).

Each part runs as its own process: a private mosquitto (:mod:`bench.broker`), the load generator
(:mod:`bench.loadgen`), the collector (:mod:`bench.collector`) and the processors under test (the
agent, :mod:`bench.naive_agent`, :mod:`bench.paho_counter`). This module holds the MQTT setup they
share.
"""

from __future__ import annotations

import socket

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
