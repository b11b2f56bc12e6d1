"""A reload is the Agent diffing its running pipelines by name: a removed pipeline's unit
stops alone, the others keep their unit (source, worker, forwarders) whatever their position
in the new config, and a pipeline added under a removed name gets a fresh unit."""

from __future__ import annotations

import uuid

import pytest

from agent.config import parse_config
from agent.runtime.agent import Agent
from tests.support.waiting import until

pytestmark = pytest.mark.mosquitto


def _config(port: int, prefix: str, names: list[str], tmp_path) -> dict:
    def pipeline(name: str) -> dict:
        return {
            "name": name,
            "source": {"broker": "local", "topics": [f"{prefix}/{name}/+/t"]},
            "decoder": {"type": "json", "device": "topic[2]", "channels": 2},
            "window": {"size": 8, "hop": 4},
            "calibration": {"warmup": 64},
            "handler": {"type": "baseline", "threshold": "auto"},
            "sinks": [{"type": "stdout"}],
        }

    return {
        "agent": {"id": prefix},
        "brokers": {"local": {"host": "127.0.0.1", "port": port}},
        "spool": {"path": str(tmp_path / "spool.db")},
        "pipelines": [pipeline(n) for n in names],
    }


def test_reload_keeps_units_by_name_not_by_position(broker, tmp_path):
    prefix = f"u{uuid.uuid4().hex[:6]}"

    def config(*names: str):
        return parse_config(_config(broker.port, prefix, list(names), tmp_path), "t")

    agent = Agent(config("a", "b"))
    agent.build()
    agent.start()
    try:
        a, b = agent.units["a"], agent.units["b"]
        assert until(lambda: a.source.subscribed.is_set() and b.source.subscribed.is_set(), 15)

        report = agent.apply(config("b"))  # b moves to the first position
        assert report.removed == ["a"] and report.unchanged == ["b"], report
        assert list(agent.units) == ["b"] and agent.units["b"] is b
        assert {r for _, r, _ in agent.connection_states()} == {"source:b"}
        assert b.source.conn.connected.is_set() and b.error is None

        report = agent.apply(config("b", "a"))
        assert report.added == ["a"] and report.unchanged == ["b"], report
        assert agent.units["b"] is b and agent.units["a"] is not a
        fresh = agent.units["a"]
        assert until(lambda: fresh.source.subscribed.is_set(), 15)
        assert {r for _, r, _ in agent.connection_states()} == {"source:a", "source:b"}
    finally:
        agent.stop()
