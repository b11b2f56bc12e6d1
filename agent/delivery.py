"""Forwarders: move records from the spool to a sink, deleting them only once delivered."""

from __future__ import annotations

import random
import threading
import time

from . import log
from .errors import NotConnectedError
from .protocols import Sink
from .spool import Spool


class Forwarder:
    """One thread per sink: take a batch, deliver it, acknowledge it in the spool.

    On ``NotConnectedError`` it waits with jittered exponential backoff; a backlog drains
    at no more than ``rate`` records per second.
    """

    def __init__(self, name: str, sink: Sink, spool: Spool, batch: int, rate: float) -> None:
        self.name, self.sink, self.spool = name, sink, spool
        self.batch, self.rate = batch, rate
        self.delivered = 0
        self.failures = 0
        self.log = log.get(component="forwarder", sink=name)
        self._wake = spool.wake_event(name)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"forward-{name}", daemon=True)

    def start(self) -> None:
        self.sink.start()
        self._thread.start()

    def stop(self, drain_timeout: float = 10) -> None:
        """Try to deliver what is spooled for up to ``drain_timeout`` s, then stop.

        A sink that is not connected ends the drain at once. Anything undelivered stays in
        the spool for the next start.
        """
        self._deadline = time.monotonic() + drain_timeout
        self._stop.set()
        self._wake.set()
        self._thread.join(drain_timeout + 5)
        self.sink.close()

    def _run(self) -> None:
        backoff = 0.0
        while True:
            stopping = self._stop.is_set()
            if stopping and time.monotonic() > self._deadline:
                return
            rows = self.spool.take(self.name, self.batch)
            if not rows:
                if stopping:
                    return
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            started = time.monotonic()
            try:
                self.sink.write_many([r for _, r in rows])
            except NotConnectedError as e:
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
                self.failures += 1
                self.log.exception("sink_failed")
                self._stop.wait(1.0)
                continue
            if self.failures:
                self.log.info("sink_recovered", after_failures=self.failures)
                self.failures = 0
            backoff = 0.0
            self.spool.ack([rid for rid, _ in rows])
            self.delivered += len(rows)
            if len(rows) == self.batch:  # a backlog: pace it
                pause = len(rows) / self.rate - (time.monotonic() - started)
                if pause > 0:
                    time.sleep(pause)
