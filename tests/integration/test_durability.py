"""Acknowledged means durable: real brokers, a real spool file, ``edge-agent run`` killed.

Each test prints its figures (run with -s); docs/reliability.md quotes them.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml

from agent.testing.mosquitto import Mosquitto
from tests.support.faults import line_config, samples_per_device, tally
from tests.support.mqtt import AgentProcess, Collector, kill_left, publish, w1_payloads

pytestmark = [pytest.mark.mosquitto, pytest.mark.slow]


def figures(name: str, **numbers: object) -> None:
    print(f"\nFIGURES {name}: " + ", ".join(f"{k}={v}" for k, v in numbers.items()))


def _config(tmp_path, broker, up_port, model, line, every="1h"):
    period = {"summary": {"every": every}}
    cfg = line_config(tmp_path, line, broker.port, up_port, model, period, beat=True)
    return cfg, f"status/{line}"


def summed(col: Collector) -> int:
    """Samples counted in the summaries collected so far, each summary id once."""
    return sum(samples_per_device(tally(col.of("summary/"))[0]).values())


def bodies_by_id(col: Collector) -> dict[str, set]:
    """Every distinct payload collected under each record id."""
    bodies: dict[str, set] = {}
    for _, m in col.messages:
        bodies.setdefault(m["id"], set()).add(repr(sorted(m.items())))
    return bodies


def decoded(status: Collector, topic: str) -> int:
    beats = [m for m in status.of(topic) if "pipelines" in m]
    return beats[-1]["pipelines"]["w1"]["decoded"] if beats else 0


def test_sigkill_between_flushes_loses_no_acknowledged_sample(broker, w1_models, tmp_path):
    """Every sample is acknowledged, none flushed yet (1 h period), then SIGKILL: after a
    restart the summaries upstream hold every sample exactly once, and no id twice."""
    line = uuid.uuid4().hex[:8]
    (tmp_path / "up").mkdir()
    up = Mosquitto(workdir=tmp_path / "up").start()
    col = Collector(up.port, ["summary/#", "events/#", "stats/#"])
    cfg, status_topic = _config(tmp_path, broker, up.port, w1_models[1], line)
    status = Collector(broker.port, [status_topic])
    items = w1_payloads(devices=20, samples=150)
    agent = AgentProcess(cfg, {})
    again = None
    try:
        agent.wait_ready()
        publish(broker.port, f"plant/{line}/{{device}}/telemetry", items, qos=1)
        assert status.wait_for(lambda: decoded(status, status_topic) >= len(items), 30)
        assert not col.of("summary/")  # nothing flushed: every count is between flushes
        agent.proc.send_signal(signal.SIGKILL)
        agent.proc.wait(10)
        again = AgentProcess(cfg, {})
        again.wait_ready()
        assert col.wait_for(lambda: summed(col) >= len(items), 30)
        assert again.stop() == 0, again.logs[-20:]
        col.settle()
    finally:
        kill_left(agent, again)
        up.stop()
    summaries, dup = tally(col.of("summary/"))
    ids = [m["id"] for _, m in col.messages]
    bodies = bodies_by_id(col)
    per_device = samples_per_device(summaries)
    recovered = [s for s in summaries.values() if s.get("recovered")]
    col.close()
    status.close()
    figures(
        "sigkill_between_flushes",
        samples=len(items),
        samples_in_summaries=sum(per_device.values()),
        recovered_summaries=len(recovered),
        duplicates=dup,
        ids=len(ids),
    )
    assert all(per_device[f"dev{d:04d}"] == 150 for d in range(20)), per_device
    assert len(recovered) == 20
    assert all(len(b) == 1 for b in bodies.values()), "an id was used for two payloads"


def test_ids_unique_across_rebuild_reloads_under_load_and_restarts(broker, w1_models, tmp_path):
    """Two reloads that rebuild the pipeline (``source.queue`` changed) while messages flow,
    then a restart on the same spool: no id names two different records, nothing is lost."""
    line = uuid.uuid4().hex[:8]
    (tmp_path / "up").mkdir()
    up = Mosquitto(workdir=tmp_path / "up").start()
    col = Collector(up.port, ["summary/#", "events/#", "stats/#"])
    cfg, _ = _config(tmp_path, broker, up.port, w1_models[1], line, every="0.2s")
    items = w1_payloads(devices=20, samples=300, spike_rate=0.02)
    topic = f"plant/{line}/{{device}}/telemetry"
    agent = AgentProcess(cfg, {})
    again = None
    try:
        agent.wait_ready()
        third = len(items) // 3
        for k, queue in enumerate((5000, 6000)):
            sender = threading.Thread(
                target=publish, args=(broker.port, topic, items[k * third : (k + 1) * third], 1)
            )
            sender.start()
            doc = yaml.safe_load(cfg.read_text())
            doc["pipelines"][0]["source"]["queue"] = queue
            cfg.write_text(yaml.safe_dump(doc))
            agent.proc.send_signal(signal.SIGHUP)
            assert col.wait_for(lambda n=k + 1: len(agent.events("reload_applied")) >= n, 30)
            sender.join()
        assert all(e["restarted"] == ["w1"] for e in agent.events("reload_applied"))
        assert agent.stop() == 0, agent.logs[-20:]
        again = AgentProcess(cfg, {})
        again.wait_ready()
        publish(broker.port, topic, items[2 * third :], qos=1)
        assert col.wait_for(lambda: summed(col) >= len(items), 60)
        assert again.stop() == 0, again.logs[-20:]
        col.settle()
    finally:
        kill_left(agent, again)
        up.stop()
    bodies = bodies_by_id(col)
    conflicts = sum(len(b) > 1 for b in bodies.values())
    summaries, dup = tally(col.of("summary/"))
    counted = sum(samples_per_device(summaries).values())
    col.close()
    figures(
        "ids_rebuild_reloads",
        samples=len(items),
        records=len(bodies),
        id_conflicts=conflicts,
        samples_in_summaries_dedup_by_id=counted,
        redelivered_samples=counted - len(items),
        duplicates=dup,
    )
    assert conflicts == 0
    # At least once: a rebuild under load can hand already-counted messages back (the
    # broker redelivers them to the new source; also before these changes); none is lost.
    per_device = samples_per_device(summaries)
    assert all(per_device[f"dev{d:04d}"] >= 300 for d in range(20)), per_device


def test_one_bad_seq_in_a_burst_costs_only_itself(broker, w1_models, tmp_path):
    """A ``"seq": 1e30`` among 400 good messages (the issue's probe): 400 samples counted,
    one ``schema`` error, one dead letter, no ``internal``."""
    line = uuid.uuid4().hex[:8]
    col = Collector(broker.port, [f"sum-{line}/#", f"stats-{line}/#", f"dead/{line}/#"])
    cfg, _ = _config(tmp_path, broker, broker.port, w1_models[1], line, every="0.5s")
    doc = yaml.safe_load(cfg.read_text())
    pipe = doc["pipelines"][0]
    pipe["source"]["dead_letter"] = f"dead/{line}/{{kind}}"
    pipe["sinks"][0].update(summaries=f"sum-{line}/{{device}}", stats=f"stats-{line}/{{pipeline}}")
    cfg.write_text(yaml.safe_dump(doc))
    items = w1_payloads(devices=10, samples=40)
    bad = (items[0][0], -1, b'{"ts": %f, "seq": 1e30, "v": [1,2,3,4,5,6,7,8]}' % 1e9, False)
    burst = [*items[:200], bad, *items[200:]]
    agent = AgentProcess(cfg, {})
    try:
        agent.wait_ready()
        publish(broker.port, f"plant/{line}/{{device}}/telemetry", burst, qos=1)
        assert col.wait_for(lambda: sum(m["count"] for m in col.of(f"sum-{line}")) >= 400, 30)
        assert col.wait_for(lambda: col.of(f"dead/{line}/"), 10)
        assert agent.stop() == 0, agent.logs[-20:]
    finally:
        kill_left(agent)
    stats = col.of(f"stats-{line}/")
    col.close()
    assert sum(m["count"] for m in col.of(f"sum-{line}")) == 400
    assert stats[-1]["errors"] == {"schema": 1}, stats[-1]["errors"]
    assert [t for t, _, _ in col.raw if t.startswith("dead/")] == [f"dead/{line}/schema"]


FLAKY_PLUGIN = """
import numpy as np
from typing import Literal
from agent.handlers.onnx_model import OnnxHandler, OnnxHandlerConfig

class Config(OnnxHandlerConfig):
    type: Literal["marked_window_raises"]

class Handler(OnnxHandler):
    \"\"\"The W1 autoencoder with a defect: a window whose newest sample is 999 raises.\"\"\"

    config_model = Config

    def infer(self, batch):
        if (batch[:, -1, 0] == 999.0).any():
            raise RuntimeError("handler defect on a marked window")
        return super().infer(batch)
"""


def _install_plugin(site: Path) -> dict[str, str]:
    """A plugin distribution as pip leaves it (dist-info with an entry point); the
    environment that puts it on the agent's path."""
    info = site / "acme_flaky-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-flaky\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[edge_agent.handlers]\nmarked_window_raises = acme_flaky:Handler\n"
    )
    (site / "acme_flaky.py").write_text(FLAKY_PLUGIN)
    path = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": os.pathsep.join([str(site), *([path] if path else [])])}


def test_a_handler_that_raises_on_one_window_costs_only_that_message(broker, w1_models, tmp_path):
    """A plugin handler raises for one device's window in a burst of 400 QoS 1 messages:
    every good sample is counted in the summaries upstream, the message whose window
    raised is counted once as ``internal`` and dead-lettered. Before: its whole batch was
    counted ``internal``, acknowledged and lost, and nothing was dead-lettered."""
    line = uuid.uuid4().hex[:8]
    env = _install_plugin(tmp_path / "site")
    col = Collector(broker.port, [f"sum-{line}/#", f"stats-{line}/#", f"dead/{line}/#"])
    cfg, _ = _config(tmp_path, broker, broker.port, w1_models[1], line, every="0.5s")
    doc = yaml.safe_load(cfg.read_text())
    pipe = doc["pipelines"][0]
    pipe["source"]["dead_letter"] = f"dead/{line}/{{kind}}"
    pipe["window"]["hop"] = 1  # every sample from the 32nd on completes a window
    pipe["handler"]["type"] = "marked_window_raises"
    pipe["sinks"][0].update(summaries=f"sum-{line}/{{device}}", stats=f"stats-{line}/{{pipeline}}")
    cfg.write_text(yaml.safe_dump(doc))
    items = w1_payloads(devices=10, samples=40)
    marked = b'{"ts": %f, "seq": 40, "v": [999,0,0,0,0,0,0,0]}' % (time.time())
    bad = (items[0][0], 40, marked, False)
    burst = [*items[:350], bad, *items[350:]]
    agent = AgentProcess(cfg, env)
    try:
        agent.wait_ready()
        publish(broker.port, f"plant/{line}/{{device}}/telemetry", burst, qos=1)
        assert col.wait_for(lambda: col.of(f"dead/{line}/"), 30), agent.logs[-10:]
        assert col.wait_for(lambda: sum(m["count"] for m in col.of(f"sum-{line}")) >= 400, 30)
        assert agent.stop() == 0, agent.logs[-20:]
    finally:
        kill_left(agent)
    stats = col.of(f"stats-{line}/")
    col.close()
    counted = sum(m["count"] for m in col.of(f"sum-{line}"))
    failed = agent.events("message_failed")
    figures("handler_raises_on_one_window", sent=len(burst), counted=counted, dead=1)
    assert counted == 400
    assert stats[-1]["errors"] == {"internal": 1}, stats[-1]["errors"]
    assert [(t, p) for t, p, _ in col.raw if t.startswith("dead/")] == [
        (f"dead/{line}/internal", marked)
    ]
    assert failed and failed[0]["topic"] == f"plant/{line}/{items[0][0]}/telemetry"
    assert failed[0]["devices"] == [items[0][0]]
    assert "handler defect on a marked window" in failed[0]["error"]


def test_disk_full_pauses_intake_and_resumes_with_nothing_lost(broker, w1_models, tmp_path):
    """The spool's filesystem fills up mid-stream (a real tmpfs): the agent stays up, reports
    ``write_failing`` in its heartbeat, takes no more input (QoS 1: the broker keeps it), and
    once space is freed counts every sample, with no id used twice."""
    from tests.support.disk import fill, small_disk

    line = uuid.uuid4().hex[:8]
    with small_disk(tmp_path / "disk", "8m") as disk:
        (tmp_path / "up").mkdir()
        up = Mosquitto(workdir=tmp_path / "up").start()
        col = Collector(up.port, ["summary/#", "events/#", "stats/#"])
        cfg, status_topic = _config(tmp_path, broker, up.port, w1_models[1], line, every="0.5s")
        doc = yaml.safe_load(cfg.read_text())
        doc["spool"]["path"] = str(disk / "spool.db")
        cfg.write_text(yaml.safe_dump(doc))
        status = Collector(broker.port, [status_topic])
        items = w1_payloads(devices=20, samples=200)
        topic = f"plant/{line}/{{device}}/telemetry"
        agent = AgentProcess(cfg, {})

        def spool_state() -> dict:
            beats = [m for m in status.of(status_topic) if "spool" in m]
            return beats[-1]["spool"] if beats else {}

        try:
            agent.wait_ready()
            publish(broker.port, topic, items[:1000], qos=1)
            assert col.wait_for(lambda: summed(col) >= 1000, 30)
            filler = fill(disk)
            publish(broker.port, topic, items[1000:3000], qos=1)
            assert status.wait_for(lambda: spool_state().get("write_failing"), 30), spool_state()
            stuck = decoded(status, status_topic)
            assert agent.proc.poll() is None
            filler.unlink()
            publish(broker.port, topic, items[3000:], qos=1)
            assert col.wait_for(lambda: summed(col) >= len(items), 60), summed(col)
            assert status.wait_for(lambda: spool_state().get("write_failing") is False, 10)
            assert agent.stop() == 0, agent.logs[-20:]
            col.settle()
        finally:
            kill_left(agent)
            up.stop()
    bodies = bodies_by_id(col)
    counted = summed(col)
    failures = agent.events("spool_write_failed")
    col.close()
    status.close()
    figures(
        "disk_full",
        samples=len(items),
        decoded_when_paused=stuck,
        samples_in_summaries=counted,
        write_failures_logged=len(failures),
        id_conflicts=sum(len(b) > 1 for b in bodies.values()),
    )
    assert counted == len(items)
    assert failures and agent.events("spool_write_recovered")
    assert all(len(b) == 1 for b in bodies.values())
