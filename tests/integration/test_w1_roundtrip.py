"""W1 end to end: a real mosquitto, `edge-agent run -c configs/w1.yaml`, a collector."""

from __future__ import annotations

import signal
from collections import Counter

import pytest

from tests.support.mqtt import ROOT, AgentProcess, Collector, publish, w1_payloads

pytestmark = pytest.mark.mosquitto


@pytest.mark.parametrize(("qos", "stop_signal"), [(0, signal.SIGTERM), (1, signal.SIGINT)])
def test_w1_round_trip_loses_nothing(broker, w1_models, tmp_path, qos, stop_signal):
    """100 devices x 400 samples: every sample in exactly one summary, every spike an event;
    SIGTERM and SIGINT (Ctrl-C) both stop the agent cleanly with exit 0."""
    collector = Collector(broker.port, ["events/plant/line1/#", "summary/plant/line1/#"])
    agent = AgentProcess(
        ROOT / "configs" / "w1.yaml",
        {
            "MQTT_PORT": str(broker.port),
            "W1_MODEL": str(w1_models[1]),
            "W1_QOS": str(qos),
            "W1_SPOOL": str(tmp_path / "spool.db"),
        },
    )
    agent.wait_ready()
    items = w1_payloads(devices=100, samples=400)
    publish(broker.port, "plant/line1/{device}/telemetry", items, qos=qos)
    total = len(items)
    collector.wait_for(
        lambda: sum(s["count"] for s in collector.of("summary/")) >= total, timeout=60
    )
    assert agent.stop(stop_signal) == 0, agent.logs[-20:]
    assert agent.events("agent_stopped")
    collector.settle()
    summaries = collector.of("summary/")
    events = collector.of("events/")
    collector.close()

    per_device = Counter()
    for s in summaries:
        per_device[s["device"]] += s["count"]
        assert {"device", "count", "windows", "mean", "max", "anomalies"} <= s.keys()
    assert sum(per_device.values()) == total
    assert all(per_device[f"dev{d:04d}"] == 400 for d in range(100))
    # windows: first at the 32nd sample, then every 8th: (400 - 32) // 8 + 1 = 47 per device
    assert sum(s["windows"] for s in summaries) == 100 * 47
    assert sum(s["anomalies"] for s in summaries) == len(events)
    spikes = [(d, k) for d, k, _, spiked in items if spiked]
    assert spikes, "the generator injected no spike"
    for d, k in spikes:
        assert any(e["device"] == d and k <= e["seq"] <= k + 31 for e in events), (d, k)
    for e in events:
        assert e["score"] > 1.5 and {"device", "ts", "seq", "score"} <= e.keys()
    assert len({e["id"] for e in events}) == len(events)
