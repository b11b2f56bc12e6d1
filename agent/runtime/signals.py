"""Signals and failures as flags a process's main thread sleeps on, with no timer.

A Python signal handler runs in the main thread between two bytecodes, possibly inside a
lock that thread holds: a second SIGCHLD arriving while the first one's handler was inside
``threading.Event.set`` re-entered it and deadlocked the agent at stop (workers exiting
together). So the handlers here take no lock: they set a flag and write a byte to a pipe,
and :meth:`Signals.wait` sleeps in ``select`` on its other end. ``os.write`` is also safe
from any thread, so a failing worker thread wakes the main thread the same way.
"""

from __future__ import annotations

import contextlib
import os
import select


class Signals:
    """SIGTERM/SIGINT (stop), SIGHUP (reload), and :meth:`wake` (a worker thread failed, a
    worker process ended): the main thread sleeps until one of them (an idle gateway's
    wake-ups, docs/performance.md)."""

    def __init__(self) -> None:
        self.stop = False
        self.hup = False
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)

    def on_stop(self, *_: object) -> None:
        self.stop = True
        self.wake()

    def on_hup(self, *_: object) -> None:
        self.hup = True
        self.wake()

    def wake(self, *_: object) -> None:
        """Look at the flags and the workers now."""
        with contextlib.suppress(BlockingIOError):  # a full pipe: a wake-up is pending anyway
            os.write(self._w, b"\0")

    def wait(self) -> bool:
        """Sleep until a signal or :meth:`wake`; whether to stop."""
        if not (self.stop or self.hup):
            select.select([self._r], [], [])
        with contextlib.suppress(BlockingIOError):
            os.read(self._r, 4096)
        return self.stop

    def take_hup(self) -> bool:
        """Whether a SIGHUP came since the last call."""
        hup, self.hup = self.hup, False
        return hup
