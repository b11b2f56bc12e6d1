"""The PUBLISH splitter against paho: random packet streams encoded by paho, cut at random
read boundaries, must give what a stock paho client parses from the same bytes; malformed
and unexpected packets go to paho unchanged and never raise. Then the splitting socket's
reads over a real socket pair, and a FastClient that meets bad packets from a peer."""

from __future__ import annotations

import select
import socket
import threading
import time
import uuid

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from agent.transport.fastpath import FastClient, PublishSplitter, SplittingSocket
from tests.support.rawbroker import Peer, paho_encoded, paho_parsed
from tests.support.waiting import until


def varint(n: int) -> bytes:
    out = b""
    while True:
        d, n = n % 128, n // 128
        out += bytes([d | 128 if n else d])
        if not n:
            return out


def publish(topic: str, payload: bytes, qos: int = 0, mid: int = 0, props: bytes | None = None):
    """A PUBLISH by the spec's layout, for the packets paho will not encode (QoS 2, bad ones)."""
    t = topic.encode()
    body = len(t).to_bytes(2, "big") + t
    if qos:
        body += mid.to_bytes(2, "big")
    if props is not None:
        body += varint(len(props)) + props
    body += payload
    return bytes([0x30 | qos << 1]) + varint(len(body)) + body


PINGRESP = b"\xd0\x00"


def split_at(stream: bytes, cuts: list[int], v5: bool = False):
    """Feed ``stream`` in reads ending at ``cuts`` (then the rest)."""
    s = PublishSplitter(v5)
    msgs, acks, other = [], [], b""
    bounds = [*sorted({c for c in cuts if 0 < c < len(stream)}), len(stream)]
    prev = 0
    for b in bounds:
        m, a, o = s.feed(stream[prev:b], 1.0)
        msgs += m
        acks += a
        other += o
        prev = b
    return msgs, acks, other


def split(stream: bytes, step: int, v5: bool = False):
    return split_at(stream, list(range(step, len(stream), step)), v5)


topics = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="+#\x00"),
    min_size=1,
    max_size=40,
)
publishes = st.tuples(
    topics,
    st.binary(max_size=300)  # below: over 16 KiB, a 3-byte remaining length
    | st.builds(
        lambda unit, n: unit * n, st.binary(min_size=8, max_size=8), st.integers(2100, 3000)
    ),
    st.sampled_from([0, 1]),
    st.none()
    | st.text(
        st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20
    ),
)  # MQTT strings may not hold U+0000: paho encodes one, but parses it as malformed
packets = st.lists(publishes | st.integers(1, 65535), min_size=1, max_size=10)


@pytest.mark.parametrize("v5", [False, True])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(packets=packets, cuts=st.lists(st.integers(1, 50_000), max_size=20))
def test_random_streams_split_anywhere_give_what_paho_parses(v5, packets, cuts):
    """paho encodes PUBLISHes (QoS 0/1, v5 with properties) and PUBACKs; the splitter,
    fed the bytes in reads cut anywhere, gives the messages and packet ids a stock paho
    client parses from the same bytes, and exactly the PUBACKs' bytes (paho's encoding of
    them alone) for paho."""
    stream = paho_encoded(packets, v5)
    msgs, acks, other = split_at(stream, cuts, v5)
    parsed = paho_parsed(stream, v5)
    assert [(m.topic, m.payload) for m in msgs] == [(t, p) for t, p, _, _ in parsed]
    assert acks == [mid for _, _, qos, mid in parsed if qos == 1]
    assert other == paho_encoded([p for p in packets if isinstance(p, int)], v5)
    assert [(m.topic, m.payload) for m in msgs] == [
        (p[0], p[1]) for p in packets if not isinstance(p, int)
    ]


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=600),
    cuts=st.lists(st.integers(1, 600), max_size=10),
    v5=st.booleans(),
)
def test_arbitrary_bytes_never_raise(data, cuts, v5):
    """Whatever the broker sends: no exception, no byte handed to paho twice, and nothing
    kept back once the stream could not be framed."""
    s = PublishSplitter(v5)
    given_to_paho = b""
    prev = 0
    for b in [*sorted({c for c in cuts if c < len(data)}), len(data)]:
        _msgs, _acks, other = s.feed(data[prev:b], 0.0)
        given_to_paho += other
        prev = b
    assert len(given_to_paho) + len(s._buf) <= len(data)
    if s.passthrough:
        assert s._buf == b""


def test_large_payload_over_many_reads():
    big = bytes(range(256)) * 1024  # 256 KiB: a 3-byte remaining length
    msgs, _, _ = split(publish("big", big) + publish("small", b"s"), 65536)
    assert [m.payload for m in msgs] == [big, b"s"]


GOOD = publish("ok", b"good")
MALFORMED = {
    "remaining length 0": b"\x30\x00",
    "no room for the topic length": b"\x30\x01\x00",
    "topic length beyond the packet": b"\x30\x04\x00\x09ab",
    "empty topic (3.1.1)": b"\x30\x03\x00\x00x",
    "QoS 1 without its packet id": b"\x32\x04\x00\x02ab",
    "QoS 3": b"\x36\x06\x00\x01t\x00\x01p",
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_a_malformed_publish_goes_to_paho_whole_and_the_next_one_is_read(name):
    """The bad packet's bytes, exactly, for paho (which finds it malformed and drops the
    connection), read from no byte of the packet after it."""
    bad = MALFORMED[name]
    for step in range(1, len(bad + GOOD) + 1):
        msgs, acks, other = split(bad + GOOD, step)
        assert other == bad, (name, step)
        assert [(m.topic, m.payload) for m in msgs] == [("ok", b"good")] and acks == []


def test_v5_properties_beyond_the_packet_go_to_paho():
    bad = b"\x30\x05\x00\x01t\x09x"  # property length 9 in a packet with 1 byte left
    msgs, _, other = split(bad + publish("ok", b"good", props=b""), 1, v5=True)
    assert other == bad and [m.payload for m in msgs] == [b"good"]


def test_a_qos2_publish_goes_to_paho_and_is_not_acknowledged_as_qos1():
    """paho runs the PUBREC/PUBREL exchange a QoS 2 message needs, then delivers it."""
    q2 = publish("t", b"exactly once", qos=2, mid=77)
    msgs, acks, other = split(q2 + GOOD, 3)
    assert other == q2 and acks == [] and [m.payload for m in msgs] == [b"good"]


def test_an_unframeable_stream_goes_to_paho_from_there_on():
    """A remaining length over 4 bytes: no exception; that packet and all that follows,
    in later reads too, go to paho, which reads the same header and disconnects."""
    s = PublishSplitter(False)
    garbage = b"\x30\xff\xff\xff\xff\x01"
    msgs, _, other = s.feed(GOOD + garbage, 0.0)
    assert [m.payload for m in msgs] == [b"good"] and other == garbage
    assert s.feed(GOOD, 0.0) == ([], [], GOOD)


def fast_client(port: int, on_message) -> tuple[mqtt.Client, list]:
    got: list = []
    c = FastClient(
        CallbackAPIVersion.VERSION2,
        on_publish=lambda msgs, acks, waited: got.extend(m.payload for m in msgs),
        client_id=f"fast-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv311,
    )
    c.on_message = on_message
    c.reconnect_delay_set(0.05, 0.1)
    c.connect("127.0.0.1", port, 60)
    c.loop_start()
    return c, got


@pytest.mark.parametrize("bad", [b"\x30\xff\xff\xff\xff\x01", b"\x30\x00"])
def test_bad_packets_from_the_broker_do_not_kill_pahos_network_thread(bad):
    """paho drops the connection as a protocol error and reconnects; the message before
    the bad packet was delivered."""
    peer = Peer()
    peer.serve(False, GOOD + bad, connections=2)
    c, got = fast_client(peer.port, None)
    try:
        assert until(lambda: peer.connects == 2, 10), "no reconnect: the network thread died"
        assert got[:1] == [b"good"]
    finally:
        c.disconnect()
        c.loop_stop()
        peer.close()


def test_a_qos2_message_reaches_pahos_own_path():
    peer = Peer()
    peer.serve(False, publish("t", b"q2", qos=2, mid=5) + b"\x62\x02\x00\x05")  # + PUBREL
    seen = threading.Event()
    c, got = fast_client(peer.port, lambda _c, _u, m: seen.set() if m.payload == b"q2" else None)
    try:
        assert seen.wait(10), "the QoS 2 message was not delivered by paho"
        assert got == []
        assert until(lambda: b"\x50\x02\x00\x05" in peer.received, 10), "no PUBREC sent"
    finally:
        c.disconnect()
        c.loop_stop()
        peer.close()


class Reader:
    """A SplittingSocket over one end of a socket pair, read the way paho reads it."""

    def __init__(self, budget: float) -> None:
        self.peer, mine = socket.socketpair()
        mine.setblocking(False)
        self.got: list[bytes] = []
        self.reads = 0  # reads that delivered messages
        self.want_write = False
        self.sock = SplittingSocket(mine, False, self._on_publish, budget, lambda: self.want_write)
        self.waited: list[bool] = []  # per read: whether it waited the budget

    def _on_publish(self, msgs, acks, waited) -> None:
        self.reads += 1
        self.got.extend(m.payload for m in msgs)
        self.waited.append(waited)

    def send(self, n: int, tag: str = "m") -> None:
        self.peer.sendall(b"".join(publish("t", f"{tag}{i}".encode()) for i in range(n)))

    def read(self) -> None:
        """What paho's loop does when select() says readable: recv until BlockingIOError."""
        with pytest.raises(BlockingIOError):
            self.sock.recv(1)

    def close(self) -> None:
        self.peer.close()
        self.sock.close()


def stream(budget: float, each: int = 20, sends: int = 200) -> Reader:
    """``each`` messages every 2 ms (default 10,000 messages/s for 0.4 s) from a thread,
    read like paho reads."""
    r = Reader(budget)

    def send() -> None:
        for _ in range(sends):
            r.send(each)
            time.sleep(0.002)

    sender = threading.Thread(target=send)
    sender.start()
    while sender.is_alive() or select.select([r.sock], [], [], 0.1)[0]:
        if select.select([r.sock], [], [], 0.05)[0]:
            r.read()
    r.close()
    return r


def test_a_busy_stream_coalesced_or_not_gives_every_message_in_order():
    """Reading with and without the coalescing wait: the same messages, in order. (How many
    fewer reads the wait makes depends on the machine's timing: a figure, measured in
    docs/performance.md, not a test.)"""
    want = [f"m{i}".encode() for i in range(20)] * 200
    for budget in (0.0, 0.05):
        r = stream(budget)
        assert r.got == want, budget
        # a dense stream for the budget: once measured busy, reads wait it and say so
        assert any(r.waited) == (budget > 0), budget


def test_a_stream_sparse_for_the_budget_is_read_at_once():
    """``GATHER_MIN`` (3) messages per budget or more make a stream dense (as the worker's
    intake counts it): one message every 2 ms or more (500/s at most) is read at once with
    a 4 ms budget (2 per budget), and waited for with a 20 ms budget (10 per budget; 3
    down to 150/s)."""
    for budget, dense in ((0.004, False), (0.020, True)):
        r = stream(budget, each=1, sends=100)  # >= 0.2 s: several rate windows
        assert r.got == [b"m0"] * 100, budget
        assert any(r.waited) == dense, budget


def test_a_drained_socket_ends_the_busy_state():
    r = Reader(budget=0.01)
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
    r = Reader(budget=0.01)
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
