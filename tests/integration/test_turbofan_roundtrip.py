"""Turbofan RUL end to end: a real mosquitto, `edge-agent run -c configs/turbofan-rul.yaml`,
a held-out C-MAPSS engine published one reading per cycle until it fails, then again from
cycle 1 after maintenance; events and summaries collected from the broker."""

from __future__ import annotations

import time

import pytest

from agent.tools.evaluate_rul import messages
from agent.tools.training import cmapss, datasets
from tests.support.mqtt import ROOT, AgentProcess, Collector, publish

pytestmark = pytest.mark.mosquitto


def test_engine_warned_before_failure_and_reset_by_maintenance(broker, tmp_path):
    data = datasets.cmapss_train()
    unit = cmapss.split(data.engines())["held_out"][0]
    rows = data.engine(unit)
    now = time.time() - 2 * len(rows)
    life = messages("esn-1", rows, data.columns, t0=now)
    after = messages("esn-1", rows[:5], data.columns, t0=now + len(rows) + 1)
    collector = Collector(broker.port, ["events/turbofan/#", "summary/turbofan/#"])
    env = {"MQTT_PORT": str(broker.port), "EDGE_AGENT_SPOOL": str(tmp_path / "spool.db")}
    agent = AgentProcess(ROOT / "configs" / "turbofan-rul.yaml", env)
    agent.wait_ready()
    items = [("esn-1", 0, m.payload, None) for m in life + after]
    publish(broker.port, "turbofan/{device}/cycle", items, qos=1)
    assert collector.wait_for(lambda: len(collector.of("events/")) >= 3, timeout=60)
    assert agent.stop() == 0, agent.logs[-20:]
    assert collector.wait_for(lambda: collector.of("summary/"), timeout=10)
    events, summaries = collector.of("events/"), collector.of("summary/")
    collector.close()
    assert [e["event"] for e in events] == ["opened", "escalated", "closed"]
    opened, _, closed = events
    assert opened["device"] == "esn-1" and opened["rul"] < 30 and opened["units"] == "cycles"
    assert len(rows) - opened["seq"] >= 10  # maintenance due at least 10 cycles ahead
    assert closed["reason"] == "reset" and closed["episode"] == opened["episode"]
    assert sum(s["windows"] for s in summaries) == len(rows) - 29  # none spans the restart
    assert min(s["rul_min"] for s in summaries if s.get("rul_min") is not None) < 15
