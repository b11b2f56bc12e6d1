"""MQTT helpers for tests: a collector, a W1 publisher, an agent subprocess."""

from __future__ import annotations

import contextlib
import math
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.support.waiting import until

ROOT = Path(__file__).resolve().parents[2]


def client(port: int, name: str = "") -> mqtt.Client:
    c = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"t-{name}-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv311,
    )
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port, 30)
    c.loop_start()
    return c


class Collector:
    """Subscribes to topic filters and keeps every message (decoded JSON)."""

    def __init__(
        self, port: int, topics: list[str], qos: int = 1, session: str | None = None
    ) -> None:
        """``session``: a client id with a persistent session, kept across broker restarts."""
        self.messages: list[tuple[str, dict]] = []
        self.raw: list[tuple[str, bytes, object]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=session or f"col-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self.c.reconnect_delay_set(0.2, 1)
        self.c.on_message = self._on_message
        self.c.on_subscribe = lambda *a: self._subscribed.set()
        self._marker = f"collector-marker/{uuid.uuid4().hex}"
        self._markers: set[bytes] = set()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600 if session else 0
        self.c.connect("127.0.0.1", port, 30, clean_start=not session, properties=props)
        self.c.subscribe([(t, qos) for t in [*topics, self._marker]])
        self.c.loop_start()
        assert self._subscribed.wait(10), "collector not subscribed"

    def _on_message(self, c, u, msg) -> None:
        if msg.topic == self._marker:
            self._markers.add(msg.payload)
            return
        with self._lock:
            self.raw.append((msg.topic, msg.payload, msg.properties))
            with contextlib.suppress(orjson.JSONDecodeError):
                self.messages.append((msg.topic, orjson.loads(msg.payload)))

    def of(self, prefix: str) -> list[dict]:
        with self._lock:
            return [m for t, m in self.messages if t.startswith(prefix)]

    def wait_for(self, predicate, timeout: float = 30) -> bool:
        return until(predicate, timeout)

    def settle(self, timeout: float = 30) -> None:
        """Until everything the broker had accepted for this collector has arrived: a marker
        published now comes back after it (a broker delivers to a subscriber in order).
        For counting duplicates once the publishers have stopped."""
        token = uuid.uuid4().bytes
        self.c.publish(self._marker, token, qos=1)
        assert until(lambda: token in self._markers, timeout), "the marker did not come back"

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def w1_payloads(devices: int, samples: int, spike_rate: float = 0.005, seed: int = 7):
    """W1 messages in publish order: (device, seq, payload, spiked)."""
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * math.pi, (devices, 8))
    spikes = rng.random((devices, samples)) < spike_rate
    out = []
    t0 = time.time()
    for k in range(samples):
        for d in range(devices):
            v = np.sin(k * 0.2 + phase[d]) + rng.normal(0, 0.05, 8)
            if spikes[d, k]:
                v = v + 10.0
            body = orjson.dumps({"ts": t0 + k * 0.001, "seq": k, "v": v.round(4).tolist()})
            out.append((f"dev{d:04d}", k, body, bool(spikes[d, k])))
    return out


def publish(port: int, topic_fmt: str, items, qos: int = 0) -> None:
    """Publish ``items`` (device, seq, payload, _) and wait until they are sent."""
    c = client(port, "pub")
    infos = [c.publish(topic_fmt.format(device=d), body, qos=qos) for d, _, body, _ in items]
    for i in infos[-50:]:
        i.wait_for_publish(30)
    if qos:
        for i in infos:
            i.wait_for_publish(30)
    c.loop_stop()
    c.disconnect()


def runtime_env(config: Path) -> dict[str, str]:
    """The environment of an agent (and its ``reload``) run from ``config``: its PID file in
    the config's folder, so a killed agent leaves nothing in /tmp and test runs beside each
    other never share one."""
    return {**os.environ, "RUNTIME_DIRECTORY": str(config.parent)}


class AgentProcess:
    """``edge-agent run`` as a subprocess; ready once its source subscribed."""

    def __init__(self, config: Path, env: dict[str, str], *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "-c", str(config), *args],
            env={**runtime_env(config), **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
        )
        self.logs: list[dict] = []
        self.subscribed = 0
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            try:
                rec = orjson.loads(line)
            except orjson.JSONDecodeError:
                rec = {"event": "raw", "line": line.decode(errors="replace")}
            self.logs.append(rec)
            if rec.get("event") == "source_subscribed":
                self.subscribed += 1
                self._ready.set()

    def wait_ready(self, timeout: float = 20) -> None:
        if not self._ready.wait(timeout):
            self.proc.kill()
            raise AssertionError(f"agent not ready: {self.logs[-10:]}")

    def wait_ready_count(self, n: int, timeout: float = 30) -> None:
        """Wait until ``n`` sources (e.g. worker processes) have subscribed."""
        if not until(lambda: self.subscribed >= n, timeout):
            raise AssertionError(f"{self.subscribed} of {n} sources ready: {self.logs[-10:]}")

    def stop(self, sig: int = 15, timeout: float = 60) -> int:
        self.proc.send_signal(sig)
        rc = self.proc.wait(timeout)
        self._reader.join(5)
        return rc

    def events(self, name: str) -> list[dict]:
        return [r for r in self.logs if r.get("event") == name]


def kill_left(*agents: AgentProcess | None) -> None:
    """Kill those of ``agents`` still running: a test's cleanup after a failure."""
    for a in agents:
        if a is not None and a.proc.poll() is None:
            a.proc.kill()


@contextlib.contextmanager
def notify_socket(folder: Path):
    """A datagram socket standing in for systemd's ``NOTIFY_SOCKET``: (its address, the
    socket to ``recv`` READY=1 and the like from, 30-s timeout)."""
    address = str(folder / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(30)
        yield address, sock
