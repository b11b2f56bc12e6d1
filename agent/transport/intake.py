"""The bounded queue between the MQTT network thread and a pipeline's worker."""

from __future__ import annotations

import threading
import time
from collections import deque

from agent.records import Message

RATE_WINDOW = 0.05  # s over which the arrival rate is measured
# Messages expected within max_delay before a wait to gather them pays: a gathering read
# costs the reader's timed sleep and the worker's wake-up, where taking messages as they
# come costs a wake-up of each per message. With the default 2 ms budget, streams from
# 1,500 msg/s on are gathered; 1,000 msg/s keeps its latency (docs/performance.md).
GATHER_MIN = 3.0

# What the worker is doing, as the network thread sees it (read without a lock: a stale
# read costs one extra or one early wake-up, never a lost one; see Intake.wait_batch).
AWAKE, IDLE, GATHERING = 0, 1, 2


class Intake:
    """Bounded FIFO with an overflow policy; every drop is counted (``dropped``).

    ``put`` runs in the network thread and does no more than append, and wakes the worker
    only when a batch is due: the worker sleeps without a timeout while the intake is
    empty (the first message wakes it), and on a dense stream it sleeps until the oldest
    message has waited ``max_delay`` or ``due`` messages are queued, so messages arriving
    in between wake nobody (:meth:`wait_batch`). When full, ``drop_oldest`` discards the
    oldest queued message (the freshest data is kept), ``drop_newest`` the arriving one
    (the backlog is kept), and ``block`` makes the network thread wait for room: nothing
    is dropped here, the socket stops being read and the backlog waits in the broker,
    within its own limits for a session's queue (beyond them the broker drops; a wait
    longer than 1.5 x keepalive ends the connection, and QoS 0 messages in flight are
    gone). A QoS 1 source on a persistent session always blocks
    (:class:`~agent.transport.source.MqttSource`).
    """

    def __init__(
        self, bound: int, policy: str = "drop_oldest", max_delay: float = 0.0, due: int = 2048
    ) -> None:
        self.bound = bound
        self.policy = policy
        self.max_delay = max_delay  # s a message may wait for others to join its batch
        # this many queued messages make a batch at once (max_batch, and never more than
        # fit: a full intake must not wait for max_delay while it drops or blocks)
        self.due = min(due, bound)
        self._q: deque[Message] = deque()
        self.received = 0
        self.dropped = 0
        self.wakeups = 0  # times the worker slept and woke (the tests count them)
        self.state = AWAKE
        self._first = 0.0  # monotonic time the oldest queued message arrived in an empty queue
        self._wake = threading.Event()
        self._kicked = False  # wake() was called: the worker has flags to look at
        self._gathered = False  # what is queued already waited the budget (put_many due)
        self._space = threading.Condition()
        self._since = time.monotonic()  # start of the current rate window
        self._count = 0  # messages in the current rate window
        self.rate = 0.0  # messages/s over the last full window (0 once the stream stops)
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
        self._arrived(1, not q)
        q.append(msg)
        self._notify()

    def put_many(self, msgs: list[Message], due: bool = False) -> None:
        """Enqueue a chunk of messages (the fast path's unit); same policies as :meth:`put`.
        ``due``: the chunk already waited the budget (a coalesced read): the worker takes
        it at once instead of waiting ``max_delay`` again."""
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
        self._arrived(len(msgs), not q)
        q.extend(msgs)
        if due:
            self._gathered = True
        self._notify()

    def _arrived(self, n: int, first: bool) -> None:
        """Measure the arrival rate; note when a message enters an empty queue."""
        now = time.monotonic()
        if first:
            self._first = now
        self._count += n
        if now - self._since >= RATE_WINDOW:
            self.rate = self._count / (now - self._since)
            self._since, self._count = now, 0

    def _notify(self) -> None:
        """Wake the worker if a batch is due: it sleeps on an empty queue, or it gathers
        and the queue reached ``due`` or holds a read that waited the budget. Otherwise its
        own timer ends its wait."""
        state = self.state
        if state == IDLE or (state == GATHERING and (self._gathered or len(self._q) >= self.due)):
            self._wake.set()

    def drain(self, limit: int) -> list[Message]:
        """Up to ``limit`` messages, oldest first."""
        q = self._q
        n = min(limit, len(q))
        out = [q.popleft() for _ in range(n)]
        if not q:
            self._gathered = False
        if self.policy == "block" and n:
            with self._space:
                self._space.notify_all()
        return out

    def dense(self) -> bool:
        """Whether waiting ``max_delay`` is expected to gather ``GATHER_MIN`` messages or
        more: only then does a wait save wake-ups (a sparse stream is taken message by
        message, with no added delay)."""
        return self.rate * self.max_delay >= GATHER_MIN

    def wait_batch(self, until: float | None = None) -> None:
        """Worker: sleep until a batch is due, :meth:`wake` is called, or the monotonic
        time ``until`` (the worker's own deadline, if it has one).

        Due: ``due`` messages queued; or, on a dense stream, the oldest queued message
        has waited ``max_delay`` (a wait that starts on an empty queue ends ``max_delay``
        after it began, so no message waits longer); or, on a sparse stream, any message.
        An empty queue on a stream that is not dense is a sleep without timeout: an idle
        pipeline costs nothing.
        """
        q = self._q
        if len(q) >= self.due or (q and (self._gathered or not self.dense())):
            return
        timeout: float | None
        if q:
            timeout = self._first + self.max_delay - time.monotonic()
            if timeout <= 0:
                return
            self.state = GATHERING
        elif self.dense():
            timeout, self.state = self.max_delay, GATHERING
        else:
            timeout, self.state = None, IDLE
        gathering = timeout  # a gathering wait that finds nothing: the stream stopped
        if until is not None:
            left = until - time.monotonic()
            if left <= 0:
                self.state = AWAKE
                return
            if timeout is None or left < timeout:
                timeout, gathering = left, None
        self._wake.clear()
        # after clear(): a put or wake() that came before it is seen here, any later one
        # sets the event (an untimed wait must not miss one)
        pending = (len(q) >= self.due or self._gathered) if self.state == GATHERING else bool(q)
        if not pending and not self._kicked:
            self._wake.wait(timeout)
            self.wakeups += 1
        self.state = AWAKE
        self._kicked = False  # the worker looks at its flags next
        if gathering is not None and not q:
            self.rate = 0.0

    def wait(self, timeout: float) -> None:
        """Sleep until a message arrives or ``timeout`` passes (a paused worker)."""
        self.state = IDLE
        self._wake.clear()
        if not self._q:
            self._wake.wait(timeout)
        self.state = AWAKE

    def wake(self) -> None:
        """End the worker's wait now (a stop, flush or swap request it then looks at)."""
        self._kicked = True
        self._wake.set()

    def close(self) -> None:
        """Release a blocked producer (shutdown)."""
        self.closed = True
        with self._space:
            self._space.notify_all()
