"""Start a private mosquitto on a free 127.0.0.1 port; ready when a CONNACK arrives.

with Mosquitto() as broker:
    ... broker.port ...
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

# set_tcp_nodelay: mosquitto batches small packets with Nagle by default, adding ~20 ms p50
#   on the broker -> agent hop even at 1,000 msg/s.
# max_queued_messages: the default 1000 silently drops QoS 0 and QoS 1 messages for a
#   subscriber that falls behind for a moment; bursts of a plant's line exceed it.
BASE_CONFIG = """\
listener {port} 127.0.0.1
allow_anonymous {anonymous}
set_tcp_nodelay true
max_queued_messages 200000
max_inflight_messages 1000
persistence {persistence}
persistence_location {dir}/
log_dest file {dir}/mosquitto.log
log_type error
log_type warning
"""
# Started as root, mosquitto drops to user `mosquitto`, which cannot write a private temp
# dir: no log, and no persistence file, so sessions would not survive a restart.
ROOT_USER = "user root\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _hold(port: int) -> socket.socket:
    """``port`` bound with SO_REUSEADDR and not listening: refused to clients, taken by no
    other bind, and still free for mosquitto (which sets SO_REUSEADDR) to listen on."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    return s


def wait_for_connack(port: int, timeout: float = 10.0, tls: bool = False) -> None:
    """Open a raw MQTT 3.1.1 session until the broker answers CONNECT with CONNACK."""
    connect = bytes([0x10, 14, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 10, 0, 2]) + b"pr"
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(connect)
                if s.recv(4)[:1] == b"\x20":
                    return
        except OSError as e:
            last = e
        time.sleep(0.02)
    raise TimeoutError(f"mosquitto on port {port} sent no CONNACK within {timeout}s ({last})")


class Mosquitto:
    """A mosquitto process owned by the caller; stop() kills only this PID."""

    def __init__(
        self,
        port: int | None = None,
        extra: str = "",
        *,
        persistence: bool = True,
        anonymous: bool = True,
        workdir: Path | None = None,
        ready_check: bool = True,
        env: dict[str, str] | None = None,
    ) -> None:
        """``env``: added to the broker process's environment (say ``OPENSSL_CONF``)."""
        self.binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.port = port or free_port()
        # A port chosen here is held (bound, not listening) until mosquitto has it: no
        # other process can take it meanwhile, and connecting to it is refused.
        self._held = None if port else _hold(self.port)
        self.dir = workdir or Path(tempfile.mkdtemp(prefix="mosq-"))
        self.extra = extra
        self.persistence = persistence
        self.anonymous = anonymous
        self.ready_check = ready_check
        self.env = {**os.environ, **env} if env else None
        self.proc: subprocess.Popen | None = None

    @property
    def config_text(self) -> str:
        return (
            BASE_CONFIG.format(
                port=self.port,
                dir=self.dir,
                persistence="true" if self.persistence else "false",
                anonymous="true" if self.anonymous else "false",
            )
            + (ROOT_USER if os.geteuid() == 0 else "")
            + self.extra
        )

    def start(self) -> Mosquitto:
        conf = self.dir / "mosquitto.conf"
        conf.write_text(self.config_text)
        with open(self.dir / "mosquitto.stderr", "ab") as err:  # never a full, unread pipe
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(conf)], stdout=err, stderr=err, env=self.env
            )
        if self.ready_check:
            try:
                wait_for_connack(self.port)
            except TimeoutError:
                self.stop()
                logs = [self.dir / "mosquitto.log", self.dir / "mosquitto.stderr"]
                text = "".join(p.read_text() for p in logs if p.exists())
                raise RuntimeError(f"mosquitto did not start: {text}") from None
        self._release()
        return self

    def _release(self) -> None:
        if self._held is not None:
            self._held.close()
            self._held = None

    def stop(self, hold: bool = False) -> None:
        """Stop mosquitto; with ``hold``, keep its port until the next :meth:`start` (a
        broker that is down, with its port still its own)."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        self._release()
        if hold:
            self._held = _hold(self.port)

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
