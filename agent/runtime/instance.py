"""One agent per spool: an exclusive lock taken before any broker, port or model is opened.

Two agents on one config share a spool database and client ids: the broker drops the older
client each time the other connects, for ever, and the second overwrites the PID file that
``reload`` reads. ``run`` therefore takes ``flock`` locks on ``<spool>.lock`` and on the PID
file first; a second agent finds them held and exits with one line naming the first.
The kernel drops the locks when the process ends, however it ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import IO

from agent.errors import AgentError, SettingError


class AlreadyRunning(AgentError):
    """Another agent holds the spool or the PID file."""


def lock_path(spool: Path) -> Path:
    """The lock file beside a spool database."""
    return spool.with_name(spool.name + ".lock")


def holder(spool: Path) -> str | None:
    """The PID of the agent that holds ``spool`` now, or None when none does."""
    lock = lock_path(spool.resolve())
    try:
        f = open(lock)  # noqa: SIM115
    except FileNotFoundError:
        return None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return (f.read().split() or ["unknown"])[0]
        return None


class InstanceGuard:
    """Holds the spool lock and the PID file lock until :meth:`release`."""

    def __init__(self, agent_id: str, spool: Path, pid_file: Path | None) -> None:
        self.agent_id = agent_id
        self.spool = spool.resolve()
        self.pid_file = pid_file
        self._files: list[IO[str]] = []

    def acquire(self) -> InstanceGuard:
        """Lock the spool, then the PID file, and write our PID into both.

        Raises AlreadyRunning, SettingError (the spool's folder cannot be written) or
        OSError (the PID file cannot be written; the spool stays unlocked).
        """
        try:
            self.spool.parent.mkdir(parents=True, exist_ok=True)
            self._lock(lock_path(self.spool), f"spool {self.spool}")
        except OSError as e:
            raise SettingError(
                f"spool.path: cannot create or lock {lock_path(self.spool)}: {e.strerror or e}"
            ) from e
        try:
            if self.pid_file is not None:
                self._lock(self.pid_file, f"PID file {self.pid_file}")
        except BaseException:
            self.release()
            raise
        return self

    def _lock(self, path: Path, what: str) -> None:
        f = open(path, "a+")  # noqa: SIM115  # held open: the lock lives as long as the file
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().split()
            f.close()
            pid = holder[0] if holder else "unknown"
            raise AlreadyRunning(
                f"agent {self.agent_id} already running (PID {pid}, {what}); stop it "
                "first, or give this one its own spool.path and agent.id"
            ) from None
        except OSError:
            f.close()
            raise
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._files.append(f)

    def release(self) -> None:
        """Remove the PID file (ours: we hold its lock) and drop the locks."""
        if self.pid_file is not None and len(self._files) == 2:
            with contextlib.suppress(OSError):
                self.pid_file.unlink()
        for f in self._files:
            f.close()
        self._files = []
