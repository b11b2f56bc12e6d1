"""The intake's overflow policies: which message each one loses, and that it is counted."""

from __future__ import annotations

import threading

import pytest

from agent.records import Message
from agent.transport.intake import Intake
from tests.support.waiting import sleeps, until


def msgs(*names: str) -> list[Message]:
    return [Message("t", n.encode(), 0.0) for n in names]


def payloads(intake: Intake) -> list[str]:
    return [m.payload.decode() for m in intake.drain(1000)]


def arrive(intake: Intake, arriving: list[Message], many: bool) -> None:
    """Put ``arriving`` one at a time, or in two chunks (2, then the rest) when ``many``."""
    if many:
        intake.put_many(arriving[:2])
        intake.put_many(arriving[2:])
    else:
        for m in arriving:
            intake.put(m)


@pytest.mark.parametrize("many", [False, True])
@pytest.mark.parametrize(
    ("policy", "kept"),
    [("drop_oldest", ["c", "d", "e"]), ("drop_newest", ["a", "b", "c"])],
    ids=["drop_oldest_keeps_the_freshest", "drop_newest_keeps_the_backlog"],
)
def test_a_full_intake_drops_by_its_policy(policy, kept, many):
    q = Intake(3, policy)
    arrive(q, msgs("a", "b", "c", "d", "e"), many)
    assert payloads(q) == kept
    assert (q.received, q.dropped) == (5, 2)


def test_drop_oldest_with_a_chunk_larger_than_the_bound():
    q = Intake(3, "drop_oldest")
    q.put_many(msgs("a"))
    q.put_many(msgs("b", "c", "d", "e", "f"))
    assert payloads(q) == ["d", "e", "f"] and (q.received, q.dropped) == (6, 3)


@pytest.mark.parametrize("many", [False, True])
def test_block_loses_nothing_and_holds_the_producer_until_there_is_room(many):
    q = Intake(2, "block")
    q.put_many(msgs("a", "b"))
    extra = msgs("c", "d")
    producer = threading.Thread(
        target=(lambda: q.put_many(extra)) if many else (lambda: [q.put(m) for m in extra])
    )
    producer.start()
    assert until(lambda: q.received == 3, 5)  # "c" arrived and found no room
    assert len(q) == 2 and producer.is_alive()  # it cannot return before a drain
    got = payloads(q)
    assert until(lambda: not producer.is_alive(), 5)
    got += payloads(q)
    assert got == ["a", "b", "c", "d"] and q.dropped == 0


def test_close_releases_a_blocked_producer_and_keeps_its_message():
    q = Intake(1, "block")
    q.put_many(msgs("a"))
    producer = threading.Thread(target=lambda: q.put(msgs("b")[0]))
    producer.start()
    assert until(lambda: q.received == 2, 5)
    q.close()
    producer.join(5)
    assert not producer.is_alive() and payloads(q) == ["a", "b"]


class Worker:
    """A pipeline worker's waiting (``wait_batch`` then ``drain``) in a thread of its own."""

    def __init__(self, intake: Intake) -> None:
        self.intake = intake
        self.batches: list[list[Message]] = []
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop:
            if msgs := self.intake.drain(self.intake.due):
                self.batches.append(msgs)
            self.intake.wait_batch()

    def taken(self) -> list[Message]:
        return [m for b in self.batches for m in b]

    def sleeps(self) -> int:
        """The thread's voluntary context switches so far (each one a sleep that ended)."""
        return sleeps(self.thread.native_id)

    def end(self) -> None:
        self.stop = True
        self.intake.wake()
        self.thread.join(10)


def ticks(n: int, every: float) -> None:
    """An interval bounded by an event: ``n`` timer expiries of ``every`` s on another thread."""
    done = threading.Event()
    for _ in range(n):
        done.wait(every)


def test_an_idle_worker_sleeps_without_waking():
    """An empty intake is a sleep without timeout: no wake-up while nothing arrives (the
    worker polled 10 times a second before), and the first message still wakes it."""
    q = Intake(100, max_delay=0.01)
    w = Worker(q)
    q.put(Message("t", b"a", 0.0))
    assert until(lambda: len(w.taken()) == 1, 10)
    assert until(lambda: q.state != 0, 10)  # asleep again
    wakeups, slept = q.wakeups, w.sleeps()
    ticks(6, 0.1)  # 0.6 s or more: 6 polls of the old loop
    assert (q.wakeups, w.sleeps()) == (wakeups, slept)
    q.put(Message("t", b"b", 0.0))
    assert until(lambda: len(w.taken()) == 2, 10)
    w.end()


def test_a_dense_stream_is_taken_in_batches_in_order():
    """Messages that arrive within max_delay of each other share a batch: far fewer batches
    (and worker wake-ups) than messages, nothing lost, order kept."""
    q = Intake(10_000, max_delay=0.1)
    w = Worker(q)
    n = 600
    for i in range(n):
        q.put(Message("t", str(i).encode(), 0.0))
        ticks(1, 0.001)
    assert until(lambda: len(w.taken()) == n, 10)
    w.end()
    assert [m.payload for m in w.taken()] == [str(i).encode() for i in range(n)]
    # the first 50 ms measure the rate (message by message); then batches of max_delay
    assert len(w.batches) <= n // 4, len(w.batches)


def test_max_delay_releases_the_end_of_a_dense_stream():
    """max_delay is an upper bound, not a wait for company: the last messages of a dense
    stream are taken although no later message wakes the gathering worker (its timer
    does)."""
    q = Intake(10_000, max_delay=0.05)
    w = Worker(q)
    for i in range(200):
        q.put(Message("t", str(i).encode(), 0.0))
        ticks(1, 0.001)
    assert until(lambda: len(w.taken()) == 200, 10)
    w.end()
    assert w.taken()[-1].payload == b"199"


def test_a_full_batch_wakes_a_gathering_worker():
    """due (max_batch) messages end the wait at once however long max_delay is."""
    q = Intake(10_000, max_delay=1.0, due=50)
    w = Worker(q)
    for i in range(200):
        q.put(Message("t", str(i).encode(), 0.0))
        ticks(1, 0.001)
    assert until(lambda: len(w.taken()) == 200, 10)  # 200 msgs in ~0.2+ s, max_delay 1 s
    w.end()
    assert max(len(b) for b in w.batches) <= 50


def test_a_full_intake_is_a_due_batch():
    """With a bound below max_batch, a full intake ends the wait (it would drop or block
    while the worker waited out max_delay)."""
    q = Intake(10, "block", max_delay=1.0, due=2048)
    assert q.due == 10
    w = Worker(q)
    for i in range(100):  # blocks at 10 queued until the worker drains
        q.put(Message("t", str(i).encode(), 0.0))
    assert until(lambda: len(w.taken()) == 100, 10)
    w.end()
    assert [m.payload for m in w.taken()] == [str(i).encode() for i in range(100)]


def test_a_read_that_waited_the_budget_is_taken_at_once():
    """A chunk the fast-path reader already held for ``max_delay`` (``due=True``) ends a
    gathering worker's wait at once: the budget is spent once, not twice."""
    q = Intake(10_000, max_delay=60.0)
    w = Worker(q)
    for i in range(200):  # a dense stream for the budget: the worker gathers, up to 60 s
        q.put(Message("t", str(i).encode(), 0.0))
        ticks(1, 0.001)
    assert until(lambda: q.state == 2, 10)
    q.put_many([Message("t", b"read", 0.0)], due=True)
    assert until(lambda: len(w.taken()) == 201, 10)
    w.end()
    assert w.taken()[-1].payload == b"read"
