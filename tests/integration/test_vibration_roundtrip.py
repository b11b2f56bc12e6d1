"""Bearings end to end: a real mosquitto, `edge-agent run -c configs/vibration.yaml`, held-out
CWRU blocks published as payloads (normal at 48 kHz, an outer-race fault at 12 kHz, one block
at an unsupported rate), events and stats collected from the broker."""

from __future__ import annotations

import time

import pytest
from edge_agent_vibration import cwru
from edge_agent_vibration.evaluate import payloads

from tests.support.mqtt import ROOT, AgentProcess, Collector, publish

pytestmark = pytest.mark.mosquitto


def test_normal_quiet_fault_named_other_rate_counted(broker):
    recs = {r.name: r for r in cwru.find(cwru.shipped_root())}
    topic, now = "vib/{device}/accel", time.time()
    normal = payloads(recs["1797_Normal"], 4096, "heldout", topic, now)
    outer = payloads(recs["1797_OR@6_7_DE12"], 1024, "heldout", topic, now)
    odd = payloads(recs["1797_B_7_DE12"], 1024, "heldout", topic, now)[:1]
    odd[0].payload = odd[0].payload.replace(b'"fs":12000', b'"fs":12800')
    collector = Collector(broker.port, ["events/vib/#", "summary/vib/#", "stats/#"])
    agent = AgentProcess(ROOT / "configs" / "vibration.yaml", {"MQTT_PORT": str(broker.port)})
    agent.wait_ready()
    items = [(m.topic.split("/")[1], 0, m.payload, None) for m in normal + outer + odd]
    publish(broker.port, "vib/{device}/accel", items, qos=1)
    assert collector.wait_for(lambda: collector.of("events/"), timeout=60)
    assert agent.stop() == 0, agent.logs[-20:]  # the stop closes the open episode
    assert collector.wait_for(lambda: len(collector.of("events/")) >= 2, timeout=10)
    assert collector.wait_for(lambda: collector.of("stats/"), timeout=10)
    summaries = {s["device"]: s for s in collector.of("summary/")}
    events = collector.of("events/")
    stats = collector.of("stats/")[-1]
    collector.close()
    assert summaries["1797_Normal"]["windows"] == len(normal)
    assert summaries["1797_Normal"]["anomalies"] == 0
    assert {e["device"] for e in events} == {"1797_OR@6_7_DE12"}
    assert summaries["1797_OR@6_7_DE12"]["anomalies"] == len(outer)
    assert [e["event"] for e in events] == ["opened", "closed"]  # one episode per fault
    opened, closed = events
    assert opened["class"] == "outer" and opened["probabilities"]["normal"] < 0.5
    assert closed["reason"] == "stop" and closed["episode"] == opened["episode"]
    assert stats["errors"] == {"sample_rate": 1}
    assert "1797_B_7_DE12" not in summaries
