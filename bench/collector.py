"""The W1 collector: subscribes to ``events/#`` and ``summary/#`` (QoS 1) and tallies them.

End-to-end latency = arrival time - the event's ``ts``. Summary ``count``s are summed per device
so the bench can check that nothing was lost. Summaries of the readiness probe device
(:data:`PROBE`) only mark the processor ready. Prints ``{"ready": true}`` after its SUBACK,
answers ``stats`` and ``result`` on stdin and stops at EOF.

    python -m bench.collector --port 1883
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from collections import Counter
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt

from . import connect, mqtt_client
from .proc import reply, serve

PROBE = "probe"


class Tally:
    """What arrived on events/# and summary/#."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.latencies: list[float] = []
        self.anomalies = self.windows = self.summaries = self.bad = self.duplicates = 0
        self.ids: set[str] = set()  # a consumer drops what arrives again with a seen id
        self.probe = False

    def on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        arrival = time.time()
        with self.lock:
            try:
                data = json.loads(msg.payload)
                device = data["device"]
                if "id" in data:
                    if data["id"] in self.ids:
                        self.duplicates += 1
                        return
                    self.ids.add(data["id"])
                if msg.topic.startswith("events/"):
                    if device != PROBE:
                        self.latencies.append(arrival - data["ts"])
                elif device == PROBE:
                    self.probe = True
                else:
                    self.counts[device] += data["count"]
                    self.anomalies += data["anomalies"]
                    self.windows += data["windows"]
                    self.summaries += 1
            except (ValueError, KeyError, TypeError):
                self.bad += 1

    def stats(self) -> dict[str, Any]:
        with self.lock:
            total = self.counts.total()
            return {"total": total, "probe": self.probe, "events": len(self.latencies)}

    def result(self) -> dict[str, Any]:
        with self.lock:
            ms = np.array(self.latencies) * 1000
            counts = dict(self.counts)
        pct = {
            f"{k}_ms": round(float(np.percentile(ms, q)), 3) if ms.size else None
            for k, q in (("p50", 50), ("p99", 99), ("max", 100))
        }
        return {
            **self.stats(),
            **pct,
            "counts": counts,
            "anomalies": self.anomalies,
            "windows": self.windows,
            "summaries": self.summaries,
            "bad": self.bad,
            "duplicates": self.duplicates,
        }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args(argv)

    tally = Tally()
    subscribed = threading.Event()
    client = mqtt_client(f"w1-collector-{os.getpid()}")
    client.on_message = tally.on_message
    client.on_subscribe = lambda *_: subscribed.set()
    connect(client, args.port)
    client.subscribe([("events/#", 1), ("summary/#", 1)])
    client.loop_start()
    if not subscribed.wait(10):
        return 1
    reply({"ready": True})
    serve({"stats": tally.stats, "result": tally.result})
    client.disconnect()
    client.loop_stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
