"""Fast intake: PUBLISH packets split from the socket's bytes in bulk, beside paho.

paho-mqtt keeps the connection, session, keepalive, TLS, reconnect and every control
packet. Stock paho spends Python per received message (header read byte by byte, an
MQTTMessage, callback matching); here the source reads its socket in 64 KiB chunks,
cuts PUBLISH packets out itself (MQTT 3.1.1 and 5, QoS 0 and 1) and hands every other
packet's bytes, and any it does not expect (see :class:`PublishSplitter`), to paho
unchanged, through the socket paho reads from. QoS 1 PUBLISHes are acknowledged through
paho's public manual-ack API (``Client.ack``).

On a stream dense enough that the batching budget (``source.max_delay``) brings
``GATHER_MIN`` messages or more, the reader waits the budget before each read, so a read,
and the worker's batch behind it, carries several messages instead of one, because a
wake-up of paho's loop and of the worker costs the same whatever it carries (figures:
docs/performance.md, issues 4 and 21). The worker takes such a read at once: the budget
is spent here, not twice.

paho has no public hook for this: :class:`FastClient` overrides ``Client._create_socket``.
It is tested with the paho versions in ``TESTED_PAHO``; with any other version, or with
``source.fast_path: false``, the source uses stock paho handling.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable

import paho.mqtt
import paho.mqtt.client as mqtt

from agent.records import Message
from agent.transport.client import Client
from agent.transport.intake import GATHER_MIN

TESTED_PAHO = ("2.2.0",)  # the version CI installs; tests/unit/test_fastpath_splitter.py
READ_SIZE = 65536
MAX_ROUNDS = 32  # bulk reads per recv() call before paho gets its loop back
RATE_WINDOW = 0.05  # s
CACHED_TOPIC_MAX = 256  # bytes: longer topics are not cached, so the cache is bounded by bytes

# (messages, QoS 1 packet ids to acknowledge, whether the read waited the budget for them)
PublishCallback = Callable[[list[Message], list[int], bool], None]


def available() -> bool:
    """True when the installed paho is one the splitter is tested with."""
    return paho.mqtt.__version__ in TESTED_PAHO and hasattr(mqtt.Client, "_create_socket")


class PublishSplitter:
    """Cuts complete MQTT packets out of a byte stream.

    ``feed`` returns the PUBLISH packets as messages (plus QoS 1 packet ids to acknowledge)
    and the bytes of every other packet, whole and in order. Partial packets wait for the
    next ``feed``. Anything it does not expect goes to paho unchanged, which has the last
    word on it: a QoS 2 PUBLISH (paho runs its PUBREC/PUBREL exchange and delivers it
    through ``on_message``), a PUBLISH whose lengths do not fit its packet (paho finds it
    malformed and drops the connection), and everything after a remaining length longer
    than 4 bytes (the stream can no longer be framed; so the splitter stays out of the
    rest of this connection). It never raises on what the broker sends.
    """

    def __init__(self, v5: bool) -> None:
        self.v5 = v5
        self._buf = bytearray()
        self._topics: dict[bytes, str] = {}
        self.passthrough = False  # the stream could not be framed: all of it goes to paho

    def feed(self, data: bytes, now: float) -> tuple[list[Message], list[int], bytes]:
        buf = self._buf
        buf += data
        if self.passthrough:
            out = bytes(buf)
            buf.clear()
            return [], [], out
        n = len(buf)
        off = 0
        msgs: list[Message] = []
        acks: list[int] = []
        other: list[bytes] = []
        while n - off >= 2:
            i = off + 1
            length = shift = 0
            complete = False
            while i < n and shift < 28:
                b = buf[i]
                i += 1
                length |= (b & 127) << shift
                if b < 128:
                    complete = True
                    break
                shift += 7
            if not complete:
                if shift >= 28:  # not MQTT: paho reads the same header and disconnects
                    self.passthrough = True
                    other.append(bytes(buf[off:]))
                    off = n
                break
            end = i + length
            if end > n:
                break
            head = buf[off]
            if (
                head & 0xF0 == 0x30
                and (msg := self._publish(buf, head, i, end, now, acks)) is not None
            ):
                msgs.append(msg)
            else:
                other.append(bytes(buf[off:end]))
            off = end
        if off:
            del buf[:off]
        return msgs, acks, b"".join(other)

    def _publish(
        self, buf: bytearray, head: int, i: int, end: int, now: float, acks: list[int]
    ) -> Message | None:
        """The message of a QoS 0/1 PUBLISH in ``buf[i:end]`` (its variable header and
        payload), or None when its fields do not fit in it (or QoS 2): paho's to handle."""
        qos = (head >> 1) & 3
        if qos > 1 or end - i < 2:
            return None
        tlen = (buf[i] << 8) | buf[i + 1]
        p = i + 2 + tlen
        if tlen == 0 or p + 2 * qos > end:  # an empty topic: malformed (3.1.1) or an alias (5)
            return None
        raw = bytes(buf[i + 2 : p])
        topic = self._topics.get(raw)
        if topic is None:
            topic = raw.decode("utf-8", "replace")
            if tlen <= CACHED_TOPIC_MAX:  # bounded by bytes too: long ones stay uncached
                if len(self._topics) > 100_000:
                    self._topics.clear()
                self._topics[raw] = topic
        mid = -1
        if qos:
            mid = (buf[p] << 8) | buf[p + 1]
            p += 2
        if self.v5:
            plen = shift = 0
            while True:
                if p >= end or shift >= 28:
                    return None
                b = buf[p]
                p += 1
                plen |= (b & 127) << shift
                shift += 7
                if b < 128:
                    break
            p += plen
            if p > end:
                return None
        if qos:
            acks.append(mid)
        return Message(topic, bytes(buf[p:end]), now, None, mid, bool(head & 0x08))


class SplittingSocket:
    """Wraps paho's socket: bulk reads, PUBLISH to ``on_publish``, the rest to paho.

    While busy (the stream brings ``GATHER_MIN`` messages within ``budget`` s) it sleeps
    ``budget`` s before a read, unless paho has packets to send (PUBACKs, PINGREQ): then
    it hands the loop back (twice at most) so paho sends them first. A read that finds
    nothing ends the busy state.
    """

    def __init__(
        self,
        sock,
        v5: bool,
        on_publish: PublishCallback,
        budget: float = 0.0,
        want_write: Callable[[], bool] = lambda: False,
    ) -> None:
        self._sock = sock
        self._splitter = PublishSplitter(v5)
        self._on_publish = on_publish
        self._out = b""
        self._ssl = isinstance(sock, ssl.SSLSocket)
        self._budget = budget
        self._want_write = want_write
        self.busy = False
        self._yields = 0  # loops handed back to paho in a row so it could send first
        self._since = time.monotonic()  # start of the current rate window
        self._count = 0  # messages in the current rate window

    def recv(self, bufsize: int) -> bytes:
        if not self._out:
            self._fill()
        out, self._out = self._out[:bufsize], self._out[bufsize:]
        return out

    def _fill(self) -> None:
        """Read until paho has bytes, the socket would block, or MAX_ROUNDS reads."""
        for _ in range(MAX_ROUNDS):
            waited = False
            if self.busy and self._budget:
                if not self._want_write():
                    self._yields = 0
                    time.sleep(self._budget)
                    waited = True
                elif self._yields < 2:
                    self._yields += 1
                    raise BlockingIOError
            try:
                data = self._sock.recv(READ_SIZE)
            except OSError:  # BlockingIOError / SSLWantReadError / a lost connection: to paho
                self.busy = False
                raise
            if not data:
                return  # closed: paho sees b"" and handles the lost connection
            msgs, acks, other = self._splitter.feed(data, time.time())
            self._measure(len(msgs))
            if msgs:
                self._on_publish(msgs, acks, waited)
            if other:
                self._out = other
                return
        raise BlockingIOError  # still readable: select() wakes paho again at once

    def _measure(self, n: int) -> None:
        """Count messages; at the end of each rate window decide whether the stream is busy:
        whether waiting the budget is expected to gather ``GATHER_MIN`` messages."""
        self._count += n
        now = time.monotonic()
        if now - self._since >= RATE_WINDOW:
            self.busy = self._count * self._budget >= GATHER_MIN * (now - self._since)
            self._since, self._count = now, 0

    def pending(self) -> int:
        inner = self._sock.pending() if self._ssl else 0
        return len(self._out) + inner

    def send(self, data: bytes) -> int:
        return self._sock.send(data)

    def __getattr__(self, name: str):
        return getattr(self._sock, name)


class FastClient(Client):
    """A paho client whose incoming PUBLISH packets bypass paho's per-packet handling."""

    def __init__(self, *args, on_publish: PublishCallback, budget: float = 0.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._fast_on_publish = on_publish
        self._fast_budget = budget
        self.manual_ack_set(True)  # paho never sees these PUBLISHes; we acknowledge them

    def _create_socket(self):
        sock = super()._create_socket()
        v5 = self._protocol == mqtt.MQTTv5
        return SplittingSocket(sock, v5, self._fast_on_publish, self._fast_budget, self.want_write)
