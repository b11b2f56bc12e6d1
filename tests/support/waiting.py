"""Polling for a condition in tests, with a deadline (the bench's helper), and counting a
thread's sleeps."""

from __future__ import annotations

from pathlib import Path

from bench import until

__all__ = ["sleeps", "until"]


def sleeps(tid: int, pid: int | str = "self") -> int:
    """Voluntary context switches of thread ``tid`` of process ``pid`` so far: each one a
    sleep that ended (a wake-up)."""
    status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
    return int(status.split("voluntary_ctxt_switches:")[1].split()[0])
