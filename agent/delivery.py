"""Forwarders: move records from the spool to a sink, deleting them only once delivered."""

from __future__ import annotations

import random
import threading
import time
from collections import deque

from . import log
from .errors import NotConnectedError
from .protocols import Sink
from .spool import Spool

SETTLE_POLL = 0.005  # s between checks for the acknowledgements of pipelined events


class Forwarder:
    """Moves one sink's records: take a batch, deliver it, acknowledge it in the spool.

    A sink that may be called from two threads (``concurrent = True``, like the MQTT sink)
    gets two lanes, so an event never waits behind a round of summaries being acknowledged;
    other sinks get one lane, events first. A sink with ``publish_many`` (publish now,
    return a delivery to check later) has its caught-up events pipelined: the next ones go
    out before the last ones are acknowledged. On ``NotConnectedError`` a lane waits with
    jittered exponential backoff; a backlog (what was spooled before start or during a
    failure) drains at no more than ``rate`` records per second per lane, live records
    without pacing.
    """

    def __init__(self, name: str, sink: Sink, spool: Spool, batch: int, rate: float) -> None:
        self.name, self.sink, self.spool = name, sink, spool
        self.batch, self.rate = batch, rate
        self.delivered = 0
        self.failures = 0
        self.log = log.get(component="forwarder", sink=name)
        self._stop = threading.Event()
        lanes = (0, 1) if getattr(sink, "concurrent", False) else (None,)
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
        pipelined = prio == 0 and hasattr(self.sink, "publish_many")
        inflight: deque = deque()  # (rows, delivery) published by publish_many, oldest first
        caught_up = False  # the last take found everything there was: fresh events may go first
        replaying = True  # since start or a failure, until caught up: paced at ``rate``
        while True:
            stopping = self._stop.is_set()
            if stopping and time.monotonic() > self._deadline:
                if express is not None:  # undelivered: they stay on disk for the next start
                    express.done([r for rows, _ in inflight for r in rows])
                return
            wake.clear()
            rows: list = []
            try:
                self._settle(inflight, express, wait=not caught_up)
                rows = express.pop(self.batch) if express is not None and caught_up else []
                if express is not None and not caught_up:
                    express.discard()  # they are in the spool, in order: let them reach it
                    self.spool.wait()
                if not rows and not (caught_up and prio == 0):  # caught up: events by express
                    rows = self.spool.take(self.name, self.batch, prio)
                    caught_up = len(rows) < self.batch
                    replaying = replaying and not caught_up
                    if express is not None:
                        rows = express.skipped(rows)
                if not rows:
                    if stopping and not inflight:
                        return
                    wake.wait(SETTLE_POLL if inflight else 1.0)
                    continue
                started = time.monotonic()
                if pipelined and caught_up:
                    inflight.append((rows, self.sink.publish_many([r for _, r in rows])))
                    continue
                self.sink.write_many([r for _, r in rows])
            except NotConnectedError as e:
                caught_up, replaying = False, True
                if express is not None:
                    express.done([r for rows, _ in inflight for r in rows])
                    express.done(rows)
                inflight.clear()
                if stopping:  # the rows stay on disk for the next start
                    self.log.info("sink_unavailable_at_stop", spooled=self.spool.depth(self.name))
                    return
                self.failures += 1
                backoff = min(max(backoff * 2, 0.2), 5.0)
                if self.failures == 1 or self.failures % 20 == 0:
                    self.log.warning("sink_unavailable", error=str(e), backlog=len(rows))
                self._stop.wait(backoff * random.uniform(0.5, 1.0))
                continue
            except Exception:
                caught_up, replaying = False, True
                if express is not None:
                    express.done([r for rows, _ in inflight for r in rows])
                    express.done(rows)
                inflight.clear()
                self.failures += 1
                self.log.exception("sink_failed")
                self._stop.wait(1.0)
                continue
            self._delivered(rows, express)
            backoff = 0.0
            if replaying and len(rows) == self.batch:  # a backlog: pace it; live rows are not
                pause = len(rows) / self.rate - (time.monotonic() - started)
                if pause > 0:
                    time.sleep(pause)

    def _settle(self, inflight: deque, express, wait: bool) -> None:
        """Acknowledge pipelined rows whose delivery is done, in order (all of them, waiting,
        when ``wait``: a take must not find rows still in flight). Raises NotConnectedError."""
        while inflight:
            rows, delivery = inflight[0]
            if wait:
                delivery.wait()
            elif not delivery.done():
                return
            inflight.popleft()
            self._delivered(rows, express)

    def _delivered(self, rows: list, express) -> None:
        """The sink acknowledged ``rows``: delete them from the spool."""
        if self.failures:
            self.log.info("sink_recovered", after_failures=self.failures)
            self.failures = 0
        if express is not None:  # the spool's writer deletes them after their commit;
            express.hold(rows)  # pending until then, so a take cannot send them again
            self.spool.ack_later([rid for rid, _ in rows], lambda done=rows: express.done(done))
        else:
            self.spool.ack([rid for rid, _ in rows])
        self.delivered += len(rows)
