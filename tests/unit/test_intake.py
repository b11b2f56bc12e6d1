"""The intake's overflow policies: which message each one loses, and that it is counted."""

from __future__ import annotations

import threading

import pytest

from agent.records import Message
from agent.transport.intake import Intake
from tests.support.waiting import until


def msgs(*names: str) -> list[Message]:
    return [Message("t", n.encode(), 0.0) for n in names]


def payloads(intake: Intake) -> list[str]:
    return [m.payload.decode() for m in intake.drain(1000)]


@pytest.mark.parametrize("many", [False, True])
def test_drop_oldest_keeps_the_freshest(many):
    q = Intake(3, "drop_oldest")
    arriving = msgs("a", "b", "c", "d", "e")
    if many:
        q.put_many(arriving[:2])
        q.put_many(arriving[2:])
    else:
        for m in arriving:
            q.put(m)
    assert payloads(q) == ["c", "d", "e"]
    assert (q.received, q.dropped) == (5, 2)


def test_drop_oldest_with_a_chunk_larger_than_the_bound():
    q = Intake(3, "drop_oldest")
    q.put_many(msgs("a"))
    q.put_many(msgs("b", "c", "d", "e", "f"))
    assert payloads(q) == ["d", "e", "f"] and (q.received, q.dropped) == (6, 3)


@pytest.mark.parametrize("many", [False, True])
def test_drop_newest_keeps_the_backlog(many):
    q = Intake(3, "drop_newest")
    arriving = msgs("a", "b", "c", "d", "e")
    if many:
        q.put_many(arriving[:2])
        q.put_many(arriving[2:])
    else:
        for m in arriving:
            q.put(m)
    assert payloads(q) == ["a", "b", "c"]
    assert (q.received, q.dropped) == (5, 2)


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
