"""A private mosquitto on 127.0.0.1: generated config, free port, ready at the first CONNACK."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from . import HOST

MOSQUITTO = "/usr/sbin/mosquitto"

CONFIG = """\
listener {port} {host}
allow_anonymous true
persistence false
log_dest stderr
log_type error
log_type warning
# Nagle's algorithm holds small PUBLISH packets back: ~20 ms p50, ~45 ms p99 per hop.
set_tcp_nodelay true
# The default 1000 silently drops QoS 0 and QoS 1 messages queued for a subscriber that falls
# behind during a burst; 100,000 W1 messages (~120 bytes each) are ~12 MB per slow client.
max_queued_messages {max_queued}
# The default 20 unacknowledged QoS 1 messages per client costs a round trip per 20 messages
# and starves a batching subscriber; 1,000 lets it take a burst in one read.
max_inflight_messages {max_inflight}
"""

# MQTT 3.1.1 CONNECT, clean session, keepalive 60 s, client id "bench-probe".
_CONNECT = b"\x10\x17\x00\x04MQTT\x04\x02\x00\x3c\x00\x0bbench-probe"
_CONNACK_OK = b"\x20\x02\x00\x00"


@dataclass
class Broker:
    """A running mosquitto: its port, process and log file."""

    port: int
    proc: subprocess.Popen[bytes]
    log: Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def write_config(
    workdir: Path, port: int, max_queued: int = 100_000, max_inflight: int = 1000
) -> Path:
    """Write the bench broker config into ``workdir`` and return its path."""
    path = workdir / "mosquitto.conf"
    path.write_text(
        CONFIG.format(
            host=HOST,
            port=port,
            max_queued=max_queued,
            max_inflight=max_inflight,
        )
    )
    return path


def connack(port: int, timeout: float = 1.0) -> bool:
    """True if the broker on ``port`` answers a CONNECT with a successful CONNACK."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            s.sendall(_CONNECT)
            reply = b""
            while len(reply) < 4:
                chunk = s.recv(4 - len(reply))
                if not chunk:
                    return False
                reply += chunk
            s.sendall(b"\xe0\x00")  # DISCONNECT
            return reply == _CONNACK_OK
    except OSError:
        return False


@contextmanager
def mosquitto(workdir: Path, timeout: float = 10.0) -> Iterator[Broker]:
    """Run mosquitto with a generated config in ``workdir``; stop it by its PID on exit."""
    port = free_port()
    config = write_config(workdir, port)
    log = workdir / "mosquitto.log"
    with log.open("wb") as err:
        proc = subprocess.Popen([MOSQUITTO, "-c", str(config)], stdout=err, stderr=err)
    broker = Broker(port, proc, log)
    try:
        deadline = time.monotonic() + timeout
        while not connack(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto on port {port} not ready: {log.read_text()}")
            time.sleep(0.02)
        yield broker
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
