"""The batched processor gives the same events and summaries as a one-sample-at-a-time
reference, with device churn, out-of-order seq and any batch size."""

from __future__ import annotations

import json
import time

import numpy as np
import orjson
import pytest

from agent.config import parse_config
from agent.records import Message
from agent.stages.processor import Processor, build_processor

T0 = float(int(time.time()))  # within the default max_clock_skew


def w1_config(model: str, max_devices: int = 100_000) -> dict:
    return {
        "brokers": {"local": {}},
        "pipelines": [
            {
                "name": "w1",
                "source": {"broker": "local", "topics": ["plant/+/+/telemetry"]},
                "decoder": {"type": "json", "channels": 8},
                "window": {"size": 32, "hop": 8, "max_devices": max_devices},
                "handler": {"type": "onnx", "model": model, "threshold": 1.5},
                "rule": {"events": "windows"},
                "sinks": [{"type": "stdout"}],
            }
        ],
    }


def make_processor(model: str) -> Processor:
    cfg = parse_config(w1_config(model), "test")
    return build_processor(cfg.pipelines[0])


def stream(seed: int = 5, n: int = 6000):
    """Churning devices (ids come and go), shuffled seq, ~1% spikes."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        d = f"dev{int(rng.integers(0, 30)) + i // 1500 * 20}"  # the population shifts
        v = np.sin(i * 0.1 + np.arange(8)) + rng.normal(0, 0.05, 8)
        if rng.random() < 0.01:
            v += 10
        seq = int(rng.integers(0, 1000))  # out of order: the window keeps arrival order
        body = orjson.dumps({"ts": T0 + i, "seq": seq, "v": v.tolist()})
        out.append(Message(f"plant/line1/{d}/telemetry", body, 0.0))
    return out


def reference(msgs, handler):
    """One sample at a time, a Python list per device, batch-1 inference."""
    hist, events, counts, windows = {}, [], {}, {}
    for m in msgs:
        o = orjson.loads(m.payload)
        d = m.topic.split("/")[2]
        h = hist.setdefault(d, [])
        h.append(np.array(o["v"], np.float32))
        counts[d] = counts.get(d, 0) + 1
        if len(h) >= 32 and (len(h) - 32) % 8 == 0:
            score = float(handler.infer(np.stack(h[-32:])[None])[0])
            windows[d] = windows.get(d, 0) + 1
            if score > 1.5:
                events.append((d, o["seq"], o["ts"], round(score, 4)))
    return events, counts, windows


@pytest.mark.parametrize("batch", [1, 37, 1024, 6000])
def test_same_events_and_summaries_as_reference(w1_models, batch):
    msgs = stream()
    proc = make_processor(str(w1_models[0]))
    want_events, want_counts, want_windows = reference(msgs, proc.handler)
    got = []
    for i in range(0, len(msgs), batch):
        events, _ = proc.process(msgs[i : i + batch])
        got += [
            (e.device, e.payload["seq"], e.payload["ts"], round(e.payload["score"], 4))
            for e in events
        ]
    records = proc.flush()
    summaries = [r.payload for r in records if r.kind == "summary"]
    assert want_events and got == want_events
    assert {s["device"]: s["count"] for s in summaries} == want_counts
    assert {s["device"]: s["windows"] for s in summaries if s["windows"]} == want_windows
    assert sum(s["anomalies"] for s in summaries) == len(want_events)
    (stats,) = [r.payload for r in records if r.kind == "stats"]
    assert json.loads(json.dumps(stats))["anomalies"] == len(want_events)  # plain types
