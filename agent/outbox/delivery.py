"""Forwarders: move records from the spool to a sink, deleting them only once delivered."""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections import deque

from agent import log
from agent.errors import NotConnectedError
from agent.outbox.spool import Express, Spool
from agent.protocols import Concurrent, Pipelined, Sink
from agent.records import Record

SETTLE_POLL = 0.005  # s between checks for the acknowledgements of pipelined events
ISOLATE_AFTER = 3  # sink errors in a row (not connection errors) before rows go one by one


class Forwarder:
    """Moves one sink's records: take a batch, deliver it, acknowledge it in the spool.

    A sink that may be called from two threads (``concurrent = True``, like the MQTT sink)
    gets two lanes, so an event never waits behind a round of summaries being acknowledged;
    other sinks get one lane, events first. A sink with ``publish_many`` (publish now,
    return a delivery to check later) has its caught-up events pipelined: the worker that
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
        pipelined = concurrent and isinstance(sink, Pipelined)
        self.live = _Lane(pipelined=True) if pipelined else None  # the event lane's state
        lanes = (0, 1) if concurrent else (None,)
        self._threads = [
            threading.Thread(
                target=self._run,
                args=(prio, spool.wake_event(name, prio)),
                name=f"forward-{name}" + ("" if prio is None else f"-{prio}"),
                daemon=True,
            )
            for prio in lanes
        ]

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
        for prio in (None, 0, 1):
            self.spool.wake_event(self.name, prio).set()
        for t in self._threads:
            t.join(drain_timeout + 5)
        self.sink.close()

    def _run(self, prio: int | None, wake: threading.Event) -> None:
        backoff = 0.0
        express = self.spool.express(self.name) if prio in (0, None) else None
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
                        self._publish_express(lane, express)
                    else:
                        rows = self._take(lane, express, prio)
                        if rows and lane.pipelined and lane.caught_up:  # the last of a replay
                            lane.inflight.append((rows, self.sink.publish_many(_records(rows))))
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
            if idle:
                if stopping and not lane.inflight:
                    return
                wake.wait(SETTLE_POLL if lane.inflight else 1.0)
                continue
            backoff = 0.0
            replaying = replaying and not lane.caught_up
            if replaying and len(rows) == self.batch:  # a backlog: pace it; live rows are not
                self._pace(len(rows) / self.rate - (time.monotonic() - started))

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
            for (rid, r), e in refused:
                self.spool.move_aside([rid], f"{type(e).__name__}: {e}")
                self.moved_aside += 1
                self.log.error(
                    "record_moved_aside",
                    id=r.id,
                    kind=r.kind,
                    device=r.device,
                    error=f"{type(e).__name__}: {e}",
                )
        return len(refused)

    def _pace(self, pause: float) -> None:
        """Wait ``pause`` s (if positive) after a backlog batch; a stop ends the wait."""
        if pause > 0:
            self._stop.wait(pause)

    def kick(self) -> None:
        """Publish fresh events from the calling thread (the worker, after it spooled them)
        when the event lane is caught up and idle: one thread hop less for an event (W1
        int8 at 16,000 msg/s, from the end of its batch to its publish: p50 0.33-0.41 ms,
        p99 2.9-3.5, vs 0.7 and 6.0 through the lane). Otherwise the lane, woken by the
        spool, sends them."""
        lane = self.live
        if lane is None or not lane.caught_up or not lane.lock.acquire(blocking=False):
            return
        try:
            if lane.caught_up:
                self._publish_express(lane, self.spool.express(self.name))
        except Exception as e:  # the lane replays them from the spool and handles the error
            lane.caught_up = False
            self.spool.wake_event(self.name, 0).set()
            if self._limit.allow("kick"):
                self.log.warning("sink_publish_failed", error=f"{type(e).__name__}: {e}")
        finally:
            lane.lock.release()

    def _publish_express(self, lane: _Lane, express: Express) -> None:
        """Publish every fresh event waiting in the express queue (lane lock held)."""
        while rows := express.pop(self.batch):
            lane.inflight.append((rows, self.sink.publish_many(_records(rows))))

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
            rows, delivery = lane.inflight[0]
            if wait:
                delivery.wait()
            elif not delivery.done():
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
            self.spool.ack_later([rid for rid, _ in rows], lambda done=rows: express.done(done))
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
        self.inflight: deque = deque()  # (rows, delivery) published, not yet acknowledged

    def release(self, express: Express | None, rows: list = ()) -> None:
        """Undelivered rows go back to the spool's order: a take may find them again."""
        if express is not None:
            express.done([r for batch, _ in self.inflight for r in batch])
            express.done(rows)
        self.inflight.clear()


def _records(rows: list) -> list[Record]:
    return [r for _, r in rows]
