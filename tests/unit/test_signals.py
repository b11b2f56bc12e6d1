"""The main thread's signal flags: a handler may run inside another at any line."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable

import pytest

from agent.runtime.signals import Signals


def nested_at_every_line(outer: Callable[[], object], inner: Callable[[], object]) -> int:
    """Run ``outer`` and, at each line it executes (at any depth), ``inner`` once more, as
    a signal arriving there would; in a thread, so a deadlock shows as a thread still
    alive. Returns how many nested calls completed, or -1 for a deadlock."""
    done = [0]

    def tracer(frame, event, arg):
        if event == "line":
            sys.settrace(None)
            inner()
            done[0] += 1
            sys.settrace(tracer)
        return tracer

    def run() -> None:
        sys.settrace(tracer)
        try:
            outer()
        finally:
            sys.settrace(None)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(5)
    return -1 if t.is_alive() else done[0]


@pytest.mark.parametrize("name", ["wake", "on_stop", "on_hup"])
def test_a_handler_inside_another_does_not_deadlock(name):
    """A second SIGCHLD during the first one's handler deadlocked the agent at stop when
    the handlers set a threading.Event (its lock, held by the first, taken again by the
    second in the same thread)."""
    s = Signals()
    handler = {"wake": s.wake, "on_stop": s.on_stop, "on_hup": s.on_hup}[name]
    assert nested_at_every_line(handler, s.wake) > 0


def test_wait_sleeps_until_a_wake_and_reports_stop():
    s = Signals()
    woke = threading.Event()

    def waiter() -> None:
        assert s.wait() is False
        woke.set()

    t = threading.Thread(target=waiter, daemon=True)
    t.start()
    assert not woke.wait(0.2)  # no timer: it sleeps
    s.wake()
    assert woke.wait(5)
    s.on_hup()
    assert s.wait() is False and s.take_hup() and not s.take_hup()
    s.on_stop()
    assert s.wait() is True
