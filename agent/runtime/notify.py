"""systemd readiness (``Type=notify``): ``READY=1`` once started, ``RELOADING=1`` and
``STOPPING=1`` around a reload and a stop. A no-op unless systemd set ``NOTIFY_SOCKET``."""

from __future__ import annotations

import contextlib
import os
import socket
import time


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``READY=1``) to the service manager; whether it was sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s, contextlib.suppress(OSError):
        s.connect(address)
        s.sendall(state.encode())
        return True
    return False


def reloading() -> bool:
    """RELOADING=1 with the monotonic time systemd (253+) expects beside it."""
    return notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
