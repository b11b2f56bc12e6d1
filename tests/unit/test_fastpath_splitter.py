"""The PUBLISH splitter against packets built by paho's own encoder, cut at every offset,
and the splitting socket's read coalescing over a real socket pair."""

from __future__ import annotations

import select
import socket
import threading
import time

import pytest

from agent.fastpath import ProtocolError, PublishSplitter, SplittingSocket


def varint(n: int) -> bytes:
    out = b""
    while True:
        d, n = n % 128, n // 128
        out += bytes([d | 128 if n else d])
        if not n:
            return out


def publish(topic: str, payload: bytes, qos: int = 0, mid: int = 0, props: bytes | None = None):
    t = topic.encode()
    body = len(t).to_bytes(2, "big") + t
    if qos:
        body += mid.to_bytes(2, "big")
    if props is not None:
        body += varint(len(props)) + props
    body += payload
    return bytes([0x30 | qos << 1]) + varint(len(body)) + body


PINGRESP = b"\xd0\x00"
SUBACK = b"\x90\x03\x00\x01\x00"


def split(stream: bytes, step: int, v5: bool = False):
    s = PublishSplitter(v5)
    msgs, acks, other = [], [], b""
    for i in range(0, len(stream), step):
        m, a, o = s.feed(stream[i : i + step], 1.0)
        msgs += m
        acks += a
        other += o
    return msgs, acks, other


@pytest.mark.parametrize("v5", [False, True])
def test_every_cut_gives_the_same_packets(v5):
    """Packets split across reads at any byte: same messages, acks and control bytes."""
    props = b"\x01\x01" if v5 else None  # payload format indicator
    stream = (
        publish("plant/l1/d1/telemetry", b'{"v": [1]}', props=props)
        + PINGRESP
        + publish("t/ü", b"x" * 300, qos=1, mid=513, props=props)
        + SUBACK
        + publish("e", b"", props=props)
    )
    want = [("plant/l1/d1/telemetry", b'{"v": [1]}'), ("t/ü", b"x" * 300), ("e", b"")]
    for step in range(1, len(stream) + 1):
        msgs, acks, other = split(stream, step, v5)
        assert [(m.topic, m.payload) for m in msgs] == want, step
        assert acks == [513] and other == PINGRESP + SUBACK, step


def test_large_payload_over_many_reads():
    big = bytes(range(256)) * 1024  # 256 KiB: a 3-byte remaining length
    msgs, _, _ = split(publish("big", big) + publish("small", b"s"), 65536)
    assert [m.payload for m in msgs] == [big, b"s"]


def test_garbage_length_is_a_protocol_error():
    with pytest.raises(ProtocolError):
        PublishSplitter(False).feed(b"\x30\xff\xff\xff\xff\x01", 0.0)


class Reader:
    """A SplittingSocket over one end of a socket pair, read the way paho reads it."""

    def __init__(self, coalesce: float) -> None:
        self.peer, mine = socket.socketpair()
        mine.setblocking(False)
        self.got: list[bytes] = []
        self.reads = 0  # reads that delivered messages
        self.want_write = False
        self.sock = SplittingSocket(
            mine, False, self._on_publish, coalesce, lambda: self.want_write
        )

    def _on_publish(self, msgs, acks) -> None:
        self.reads += 1
        self.got.extend(m.payload for m in msgs)

    def send(self, n: int, tag: str = "m") -> None:
        self.peer.sendall(b"".join(publish("t", f"{tag}{i}".encode()) for i in range(n)))

    def read(self) -> None:
        """What paho's loop does when select() says readable: recv until BlockingIOError."""
        with pytest.raises(BlockingIOError):
            self.sock.recv(1)

    def close(self) -> None:
        self.peer.close()
        self.sock.close()


def stream(coalesce: float) -> Reader:
    """10,000 messages/s for 0.4 s (20 every 2 ms) from a thread, read like paho reads."""
    r = Reader(coalesce)

    def send() -> None:
        for _ in range(200):
            r.send(20)
            time.sleep(0.002)

    sender = threading.Thread(target=send)
    sender.start()
    while sender.is_alive() or select.select([r.sock], [], [], 0.1)[0]:
        if select.select([r.sock], [], [], 0.05)[0]:
            r.read()
    r.close()
    return r


def test_a_busy_stream_is_read_in_fewer_larger_chunks():
    """Above BUSY_RATE the reader waits before each read: the same messages, in order, in
    far fewer reads (each of paho's wake-ups and the worker's costs ~100 us of Python)."""
    plain, coalesced = stream(0.0), stream(0.05)
    want = [f"m{i}".encode() for i in range(20)] * 200
    assert plain.got == want and coalesced.got == want
    assert coalesced.reads * 3 < plain.reads, (coalesced.reads, plain.reads)


def test_a_drained_socket_ends_the_busy_state():
    r = Reader(coalesce=0.01)
    try:
        r.sock.busy = True
        r.send(5)
        r.read()  # waits, reads the 5, waits again, finds nothing
        assert r.got == [f"m{i}".encode() for i in range(5)]
        assert not r.sock.busy
    finally:
        r.close()


def test_a_busy_reader_lets_paho_send_first_then_reads():
    """Packets to send (PUBACKs, PINGREQ): the loop goes back to paho unread, at most twice
    in a row, so a send that cannot complete never stops the reading."""
    r = Reader(coalesce=0.01)
    try:
        r.sock.busy = True
        r.want_write = True
        r.send(3)
        r.read()
        r.read()
        assert r.got == []
        r.read()
        assert r.got == [b"m0", b"m1", b"m2"]
    finally:
        r.close()


def test_long_topics_are_split_but_not_cached():
    """The splitter's topic cache is bounded by bytes: a 30 KB topic is decoded each time."""
    long_topic = "t/" + "x" * 30_000
    s = PublishSplitter(False)
    msgs, _, _ = s.feed(publish(long_topic, b"a") + publish("t/short", b"b"), 1.0)
    assert [m.topic for m in msgs] == [long_topic, "t/short"]
    assert list(s._topics) == [b"t/short"]
