"""Reloads that restart a pipeline (its source or sinks changed) under QoS 1 load, on a
persistent session: what a fleet rollback relies on. Every sample is processed exactly once,
record ids stay unique, a sink added by a reload connects and its connection is released."""

from __future__ import annotations

import collections
import signal
import uuid

import pytest
import yaml

from agent.config import parse_config
from agent.runtime.agent import Agent
from tests.integration.test_fleet import LINE_ENV, Load, _local, _pipeline
from tests.integration.test_operate import _score_model
from tests.support.mqtt import AgentProcess, Collector

pytestmark = pytest.mark.mosquitto


def test_restarted_pipeline_processes_every_qos1_sample_exactly_once(broker, tmp_path):
    """Four SIGHUP reloads that each restart the pipeline while samples flow: one event per
    sample (threshold below every score), none twice. A resumed session's redelivered
    messages used to be numbered with the previous connection and never acknowledged, so
    they came back (and were counted again) at every later restart."""
    model = _score_model(tmp_path / "mean.onnx")
    prefix = f"x{uuid.uuid4().hex[:6]}"
    line = f"{prefix}/a"
    pipe = _pipeline(model)
    pipe.update(
        window="none",
        handler={"type": "onnx", "model": str(model), "threshold": -1e9},
        rule={"events": "windows"},
    )
    cfg = {
        "agent": {"id": prefix},
        "brokers": {"local": {"host": "127.0.0.1", "port": broker.port, "clean_start": False}},
        "spool": {"path": str(tmp_path / "spool.db")},
        "pipelines": [pipe],
    }
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg))
    col = Collector(broker.port, [f"out/{prefix}/#"])
    agent = AgentProcess(path, {LINE_ENV: line})
    agent.wait_ready(60)
    load = Load(broker.port, [line])
    load.start()
    for k in range(4):
        # each restart waits until more samples were processed since the last one
        seen = len(col.of(f"out/{line}/ev"))
        assert col.wait_for(lambda seen=seen: len(col.of(f"out/{line}/ev")) > seen + 100)
        pipe["sinks"][0]["stats"] = f"stats-{k}" if k % 2 == 0 else None  # sinks change
        path.write_text(yaml.safe_dump(cfg))
        agent.proc.send_signal(signal.SIGHUP)
        assert col.wait_for(lambda k=k: len(agent.events("reload_applied")) == k + 1, 30)
    assert all(e["restarted"] == ["w1"] for e in agent.events("reload_applied"))
    sent = load.finish()[line]

    def samples() -> collections.Counter:
        return collections.Counter((e["device"], e["seq"]) for e in col.of(f"out/{line}/ev"))

    assert col.wait_for(lambda: len(samples()) >= sent), (len(samples()), sent)
    assert agent.stop() == 0
    twice = {s: n for s, n in samples().items() if n > 1}
    assert len(samples()) == sent and not twice, (sent, list(twice.items())[:5])
    col.close()


def test_reload_restart_keeps_record_ids_unique_and_releases_an_unused_connection(
    broker, w1_models, tmp_path, monkeypatch
):
    """What a rollback relies on: a sink added by a reload connects (or shows as down), its
    connection is stopped once no sink uses it, and a restarted pipeline goes on numbering
    its records instead of repeating the ids of its predecessor."""
    raw = _local(broker.port, "ids", ["g"], "fleet-ids", "", tmp_path, w1_models[1])
    del raw["fleet"]
    monkeypatch.setenv(LINE_ENV, "ids/x")
    good = parse_config(raw, "good")
    raw["pipelines"] = [_pipeline(w1_models[1], sink_broker="spare")]
    down = parse_config(raw, "down")
    agent = Agent(good)
    agent.build()
    agent.start()
    try:
        first = agent.units["w1"].processor._next_id()
        agent.apply(down)
        roles = {(b, r) for b, r, _ in agent.connection_states()}
        assert ("spare", "upstream") in roles
        assert not agent._connections["spare"].connected.is_set()
        assert agent._connections["spare"].client._thread is not None  # started: it retries
        agent.apply(good)
        assert "spare" not in {b for b, _, _ in agent.connection_states()}
        later = agent.units["w1"].processor._next_id()
        prefix, n = first.rsplit("-", 1)
        assert later.rsplit("-", 1)[0] == prefix and int(later.rsplit("-", 1)[1]) > int(n)
    finally:
        agent.stop()
