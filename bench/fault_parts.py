"""The parts of the fault run (:mod:`bench.faults`): a small real disk, a paced QoS 1 load, a
subscriber on a persistent session, the agent as a subprocess."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from . import HOST, until
from .loadgen import CHUNK, ROWS, TICK, Publisher, _offset, device_names, publish_packet, value_rows
from .proc import REPO


class MountError(RuntimeError):
    """A tmpfs could not be mounted here (no root or CAP_SYS_ADMIN, or no ``mount``)."""


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A real small filesystem at ``where`` (a tmpfs of ``size``, e.g. ``8m``), unmounted after."""
    where.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
            capture_output=True,
            text=True,
        )
    except FileNotFoundError as e:
        raise MountError(f"cannot mount a tmpfs on {where}: {e}") from None
    if done.returncode != 0:
        raise MountError(f"cannot mount a tmpfs on {where}: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path) -> Path:
    """Write a filler file until the filesystem refuses (ENOSPC); return it."""
    filler = disk / "filler"
    # suppress() outermost: the close can raise ENOSPC too, flushing what the last write
    # left in the buffer (it did once in a full run)
    with contextlib.suppress(OSError), open(filler, "wb") as f:
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    return filler


class Load:
    """``total`` W1 messages at QoS 1, round-robin over the devices (message ``k`` is sample
    ``k // devices`` of device ``k % devices``) at ``rate`` msg/s, on one raw MQTT
    connection in a thread; the input broker has taken every message once :attr:`acked_all`."""

    def __init__(self, port: int, devices: int, total: int, rate: float) -> None:
        self.port, self.devices, self.total, self.rate = port, devices, total, rate
        self.sent = 0
        self.done = False
        self.acked_all = False
        self.error: BaseException | None = None
        self._cv = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="faults-load", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wait_sent(self, n: int, timeout: float = 600) -> bool:
        """Until ``n`` messages are sent (or the load ended)."""
        with self._cv:
            return self._cv.wait_for(lambda: self.sent >= n or self.done, timeout)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        if self.error is not None:
            raise RuntimeError(f"the load generator failed: {self.error!r}") from self.error

    def _run(self) -> None:
        try:
            self._publish()
        except BaseException as e:  # reported by join()
            self.error = e
        finally:
            with self._cv:
                self.done = True
                self._cv.notify_all()

    def _publish(self) -> None:
        n, total, rate = self.devices, self.total, self.rate
        rows = [r.encode() for r in value_rows()]
        topics = [f"plant/line1/{d}/telemetry".encode() for d in device_names(n)]
        pub = Publisher(self.port, f"faults-load-{os.getpid()}")
        start, k = time.time(), 0
        while k < total:
            due = min(total, k + CHUNK, int((time.time() - start) * rate) + 1)
            buf = bytearray()
            for j in range(k, due):
                i, s = j % n, j // n
                row = rows[(s + _offset(i)) % ROWS]
                payload = b'{"ts":%r,"seq":%d,"v":%b}' % (time.time(), s, row)
                buf += publish_packet(topics[i], payload, 1, j % 65535 + 1)
            pub.send(buf)
            pub.read_acks()
            k = due
            with self._cv:
                self.sent = k
                self._cv.notify_all()
            time.sleep(max(TICK, start + k / rate - time.time()))
        deadline = time.monotonic() + 60
        while pub.acked < total and time.monotonic() < deadline:
            pub.read_acks(0.1)
        self.acked_all = pub.acked >= total
        pub.close()


class Subscriber:
    """Every message on ``topics`` as (topic, decoded JSON). With ``session`` (a client id)
    the session is persistent: kept by the broker across its restart, resumed on reconnect."""

    def __init__(self, port: int, topics: list[str], session: str | None = None) -> None:
        self.messages: list[tuple[str, dict]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._marker = f"faults-marker/{uuid.uuid4().hex}"
        self._markers: set[bytes] = set()
        self.c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=session or f"faults-sub-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self.c.reconnect_delay_set(0.2, 1)
        self.c.on_message = self._on_message
        self.c.on_subscribe = lambda *a: self._subscribed.set()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600 if session else 0
        self.c.connect(HOST, port, 30, clean_start=not session, properties=props)
        self.c.subscribe([(t, 1) for t in [*topics, self._marker]])
        self.c.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError(f"no SUBACK from the broker on port {port}")

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self._marker:
            self._markers.add(msg.payload)
            return
        with contextlib.suppress(orjson.JSONDecodeError), self._lock:
            self.messages.append((msg.topic, orjson.loads(msg.payload)))

    def of(self, prefix: str) -> list[dict]:
        with self._lock:
            return [m for t, m in self.messages if t.startswith(prefix)]

    def all(self) -> list[tuple[str, dict]]:
        with self._lock:
            return list(self.messages)

    def settle(self, timeout: float = 60) -> None:
        """Until everything the broker had taken for this subscriber has arrived: a marker
        published now comes back after it (a broker delivers to a subscriber in order)."""
        token = uuid.uuid4().bytes
        self.c.publish(self._marker, token, qos=1)
        if not until(lambda: token in self._markers, timeout):
            raise RuntimeError("the settle marker did not come back")

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


class AgentProcess:
    """``edge-agent run -c config`` as a subprocess; its JSON log lines kept and copied to
    ``log``. Ready once its source has subscribed."""

    def __init__(self, config: Path, log: Path) -> None:
        env = {**os.environ, "RUNTIME_DIRECTORY": str(config.parent)}  # its PID file
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "-c", str(config)],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.logs: list[dict] = []
        self._log = log
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        with self._log.open("ab") as out:
            for line in self.proc.stderr:
                out.write(line)
                try:
                    self.logs.append(orjson.loads(line))
                except orjson.JSONDecodeError:
                    self.logs.append({"event": "raw", "line": line.decode(errors="replace")})

    def events(self, name: str) -> list[dict]:
        return [r for r in self.logs if r.get("event") == name]

    def wait_for(self, name: str, timeout: float = 60) -> dict:
        """The first log record ``name``; raises with the log's tail if none comes."""
        until(lambda: self.events(name) or self.proc.poll() is not None, timeout)
        found = self.events(name)
        if not found:
            raise RuntimeError(f"agent: no {name} in {timeout} s; {self.logs[-10:]}")
        return found[0]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 120) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout)
        self._reader.join(10)
        return rc

    def kill(self) -> None:
        """SIGKILL if still running (cleanup)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
