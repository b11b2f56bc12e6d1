"""Forwarding: hand records to the spool, then to a sink, deleting them once delivered.

The delivery side of the outbox: a sink's lanes, the express path of fresh events (sent
while their commit runs), the worker's kick, and the tickets resolved after a commit (QoS 1
acknowledgements, lane wake-ups, the release of express rows once their delete is on disk).
The spool (:mod:`agent.outbox.spool`) only stores.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agent import log
from agent.errors import NotConnectedError
from agent.outbox.spool import Spool
from agent.outbox.ticket import Ticket
from agent.protocols import Concurrent, Pipelined, Sink
from agent.records import EVENT, Record
from agent.stages.period import PeriodWrite

ISOLATE_AFTER = 3  # sink errors in a row (not connection errors) before rows go one by one

Row = tuple[int, Record]  # a spool id and its record


def submit(
    spool: Spool,
    forwarders: Sequence[Forwarder],
    records: list[Record],
    ticket: Ticket | None = None,
    period: PeriodWrite | None = None,
) -> None:
    """A worker's output: ``records`` spooled for each of its sinks, fresh events sent at
    once where an event lane is caught up; ``ticket`` resolved and ``period`` (the running
    totals) committed with the last sink's write, so after all of them (commits are in
    order)."""
    tickets = () if ticket is None else (ticket,)
    if records and forwarders:
        *others, last = forwarders
        for f in others:
            f.put(records)
        last.put(records, tickets, period)
        if any(r.kind == EVENT for r in records):
            for f in forwarders:
                f.kick()
    elif tickets or period is not None:
        spool.after(tickets, period)


class Express:
    """Event rows handed to the event lane before their commit, and the ids it has not
    finished.

    ``take`` must skip the pending ids (they leave by this queue, or were delivered and wait
    for their delete: ``hold``); a lane that is not caught up with the spool ``discard``s the
    queue, so the backlog keeps its order.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: list[Row] = []
        self.pending: set[int] = set()

    def push(self, rows: list[Row]) -> None:
        with self._lock:
            self._rows += rows
            self.pending.update(rid for rid, _ in rows)

    def pop(self, limit: int) -> list[Row]:
        with self._lock:
            rows, self._rows = self._rows[:limit], self._rows[limit:]
        return rows

    def hold(self, rows: Sequence[Row]) -> None:
        """Keep delivered rows out of ``take`` until their delete is committed."""
        with self._lock:
            self.pending.update(rid for rid, _ in rows)

    def done(self, rows: Sequence[Row]) -> None:
        """The rows were deleted from the spool, or stay there for ``take``."""
        with self._lock:
            self.pending.difference_update(rid for rid, _ in rows)

    def discard(self) -> None:
        with self._lock:
            self._rows = []
            self.pending.clear()

    def skipped(self, rows: list[Row]) -> list[Row]:
        with self._lock:
            return [r for r in rows if r[0] not in self.pending] if self.pending else rows


@dataclass(slots=True, frozen=True)
class _Wake:
    """Ticket: wake lanes once the rows they carry are committed (a take will find them)."""

    lanes: tuple[threading.Event, ...]

    def resolve(self) -> None:
        for lane in self.lanes:
            lane.set()


@dataclass(slots=True, frozen=True)
class _Release:
    """Ticket: delivered express rows are deleted on disk, so a take may no longer find them."""

    express: Express
    rows: Sequence[Row]

    def resolve(self) -> None:
        self.express.done(self.rows)


class Forwarder:
    """Moves one sink's records: spool them (:meth:`put`), take a batch, deliver it, delete
    it from the spool.

    A sink that may be called from two threads (``concurrent = True``, like the MQTT sink)
    gets two lanes, so an event never waits behind a round of summaries being acknowledged;
    other sinks get one lane, events first. A sink with ``publish_many`` (publish now,
    return an in-flight handle to check later) has its caught-up events pipelined: the worker that
    spooled them publishes them (:meth:`kick`), and the next ones go out before the last
    ones are acknowledged. On ``NotConnectedError`` a lane waits with jittered exponential
    backoff; on any other sink error too, and then a record the sink refuses on its own is
    moved aside (:meth:`_failed`). A backlog (what was spooled before start or during a
    failure) drains at no more than ``rate`` records per second per lane (so a sink with
    two lanes may drain at twice that), live records without pacing.
    """

    def __init__(self, name: str, sink: Sink, spool: Spool, batch: int, rate: float) -> None:
        self.name, self.sink, self.spool = name, sink, spool
        self.batch, self.rate = batch, rate
        self.delivered = 0
        self.failures = 0
        self.errors = 0  # failures in a row that were not about the connection
        self.moved_aside = 0
        self._limit = log.RateLimit(10.0)
        self.log = log.get(component="forwarder", sink=name)
        self._stop = threading.Event()
        concurrent = isinstance(sink, Concurrent) and sink.concurrent
        # the sink that pipelines live events, if it can
        self._publisher = sink if concurrent and isinstance(sink, Pipelined) else None
        pipelined = self._publisher is not None
        self.live = _Lane(pipelined=True) if pipelined else None  # the event lane's state
        lanes = (0, 1) if concurrent else (None,)
        self.express = Express()  # fresh events for the event lane (0, or the only one)
        self._wake = {prio: threading.Event() for prio in lanes}
        self._event_lane, routine_lane = self._wake[lanes[0]], self._wake[lanes[-1]]
        self._arrived = {  # by (events among the rows, other kinds among them)
            (True, False): _Wake((self._event_lane,)),
            (False, True): _Wake((routine_lane,)),
            (True, True): _Wake(tuple(self._wake.values())),
        }
        self._threads = [
            threading.Thread(
                target=self._run,
                args=(prio, self._wake[prio]),
                name=f"forward-{name}" + ("" if prio is None else f"-{prio}"),
                daemon=True,
            )
            for prio in lanes
        ]

    def put(
        self,
        records: Sequence[Record],
        tickets: Sequence[Ticket] = (),
        period: PeriodWrite | None = None,
    ) -> int:
        """Spool ``records`` for this sink (``tickets`` and ``period`` go with the write) and
        hand fresh events to the event lane at once; returns their last id."""
        picked = [i for i, r in enumerate(records) if r.kind == EVENT]
        if records:  # the lanes for these kinds wake once the rows are committed
            tickets = (*tickets, self._arrived[bool(picked), len(picked) < len(records)])
        last = self.spool.submit(self.name, records, tickets, period)
        if picked:
            first = last - len(records) + 1
            self.express.push([(first + i, records[i]) for i in picked])
            self._event_lane.set()
        return last

    def start(self) -> None:
        self.sink.start()
        for t in self._threads:
            t.start()

    def stop(self, drain_timeout: float = 10) -> None:
        """Try to deliver what is spooled for up to ``drain_timeout`` s, then stop.

        A sink that is not connected ends the drain at once. Anything undelivered stays in
        the spool for the next start.
        """
        self._deadline = time.monotonic() + drain_timeout
        self._stop.set()
        for wake in self._wake.values():
            wake.set()
        for t in self._threads:
            t.join(drain_timeout + 5)
        self.sink.close()

    def _run(self, prio: int | None, wake: threading.Event) -> None:
        backoff = 0.0
        express = self.express if prio in (0, None) else None
        lane = self.live if prio == 0 and self.live is not None else _Lane()
        replaying = True  # since start or a failure, until caught up: paced at ``rate``
        while True:
            stopping = self._stop.is_set()
            if stopping and time.monotonic() > self._deadline:
                with lane.lock:  # undelivered: they stay on disk for the next start
                    lane.release(express)
                return
            wake.clear()
            rows: list = []
            started = time.monotonic()
            try:
                with lane.lock:
                    self._settle(lane, express, wait=not lane.caught_up)
                    if lane.pipelined and lane.caught_up:
                        assert express is not None, "the pipelined lane is the event lane"
                        self._publish_express(lane, express)
                    else:
                        rows = self._take(lane, express, prio)
                        if rows and lane.pipelined and lane.caught_up:  # the last of a replay
                            lane.inflight.append(self._publish(rows))
                            rows = []
                        elif rows:
                            self.sink.write_many(_records(rows))
                            self._delivered(rows, express)
                    idle = not rows
            except Exception as e:
                with lane.lock:
                    lane.caught_up = False
                    lane.release(express, rows)
                replaying = True
                if stopping and isinstance(e, NotConnectedError):  # rows stay for next start
                    self.log.info("sink_unavailable_at_stop", spooled=self.spool.depth(self.name))
                    return
                self.failures += 1
                if isinstance(e, NotConnectedError):
                    backoff = min(max(backoff * 2, 0.2), 5.0)
                    if self.failures == 1 or self.failures % 20 == 0:
                        self.log.warning("sink_unavailable", error=str(e), backlog=len(rows))
                else:
                    backoff = self._failed(lane, rows, e, backoff)
                self._stop.wait(backoff * random.uniform(0.5, 1.0))
                continue
            if idle and not lane.caught_up:  # the take held only rows whose delete is pending
                continue
            if idle:
                if stopping and not lane.inflight:
                    return
                wake.wait(self._sleep(lane, stopping))
                continue
            backoff = 0.0
            replaying = replaying and not lane.caught_up
            if replaying and len(rows) == self.batch:  # a backlog: pace it; live rows are not
                self._pace(len(rows) / self.rate - (time.monotonic() - started))

    def _sleep(self, lane: _Lane, stopping: bool) -> float | None:
        """How long an idle lane sleeps unless woken (rows committed or express, an
        acknowledgement or a lost connection for a pipelined delivery, stop): until the
        oldest delivery's deadline, and the drain's end when stopping; else for ever."""
        dues = [lane.inflight[0][2]] if lane.inflight else []
        if stopping:
            dues.append(self._deadline)
        return max(0.0, min(dues) - time.monotonic()) if dues else None

    def _failed(self, lane: _Lane, rows: list, error: Exception, backoff: float) -> float:
        """A sink error that is not about the connection: retry with growing waits (up to
        a minute) and, from the third failure in a row on, try the rows one by one and move
        aside those that fail alone (:meth:`Spool.move_aside`), so that one record the sink
        cannot take does not hold up the lane for ever. Returns the next wait."""
        self.errors += 1
        if self._limit.allow("sink_failed"):
            self.log.error(
                "sink_failed",
                error=f"{type(error).__name__}: {error}",
                failures=self.errors,
                records=len(rows),
                exc_info=error if self.errors == 1 else None,
            )
        if rows and self.errors >= ISOLATE_AFTER:
            with lane.lock:
                moved = self._isolate(rows)
            if moved < len(rows):  # the sink took some: the others were the problem
                self.errors = 0
                return 0.0
        return min(max(backoff * 2, 0.5), 60.0)

    def _isolate(self, rows: list) -> int:
        """Deliver ``rows`` one at a time; move aside each one the sink refuses alone, unless
        it refuses them all (then the sink is at fault: they stay). Returns how many
        failed. Raises NotConnectedError."""
        refused: list[tuple[tuple[int, Record], Exception]] = []
        for row in rows:
            try:
                self.sink.write_many([row[1]])
            except NotConnectedError:
                raise
            except Exception as e:
                refused.append((row, e))
                continue
            self.spool.ack([row[0]])
            self.delivered += 1
        if len(refused) < len(rows):
            for (rid, r), err in refused:
                self.spool.move_aside([rid], f"{type(err).__name__}: {err}")
                self.moved_aside += 1
                self.log.error(
                    "record_moved_aside",
                    id=r.id,
                    kind=r.kind,
                    device=r.device,
                    error=f"{type(err).__name__}: {err}",
                )
        return len(refused)

    def _pace(self, pause: float) -> None:
        """Wait ``pause`` s (if positive) after a backlog batch; a stop ends the wait."""
        if pause > 0:
            self._stop.wait(pause)

    def kick(self) -> None:
        """Publish fresh events from the calling thread (the worker, after it spooled them)
        when the event lane is caught up and idle: one thread hop less for an event
        (figures in docs/performance.md). Otherwise the lane, woken by :meth:`put`, sends
        them."""
        lane = self.live
        if lane is None or not lane.caught_up:
            return
        assert not isinstance(lane.lock, contextlib.nullcontext), "the live lane is pipelined"
        if not lane.lock.acquire(blocking=False):
            return
        try:
            if lane.caught_up:
                self._publish_express(lane, self.express)
        except Exception as e:  # the lane replays them from the spool and handles the error
            lane.caught_up = False
            self._event_lane.set()
            if self._limit.allow("kick"):
                self.log.warning("sink_publish_failed", error=f"{type(e).__name__}: {e}")
        finally:
            lane.lock.release()

    def _publish_express(self, lane: _Lane, express: Express) -> None:
        """Publish every fresh event waiting in the express queue (lane lock held)."""
        while rows := express.pop(self.batch):
            lane.inflight.append(self._publish(rows))

    def _publish(self, rows: list) -> tuple[list, Any, float]:
        """Send ``rows`` without waiting (the pipelined lane only): the rows, their delivery
        handle, which wakes the event lane once it is done or failed, and its deadline."""
        assert self._publisher is not None, "only a Pipelined sink has a pipelined lane"
        delivery = self._publisher.publish_many(_records(rows))
        return rows, delivery, delivery.notify(self._event_lane)

    def _take(self, lane: _Lane, express: Express | None, prio: int | None) -> list:
        """The next rows for a lane that is not pipelining live events."""
        if express is not None and lane.caught_up and (rows := express.pop(self.batch)):
            return rows
        if express is not None and not lane.caught_up:
            express.discard()  # they are in the spool, in order: let them reach it
            self.spool.wait()
        if lane.caught_up and prio == 0:  # caught up: events come by express
            return []
        rows = self.spool.take(self.name, self.batch, prio)
        lane.caught_up = len(rows) < self.batch
        return express.skipped(rows) if express is not None else rows

    def _settle(self, lane: _Lane, express, wait: bool) -> None:
        """Acknowledge pipelined rows whose delivery is done, in order (all of them, waiting,
        when ``wait``: a take must not find rows still in flight). Raises NotConnectedError."""
        while lane.inflight:
            rows, in_flight, _ = lane.inflight[0]
            if wait:
                in_flight.wait()
            elif not in_flight.done():
                return
            lane.inflight.popleft()
            self._delivered(rows, express)

    def _delivered(self, rows: list, express) -> None:
        """The sink acknowledged ``rows``: delete them from the spool."""
        if self.failures:
            self.log.info("sink_recovered", after_failures=self.failures)
            self.failures = self.errors = 0
        if express is not None:  # the spool's writer deletes them after their commit;
            express.hold(rows)  # pending until then, so a take cannot send them again
            self.spool.delete_later([rid for rid, _ in rows], (_Release(express, rows),))
        else:
            self.spool.ack([rid for rid, _ in rows])
        self.delivered += len(rows)


class _Lane:
    """A lane's delivery state. The pipelined event lane's is shared with the worker
    (:meth:`Forwarder.kick`) under its lock; other lanes keep theirs alone."""

    def __init__(self, pipelined: bool = False) -> None:
        self.pipelined = pipelined
        self.lock = threading.Lock() if pipelined else contextlib.nullcontext()
        self.caught_up = False  # the last take found all there was: fresh events go first
        self.inflight: deque = deque()  # (rows, handle, deadline) published, not acknowledged

    def release(self, express: Express | None, rows: Sequence[Row] = ()) -> None:
        """Undelivered rows go back to the spool's order: a take may find them again."""
        if express is not None:
            express.done([r for batch, *_ in self.inflight for r in batch])
            express.done(rows)
        self.inflight.clear()


def _records(rows: list) -> list[Record]:
    return [r for _, r in rows]
