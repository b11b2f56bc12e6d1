"""The naive W1 reference agent (docs/workload.md), the yardstick of the benchmark.

One paho callback per message: ``json.loads``, ``np.roll`` of the device's window, a batch-1
onnxruntime call every hop, the event published at once; per-device summaries every period.
Simple and correct on purpose. SIGTERM: unsubscribe, publish the last summaries, exit 0.

    python -m bench.naive_agent --port 1883 --model w1_fp32.onnx --qos 0
"""

from __future__ import annotations

import argparse
import json
import math
import os
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort
import paho.mqtt.client as mqtt

from . import all_acked, mqtt_client, subscribe_until_stopped

WINDOW, HOP, CHANNELS = 32, 8, 8


@dataclass
class Device:
    """A device's window and its counters for the current summary period."""

    name: str
    window: np.ndarray = field(default_factory=lambda: np.zeros((WINDOW, CHANNELS), np.float32))
    seen: int = 0
    count: int = 0
    windows: int = 0
    total: float = 0.0
    max: float = -math.inf
    anomalies: int = 0


class NaiveAgent:
    """W1 per message: decode, roll the window, score it every hop, publish events."""

    def __init__(self, client: mqtt.Client, model: str, threshold: float) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        self.client = client
        self.threshold = threshold
        self.devices: dict[str, Device] = {}
        self.lock = threading.Lock()
        self.closed = False
        self.bad = 0
        self.published = 0
        self.acked = 0

    def publish(self, topic: str, obj: dict[str, Any]) -> None:
        self.client.publish(topic, json.dumps(obj), qos=1)
        self.published += 1

    def on_publish(self, *_: Any) -> None:
        self.acked += 1

    def on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            sample = json.loads(msg.payload)
            ts, seq, values = sample["ts"], sample["seq"], sample["v"]
        except (ValueError, KeyError, TypeError):
            self.bad += 1
            return
        base = msg.topic.rsplit("/", 1)[0]  # plant/line1/<device>
        with self.lock:
            if self.closed:
                return
            dev = self.devices.get(base) or self.devices.setdefault(
                base, Device(base.split("/")[2])
            )
            dev.window = np.roll(dev.window, -1, axis=0)
            dev.window[-1] = values
            dev.seen += 1
            dev.count += 1
            if dev.seen < WINDOW or (dev.seen - WINDOW) % HOP:
                return
            score = float(self.session.run(None, {"input": dev.window.reshape(1, -1)})[0][0])
            dev.windows += 1
            dev.total += score
            dev.max = max(dev.max, score)
            if score > self.threshold:
                dev.anomalies += 1
                event = {"device": dev.name, "ts": ts, "seq": seq, "score": score}
                self.publish("events/" + base, event)

    def flush(self) -> None:
        """Publish a summary for every device that sent samples since the last flush."""
        with self.lock:
            for base, dev in self.devices.items():
                if not dev.count:
                    continue
                self.publish(
                    "summary/" + base,
                    {
                        "device": dev.name,
                        "count": dev.count,
                        "windows": dev.windows,
                        "mean": dev.total / dev.windows if dev.windows else None,
                        "max": dev.max if dev.windows else None,
                        "anomalies": dev.anomalies,
                    },
                )
                dev.count = dev.windows = dev.anomalies = 0
                dev.total, dev.max = 0.0, -math.inf

    def close(self) -> None:
        """Ignore samples from now on and publish the last summaries."""
        with self.lock:
            self.closed = True
        self.flush()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model", required=True, help="W1 ONNX model")
    p.add_argument("--qos", type=int, choices=(0, 1), default=0)
    p.add_argument("--threshold", type=float, default=1.5)
    p.add_argument("--period", type=float, default=1.0, help="summary period, seconds")
    args = p.parse_args(argv)

    client = mqtt_client(f"w1-naive-{os.getpid()}")
    agent = NaiveAgent(client, args.model, args.threshold)
    client.on_message = agent.on_message
    client.on_publish = agent.on_publish
    subscribe_until_stopped(client, args.port, args.qos, args.period, agent.flush)
    agent.close()
    ok = all_acked(lambda: agent.acked, lambda: agent.published)
    client.disconnect()
    client.loop_stop()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
