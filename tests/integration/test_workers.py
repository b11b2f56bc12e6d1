"""`workers: 2`: two processes split one pipeline by topic filter; nothing counted twice."""

from __future__ import annotations

import os
import signal
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from tests.support.mqtt import AgentProcess, Collector, kill_left, publish, w1_payloads

pytestmark = pytest.mark.mosquitto


def test_two_worker_processes_split_by_topic_filter(broker, w1_models, tmp_path):
    cfg = {
        "agent": {"id": "wk"},
        "brokers": {"local": {"port": broker.port}},
        "spool": {"path": str(tmp_path / "spool.db")},
        "pipelines": [
            {
                "name": "split",
                "workers": 2,
                "source": {"broker": "local", "topics": ["wk/a/+/t", "wk/b/+/t"], "qos": 1},
                "decoder": {"type": "json", "channels": 8},
                "window": {"size": 32, "hop": 8},
                "handler": {"type": "onnx", "model": str(w1_models[1])},
                "summary": {"every": "1s"},
                "sinks": [
                    {
                        "type": "mqtt",
                        "broker": "local",
                        "events": "wk-ev/{device}",
                        "summaries": "wk-sum/{device}",
                    }
                ],
            }
        ],
    }
    path = tmp_path / "workers.yaml"
    path.write_text(yaml.safe_dump(cfg))
    collector = Collector(broker.port, ["wk-sum/#"])
    agent = AgentProcess(path, {})
    agent.wait_ready()
    agent.wait_ready_count(2)
    items = w1_payloads(devices=20, samples=100, spike_rate=0)
    publish(broker.port, "wk/a/{device}/t", [i for i in items if int(i[0][3:]) < 10], qos=1)
    publish(broker.port, "wk/b/{device}/t", [i for i in items if int(i[0][3:]) >= 10], qos=1)
    collector.wait_for(lambda: sum(s["count"] for s in collector.of("wk-sum/")) >= 2000, 60)
    assert agent.stop() == 0
    summaries = collector.of("wk-sum/")
    collector.close()
    counts, origin = defaultdict(int), defaultdict(set)
    for s in summaries:
        counts[s["device"]] += s["count"]
        origin[s["device"]].add(s["id"].split("-")[2])  # id: wk-split-w<k>-<boot>-...
    assert dict(counts) == {f"dev{d:04d}": 100 for d in range(20)}
    assert all(len(o) == 1 for o in origin.values())  # each device in one process only
    assert {w for o in origin.values() for w in o} == {"w0", "w1"}
    assert origin["dev0000"] != origin["dev0010"]  # line a and line b: different processes


def test_a_worker_process_that_dies_stops_the_agent(broker, w1_models, tmp_path):
    """SIGKILL one of two worker processes: the parent, asleep with no timer, is woken by
    SIGCHLD, logs ``worker_failed`` and exits 1 (a supervisor restarts it)."""
    cfg = {
        "agent": {"id": "wd"},
        "brokers": {"local": {"port": broker.port}},
        "spool": {"path": str(tmp_path / "spool.db")},
        "pipelines": [
            {
                "name": "split",
                "workers": 2,
                "source": {"broker": "local", "topics": ["wd/a/+/t", "wd/b/+/t"]},
                "decoder": {"type": "json", "channels": 8},
                "window": {"size": 32, "hop": 8},
                "handler": {"type": "onnx", "model": str(w1_models[1])},
                "sinks": [{"type": "mqtt", "broker": "local", "summaries": "wd-sum/{device}"}],
            }
        ],
    }
    path = tmp_path / "workers.yaml"
    path.write_text(yaml.safe_dump(cfg))
    agent = AgentProcess(path, {})
    try:
        agent.wait_ready_count(2)
        pid = agent.proc.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        workers = [c for c in children if "spawn_main" in cmdline(c)]
        assert len(workers) == 2, [cmdline(c) for c in children]
        os.kill(int(workers[0]), signal.SIGKILL)
        assert agent.proc.wait(30) == 1
        agent._reader.join(5)
        assert agent.events("worker_failed")
    finally:
        kill_left(agent)


def cmdline(pid: str) -> str:
    return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
