"""The PUBLISH splitter against packets built by paho's own encoder, cut at every offset."""

from __future__ import annotations

import pytest

from agent.fastpath import ProtocolError, PublishSplitter


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
