"""Multi-process W1 load generator: paced JSON telemetry for D devices, sent counts per device.

Each worker process owns every ``procs``-th device and sends its share of the rate round-robin
over them on its own connection. A payload is ``{"ts": <time.time()>, "seq": <per device>,
"v": [8 floats]}`` on ``plant/line1/<device>/telemetry``; values are a noisy sine per channel
and every 200th sample of a device (0.5 %) carries a spike of +10 on all channels.

The workers speak just enough MQTT 3.1.1 to publish (:class:`Publisher`): through paho a
publish costs ~25 us of CPU here, more than the processors under test spend per message, so
the load generator would measure itself. Every ~1 ms a worker writes all messages due as one
send on a TCP_NODELAY socket; it counts PUBACKs and ends with a QoS 1 fence, so when it
returns the broker has taken every message it reports as sent.

    python -m bench.loadgen --port 1883 --rate 5000 --duration 5
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import socket
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import HOST

ROWS = 400  # the value table repeats every 400 samples of a device
PERIODS = np.array([20, 25, 40, 50, 80, 100, 200, 400])  # samples per sine cycle, per channel
SPIKE_EVERY = 200
SPIKE = 10.0
CHUNK = 1000  # most messages in one send
TICK = 0.001  # shortest pause between sends, s


@dataclass
class LoadResult:
    """Messages sent per device and the time span of the sends."""

    sent: dict[str, int]
    t_start: float
    t_end: float

    @property
    def total(self) -> int:
        return sum(self.sent.values())

    @property
    def rate(self) -> float:
        """Achieved messages per second."""
        return self.total / max(self.t_end - self.t_start, 1e-9)


def device_names(devices: int) -> list[str]:
    """The W1 device ids."""
    return [f"dev{i:05d}" for i in range(devices)]


def value_rows(seed: int = 0) -> list[str]:
    """The JSON value arrays, one per table row; rows 0 and 200 carry the spike."""
    rng = np.random.default_rng(seed)
    t = np.arange(ROWS)[:, None]
    v = np.sin(2 * np.pi * t / PERIODS + np.arange(8)) + rng.normal(0, 0.05, (ROWS, 8))
    v[::SPIKE_EVERY] += SPIKE
    return ["[" + ",".join(f"{x:.4f}" for x in row) + "]" for row in v]


def _offset(index: int) -> int:
    """Table row of a device's seq 0, so devices are out of phase."""
    return index * 37 % ROWS


def varint(n: int) -> bytes:
    """MQTT remaining length encoding."""
    out = bytearray()
    while True:
        n, byte = n >> 7, n & 0x7F
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def publish_packet(topic: bytes, payload: bytes, qos: int = 0, mid: int = 0) -> bytes:
    """An MQTT PUBLISH packet."""
    head = len(topic).to_bytes(2, "big") + topic + (mid.to_bytes(2, "big") if qos else b"")
    return bytes([0x30 | qos << 1]) + varint(len(head) + len(payload)) + head + payload


class Publisher:
    """An MQTT 3.1.1 connection that only publishes: clean session, no keepalive."""

    def __init__(self, port: int, client_id: str) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        cid = client_id.encode()
        body = b"\x00\x04MQTT\x04\x02\x00\x00" + len(cid).to_bytes(2, "big") + cid
        self.sock.sendall(b"\x10" + varint(len(body)) + body)
        connack = self.sock.recv(4, socket.MSG_WAITALL)
        if connack != b"\x20\x02\x00\x00":
            raise ConnectionError(f"CONNACK {connack.hex()}")
        self.ack_bytes = 0  # the broker sends nothing but 4-byte PUBACKs to a publisher

    @property
    def acked(self) -> int:
        return self.ack_bytes // 4

    def send(self, data: bytes) -> None:
        self.sock.settimeout(None)
        self.sock.sendall(data)

    def read_acks(self, timeout: float = 0.0) -> None:
        """Count the PUBACKs that arrived, waiting up to ``timeout`` for the first."""
        self.sock.settimeout(timeout)
        try:
            while chunk := self.sock.recv(65536):
                self.ack_bytes += len(chunk)
                self.sock.settimeout(0.0)
        except (BlockingIOError, TimeoutError):
            pass

    def close(self) -> None:
        self.sock.sendall(b"\xe0\x00")  # DISCONNECT
        self.sock.close()


def _worker(
    port: int,
    qos: int,
    devices: list[tuple[str, int]],
    rate: float,
    duration: float,
    ready: Any,
    go: Any,
    t0: Any,
    results: Any,
) -> None:
    rows = [r.encode() for r in value_rows()]
    pub = Publisher(port, f"w1-loadgen-{os.getpid()}")
    ready.put(os.getpid())
    go.wait()
    start = t0.value
    topics = [f"plant/line1/{name}/telemetry".encode() for name, _ in devices]
    offsets = [off for _, off in devices]
    seqs = [0] * len(devices)
    n, total = len(devices), round(rate * duration)
    k = 0
    while k < total:
        due = min(total, k + CHUNK, int((time.time() - start) * rate) + 1)
        buf = bytearray()
        while k < due:
            i = k % n
            s = seqs[i]
            seqs[i] = s + 1
            payload = b'{"ts":%r,"seq":%d,"v":%b}' % (time.time(), s, rows[(s + offsets[i]) % ROWS])
            buf += publish_packet(topics[i], payload, qos, k % 65535 + 1)
            k += 1
        pub.send(buf)
        pub.read_acks()
        time.sleep(max(TICK, start + k / rate - time.time()))
    t_end = time.time()
    pub.send(publish_packet(b"bench/loadgen/fence", b"", 1, 1))
    expect = (k if qos else 0) + 1
    deadline = time.monotonic() + 30
    while pub.acked < expect and time.monotonic() < deadline:
        pub.read_acks(0.1)
    pub.close()
    results.put(
        ({name: seqs[i] for i, (name, _) in enumerate(devices)}, start, t_end, pub.acked == expect)
    )


def _get(q: Any, workers: list[Any]) -> Any:
    """The next item of ``q``; raises if a worker died first."""
    while True:
        try:
            return q.get(timeout=1)
        except queue.Empty:
            if any(p.exitcode for p in workers):
                raise RuntimeError("a load generator worker failed, see its stderr") from None


def run(
    port: int, devices: int, rate: float, duration: float, qos: int = 0, procs: int = 2
) -> LoadResult:
    """Publish W1 telemetry at ``rate`` msg/s in total for ``duration`` s; return what was sent."""
    ctx = mp.get_context("spawn")
    procs = max(1, min(procs, devices))
    names = device_names(devices)
    ready, results, go, t0 = ctx.Queue(), ctx.Queue(), ctx.Event(), ctx.Value("d", 0.0)
    workers = []
    for w in range(procs):
        mine = [(names[i], _offset(i)) for i in range(w, devices, procs)]
        share = rate * len(mine) / devices
        args = (port, qos, mine, share, duration, ready, go, t0, results)
        workers.append(ctx.Process(target=_worker, args=args, daemon=True))
    for p in workers:
        p.start()
    try:
        for _ in workers:
            _get(ready, workers)
        t0.value = time.time() + 0.02
        go.set()
        outs = [_get(results, workers) for _ in workers]
    finally:
        for p in workers:
            p.join(5)
            if p.is_alive():
                p.kill()
    if not all(o[3] for o in outs):
        raise RuntimeError("the broker did not acknowledge every message of the load generator")
    sent = {name: n for counts, *_ in outs for name, n in counts.items()}
    return LoadResult(sent, min(o[1] for o in outs), max(o[2] for o in outs))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--devices", type=int, default=100)
    p.add_argument("--rate", type=float, default=1000.0, help="messages per second in total")
    p.add_argument("--duration", type=float, default=5.0, help="seconds")
    p.add_argument("--qos", type=int, choices=(0, 1), default=0)
    p.add_argument("--procs", type=int, default=os.cpu_count() or 2)
    args = p.parse_args(argv)
    res = run(args.port, args.devices, args.rate, args.duration, args.qos, args.procs)
    print(json.dumps({"sent": res.total, "rate": round(res.rate, 1), "per_device": res.sent}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
