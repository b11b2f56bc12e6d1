"""Client ids: every connection of an agent, and of its worker processes, has its own, also
when ``client_id`` is configured; a broker closes a connection whenever another one
connects with the same id."""

from __future__ import annotations

import uuid

import pytest

from agent.config import parse_config
from agent.runtime import workers
from agent.runtime.agent import Agent
from tests.support.mqtt import Collector, publish, w1_payloads
from tests.support.waiting import until


def _config(port: int, prefix: str, model, spool, client_id: str, workers: int = 1) -> dict:
    def pipeline(name: str) -> dict:
        return {
            "name": name,
            "workers": workers,
            "source": {
                "broker": "local",
                "topics": [f"{prefix}/{name}/a/+/t", f"{prefix}/{name}/b/+/t"],
                "qos": 1,
            },
            "decoder": {"type": "json", "device": "topic[3]", "channels": 8},
            "window": {"size": 32, "hop": 8},
            "handler": {"type": "onnx", "model": str(model)},
            "summary": {"every": "1s"},
            "sinks": [{"type": "mqtt", "broker": "local", "summaries": f"{prefix}-sum/{{device}}"}],
        }

    return {
        "agent": {"id": f"a{uuid.uuid4().hex[:6]}", "status_topic": f"{prefix}-status"},
        "brokers": {"local": {"port": port, "client_id": client_id}},
        "spool": {"path": str(spool)},
        "pipelines": [pipeline("p1"), pipeline("p2")],
    }


def _sources(agent: Agent) -> list:
    return [u.source for u in agent.units.values()]


def _ids(cfg) -> list[str]:
    """The client ids of every MQTT connection an agent for ``cfg`` opens."""
    agent = Agent(cfg)
    agent.build()
    try:
        return [s.conn.client_id for s in _sources(agent)] + [
            c.client_id for c in agent._connections.values()
        ]
    finally:
        agent.spool.close()


def test_worker_processes_and_roles_get_distinct_ids_from_a_configured_one(w1_models, tmp_path):
    cfg = parse_config(
        _config(1883, "x", w1_models[1], tmp_path / "s.db", "gw1", workers=2), "test"
    )
    parent, children = workers.split(cfg)
    assert parent is None and len(children) == 4
    ids = [i for child in children for i in _ids(child)]
    assert len(ids) == 8 and len(set(ids)) == 8, ids
    assert all(i.startswith("gw1-") for i in ids)


@pytest.mark.mosquitto
def test_a_configured_client_id_does_not_make_connections_take_turns(broker, w1_models, tmp_path):
    """Two sources and the upstream sink share ``client_id: gw-...``: each stays connected
    from the start (one connect each) and every sample is counted."""
    prefix = f"c{uuid.uuid4().hex[:6]}"
    raw = _config(
        broker.port, prefix, w1_models[1], tmp_path / "s.db", f"gw-{uuid.uuid4().hex[:6]}"
    )
    agent = Agent(parse_config(raw, "test"))
    agent.build()
    agent.start()
    col = Collector(broker.port, [f"{prefix}-sum/#"])
    try:
        upstream = list(agent._connections.values())
        assert until(
            lambda: (
                all(s.subscribed.is_set() for s in _sources(agent))
                and all(c.connected.is_set() for c in upstream)
            ),
            15,
        ), "the agent's connections were never all up together"
        items = w1_payloads(devices=4, samples=50, spike_rate=0)
        publish(broker.port, prefix + "/p1/a/{device}/t", items, qos=1)
        publish(broker.port, prefix + "/p2/b/{device}/t", items, qos=1)
        assert col.wait_for(lambda: sum(m["count"] for m in col.of(prefix)) == 2 * len(items))
        assert [s.conn.connects for s in _sources(agent)] == [1, 1]
        assert [c.connects for c in upstream] == [1]
    finally:
        col.close()
        agent.stop()
