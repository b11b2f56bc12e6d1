"""The bounded queue between the MQTT network thread and a pipeline's worker."""

from __future__ import annotations

import threading
from collections import deque

from agent.records import Message


class Intake:
    """Bounded FIFO with an overflow policy; every drop is counted (``dropped``).

    ``put`` runs in the network thread and does no more than append (and wake a sleeping
    worker). When full, ``drop_oldest`` discards the oldest queued message (the freshest
    data is kept), ``drop_newest`` the arriving one (the backlog is kept), and ``block``
    makes the network thread wait for room: nothing is dropped here, the socket stops
    being read and the backlog waits in the broker, within its own limits for a session's
    queue (beyond them the broker drops; a wait longer than 1.5 x keepalive ends the
    connection, and QoS 0 messages in flight are gone). A QoS 1
    source on a persistent session always blocks (:class:`~agent.transport.source.MqttSource`).
    """

    def __init__(self, bound: int, policy: str = "drop_oldest") -> None:
        self.bound = bound
        self.policy = policy
        self._q: deque[Message] = deque()
        self.received = 0
        self.dropped = 0
        self._sleeping = False
        self._wake = threading.Event()
        self._space = threading.Condition()
        self.closed = False

    def _dropped(self, msg: Message) -> None:
        self.dropped += 1

    def __len__(self) -> int:
        return len(self._q)

    def put(self, msg: Message) -> None:
        q = self._q
        self.received += 1
        if len(q) >= self.bound:
            if self.policy == "drop_newest":
                self._dropped(msg)
                return
            if self.policy == "drop_oldest":
                self._dropped(q.popleft())
            else:
                with self._space:
                    while len(q) >= self.bound and not self.closed:
                        self._space.wait(0.1)
        q.append(msg)
        if self._sleeping:
            self._wake.set()

    def put_many(self, msgs: list[Message]) -> None:
        """Enqueue a chunk of messages (the fast path's unit); same policies as :meth:`put`."""
        q = self._q
        room = self.bound - len(q)
        if len(msgs) > room:
            if self.policy == "block":
                for m in msgs:
                    self.put(m)
                return
            self.received += len(msgs)
            over = len(msgs) - max(room, 0)
            if self.policy == "drop_newest":
                for m in msgs[max(room, 0) :]:
                    self._dropped(m)
                msgs = msgs[: max(room, 0)]
            else:
                for _ in range(min(over, len(q))):
                    self._dropped(q.popleft())
                for m in msgs[: -self.bound]:
                    self._dropped(m)
                msgs = msgs[-self.bound :]
        else:
            self.received += len(msgs)
        q.extend(msgs)
        if self._sleeping:
            self._wake.set()

    def drain(self, limit: int) -> list[Message]:
        """Up to ``limit`` messages, oldest first."""
        q = self._q
        n = min(limit, len(q))
        out = [q.popleft() for _ in range(n)]
        if self.policy == "block" and n:
            with self._space:
                self._space.notify_all()
        return out

    def wait(self, timeout: float) -> None:
        """Sleep until a message arrives or ``timeout`` passes."""
        self._sleeping = True
        self._wake.clear()
        if not self._q:
            self._wake.wait(timeout)
        self._sleeping = False

    def wake(self) -> None:
        self._wake.set()

    def close(self) -> None:
        """Release a blocked producer (shutdown)."""
        self.closed = True
        with self._space:
            self._space.notify_all()
