"""A loopback peer that speaks just enough MQTT to hand a client raw bytes, or take its bytes.

For checking packet handling against paho itself: paho encodes what a client publishes
(:func:`paho_encoded`) and paho parses what a broker sends (:func:`paho_parsed`), with no
broker in between to normalise anything. Each runs one connection on a free port.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def connack(v5: bool) -> bytes:
    return b"\x20\x03\x00\x00\x00" if v5 else b"\x20\x02\x00\x00"


def suback(mid: int, v5: bool) -> bytes:
    """A SUBACK granting QoS 0; paho reports it through ``on_subscribe`` whatever its mid."""
    body = mid.to_bytes(2, "big") + (b"\x00" if v5 else b"") + b"\x00"
    return bytes([0x90, len(body)]) + body


def read_packet(conn: socket.socket) -> bytes:
    """One whole packet (the client's CONNECT), read byte by byte."""
    head = conn.recv(1)
    length, shift, raw = 0, 0, b""
    while True:
        b = conn.recv(1)[0]
        raw += bytes([b])
        length |= (b & 127) << shift
        shift += 7
        if b < 128:
            break
    body = b""
    while len(body) < length:
        body += conn.recv(length - len(body))
    return head + raw + body


class Peer:
    """Listens on a free loopback port; ``serve`` runs one connection in a thread."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.received = b""
        self.connects = 0

    def serve(self, v5: bool, send: bytes = b"", connections: int = 1) -> threading.Thread:
        """Answer each CONNECT with a CONNACK, send ``send``, keep what the client sends."""

        def run() -> None:
            for _ in range(connections):
                conn, _ = self.server.accept()
                with conn, contextlib.suppress(ConnectionError):  # a client may reset it
                    read_packet(conn)
                    self.connects += 1
                    conn.sendall(connack(v5) + send)
                    while chunk := conn.recv(65536):
                        self.received += chunk

        t = threading.Thread(target=run, daemon=True)
        t.start()
        return t

    def close(self) -> None:
        self.server.close()


def _client(v5: bool) -> mqtt.Client:
    c = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"raw-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
    )
    c.max_inflight_messages_set(0)  # no window: every PUBLISH goes out before DISCONNECT
    c.manual_ack_set(True)  # PUBACKs only where asked for
    return c


Packet = tuple[str, bytes, int, str | None] | int


def paho_encoded(packets: list[Packet], v5: bool) -> bytes:
    """The bytes paho sends for ``packets``, CONNECT and DISCONNECT cut off: a PUBLISH for
    each (topic, payload, qos, content type or None), a PUBACK for each packet id (int)."""
    peer = Peer()
    thread = peer.serve(v5)
    c = _client(v5)
    connected = threading.Event()
    c.on_connect = lambda *a: connected.set()
    c.connect("127.0.0.1", peer.port, 60)
    c.loop_start()
    try:
        assert connected.wait(10), "paho did not connect to the raw peer"
        for packet in packets:
            if isinstance(packet, int):
                c.ack(packet, 1)
                continue
            topic, payload, qos, content_type = packet
            props = None
            if v5 and content_type is not None:
                props = Properties(PacketTypes.PUBLISH)
                props.ContentType = content_type
            c.publish(topic, payload, qos=qos, properties=props)
        c.disconnect()  # queued after every PUBLISH: the peer reads them all before EOF
    finally:
        c.loop_stop()
        thread.join(10)
        peer.close()
    assert peer.received.endswith(b"\xe0\x00"), "no DISCONNECT at the end"
    return peer.received[:-2]


def paho_parsed(stream: bytes, v5: bool, timeout: float = 10) -> list[tuple[str, bytes, int, int]]:
    """What a stock paho client delivers through ``on_message`` for ``stream`` sent by a
    broker: (topic, payload, qos, packet id), in order. A SUBACK after it marks its end."""
    peer = Peer()
    thread = peer.serve(v5, stream + suback(0xFFFF, v5))
    c = _client(v5)
    got: list[tuple[str, bytes, int, int]] = []
    done = threading.Event()
    c.on_message = lambda _c, _u, m: got.append((m.topic, m.payload, m.qos, m.mid))
    c.on_subscribe = lambda *a: done.set()
    c.connect("127.0.0.1", peer.port, 60)
    c.loop_start()
    try:
        assert done.wait(timeout), "paho did not reach the end of the stream"
    finally:
        c.disconnect()
        c.loop_stop()
        thread.join(10)
        peer.close()
    return got
