"""Latency floor: relays that do no W1 work, to show what the machine allows end to end.

A relay forwards every ``EVERY``-th sample of each device at once as an event (QoS 1, like
the agent's) and publishes per-device summaries every second, so the bench checks it like
any processor: nothing lost, events equal to the anomalies summed. ``--threads 1``: paho's
network thread decodes and publishes (the shape of the naive agent, without its model).
``--threads 2``: the agent's shape, without windows or model: paho's network thread only
enqueues, a worker thread decodes and publishes on a second connection, whose own network
thread sends. SIGTERM: unsubscribe, publish the last summaries, exit 0.

    python -m bench.relay --port 1883 --threads 2
"""

from __future__ import annotations

import argparse
import os
import threading
from collections import Counter, deque
from typing import Any

import orjson
import paho.mqtt.client as mqtt

from . import all_acked, connect, mqtt_client, subscribe_until_stopped
from .collector import PROBE

EVERY = 18  # ~55 events/s at 1,000 msg/s over 100 devices (W1 gives the agent ~18/s)


class Relay:
    """Counts samples per device and publishes every ``EVERY``-th one as an event."""

    def __init__(self, out: mqtt.Client) -> None:
        self.out = out
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.events: Counter[str] = Counter()
        self.published = self.acked = 0

    def publish(self, topic: str, obj: dict[str, Any]) -> None:
        self.out.publish(topic, orjson.dumps(obj), qos=1)
        with self.lock:  # events and summaries are published from two threads
            self.published += 1

    def on_publish(self, *_: Any) -> None:
        self.acked += 1

    def handle(self, topic: str, payload: bytes) -> None:
        sample = orjson.loads(payload)
        device = topic.split("/")[2]
        with self.lock:
            self.counts[device] += 1
            event = device != PROBE and sample["seq"] % EVERY == 0
            if event:
                self.events[device] += 1
        if event:
            body = {"device": device, "ts": sample["ts"], "seq": sample["seq"]}
            self.publish(f"events/plant/line1/{device}", body)
        elif device == PROBE:  # the bench's readiness probe: its summary at once
            self.flush()

    def flush(self) -> None:
        """A summary for every device that sent samples since the last flush."""
        with self.lock:  # publishing outside the lock: events do not wait for summaries
            counts, self.counts = self.counts, Counter()
            events, self.events = self.events, Counter()
        for device, count in counts.items():
            summary = {"device": device, "count": count, "anomalies": events[device]}
            self.publish(f"summary/plant/line1/{device}", {**summary, "windows": 0})


def worker(relay: Relay, queue: deque, ready: threading.Event, stop: threading.Event) -> None:
    """The two-thread relay's worker: drain what the network thread queued."""
    while not stop.is_set() or queue:
        ready.wait(0.1)
        ready.clear()
        while queue:
            relay.handle(*queue.popleft())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--threads", type=int, choices=(1, 2), default=1)
    p.add_argument("--qos", type=int, choices=(0, 1), default=0)
    args = p.parse_args(argv)

    source = mqtt_client(f"w1-relay-{os.getpid()}")
    out = source if args.threads == 1 else mqtt_client(f"w1-relay-out-{os.getpid()}")
    relay = Relay(out)
    out.on_publish = relay.on_publish
    queue: deque[tuple[str, bytes]] = deque()
    ready, done = threading.Event(), threading.Event()
    thread = threading.Thread(target=worker, args=(relay, queue, ready, done))
    if args.threads == 1:
        source.on_message = lambda _c, _u, m: relay.handle(m.topic, m.payload)
    else:
        source.on_message = lambda _c, _u, m: (queue.append((m.topic, m.payload)), ready.set())
        connect(out, args.port)
        out.loop_start()
        thread.start()
    subscribe_until_stopped(source, args.port, args.qos, 1.0, relay.flush)
    if args.threads == 2:
        done.set()
        thread.join()
    relay.flush()
    ok = all_acked(lambda: relay.acked, lambda: relay.published)
    for client in {source, out}:
        client.disconnect()
        client.loop_stop()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
