"""The README's starter: `configs/starter.yaml` as shipped, a real mosquitto, three devices."""

from __future__ import annotations

import time

import numpy as np
import orjson
import pytest

from tests.support.mqtt import ROOT, AgentProcess, Collector, publish

pytestmark = pytest.mark.mosquitto

SAMPLES, FAULT_AT = 1000, 800


def starter_payloads(seed: int = 3):
    """Three devices of three channels around the README's operating point; pump-3's second
    channel steps up by 30 noise widths at ``FAULT_AT`` (after its warm-up)."""
    rng = np.random.default_rng(seed)
    level = np.array([0.21, 0.27, 2.2])
    t0 = time.time() - SAMPLES * 0.1
    items = []
    for k in range(SAMPLES):
        for d in ("pump-1", "pump-2", "pump-3"):
            v = level + rng.normal(0, 0.01, 3)
            if d == "pump-3" and k >= FAULT_AT:
                v[1] += 0.3
            body = orjson.dumps({"ts": t0 + k * 0.1, "values": v.round(5).tolist()})
            items.append((d, k, body, False))
    return items


def test_starter_config_counts_every_sample_and_reports_the_fault(broker, tmp_path):
    """Run as the README says: every sample in a summary; pump-3's fault opens one episode
    after its onset, naming the faulted channel, closed when the agent stops; the healthy
    pumps open none."""
    collector = Collector(broker.port, ["edge/starter/#"])
    agent = AgentProcess(
        ROOT / "configs" / "starter.yaml",
        {"MQTT_PORT": str(broker.port), "EDGE_AGENT_SPOOL": str(tmp_path / "spool.db")},
    )
    agent.wait_ready()
    items = starter_payloads()
    publish(broker.port, "factory/line1/{device}/data", items, qos=1)
    assert agent.stop() == 0, agent.logs[-20:]
    # The stop flushes the last summaries before the agent exits.
    assert collector.wait_for(
        lambda: sum(s["count"] for s in collector.of("edge/starter/summary/")) >= len(items), 30
    )
    summaries = collector.of("edge/starter/summary/")
    events = collector.of("edge/starter/events/")
    collector.close()
    for d in ("pump-1", "pump-2", "pump-3"):
        assert sum(s["count"] for s in summaries if s["device"] == d) == SAMPLES, d
    fault_ts = orjson.loads(items[FAULT_AT * 3 + 2][2])["ts"]
    assert [(e["device"], e["event"]) for e in events] == [
        ("pump-3", "opened"),
        ("pump-3", "closed"),
    ], events
    opened, closed = events
    assert opened["onset"] >= fault_ts and opened["cause"][0]["channel"] == 1
    assert closed["reason"] == "stop" and closed["episode"] == opened["episode"]
