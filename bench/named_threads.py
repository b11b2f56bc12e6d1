"""Run the agent with each Python thread's name given to the OS thread, so the bench can
tell threads apart in ``/proc/<pid>/task/*/comm`` (Python 3.11 leaves them all "python").

    python -m bench.named_threads run -c configs/w1.yaml   # the agent's CLI arguments

Names longer than the kernel's 15 characters keep their end (``paho-mqtt-client-w1-agent-w1-in``
becomes ``-w1-agent-w1-in``), which tells the connections apart. Bench only: the agent is
unchanged.
"""

from __future__ import annotations

import ctypes
import sys
import threading

PR_SET_NAME = 15
COMM_MAX = 15


def os_name(name: str) -> bytes:
    """The kernel's name for a Python thread called ``name``."""
    raw = name.encode("ascii", "replace")
    return raw if len(raw) <= COMM_MAX else raw[-COMM_MAX:]


def install() -> None:
    """Name every thread started from now on (prctl in the thread itself)."""
    libc = ctypes.CDLL(None, use_errno=True)
    boot = threading.Thread._bootstrap_inner  # type: ignore[attr-defined]

    def named(self: threading.Thread) -> None:
        libc.prctl(PR_SET_NAME, ctypes.c_char_p(os_name(self.name)), 0, 0, 0)
        boot(self)

    threading.Thread._bootstrap_inner = named  # type: ignore[attr-defined]


if __name__ == "__main__":
    install()
    from agent.cli import main

    sys.exit(main(sys.argv[1:]))
