"""The bench's private mosquitto: the tuned broker the tests use (agent.testing.mosquitto).

Its config sets ``set_tcp_nodelay true`` (Nagle holds small PUBLISH packets back, ~20 ms p50
per hop) and ``max_queued_messages 200000`` (the default 1000 silently drops QoS 0 and 1
messages queued for a subscriber that falls behind during a burst).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from agent.testing.mosquitto import Mosquitto

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


@contextmanager
def mosquitto(workdir: Path) -> Iterator[Mosquitto]:
    """A mosquitto on a free 127.0.0.1 port, ready at its first CONNACK, stopped by PID."""
    with Mosquitto(workdir=workdir, persistence=False) as broker:
        yield broker
