"""An idle pipeline costs nothing: with brokers connected and no traffic, its worker thread
sleeps without waking (issue 21; before, it polled its intake 10 times a second)."""

from __future__ import annotations

import socket
import threading
import uuid
from pathlib import Path

import pytest
import yaml

from agent.config import parse_config
from agent.runtime import pipeline as pipeline_module
from agent.runtime.agent import Agent
from tests.support.configs import agent_config, mqtt_sink, w1_pipeline
from tests.support.mqtt import (
    AgentProcess,
    Collector,
    kill_left,
    notify_socket,
    publish,
    w1_payloads,
)
from tests.support.waiting import sleeps, until

pytestmark = pytest.mark.mosquitto


def period_agent(
    port: int, model: Path, tmp_path: Path, prefix: str, upstream: int | None = None, **kwargs
) -> Agent:
    """W1's pipeline on ``prefix/+/t`` with a 100-ms summary period, built, not started;
    its sink on the same broker, or on port ``upstream``; ``kwargs``: the sink's other
    topics, or ``on_failure`` for the agent."""
    on_failure = kwargs.pop("on_failure", None)
    broker = "local" if upstream is None else "up"
    pipe = w1_pipeline(
        f"{prefix}/+/t",
        model,
        sinks=[mqtt_sink(broker, summaries=f"{prefix}-s/{{device}}", **kwargs)],
        summary={"every": "100ms"},
    )
    raw = agent_config(port, tmp_path / "s.db", pipe)
    if upstream is not None:
        raw["brokers"]["up"] = {"host": "127.0.0.1", "port": upstream}
    config = parse_config(raw, "test")
    agent = Agent(config, on_failure=on_failure)
    agent.build()
    return agent


def test_an_idle_worker_does_not_wake(broker, w1_models, tmp_path):
    prefix = f"i{uuid.uuid4().hex[:6]}"
    raw = {
        "agent": {"id": f"a{uuid.uuid4().hex[:6]}", "status_topic": f"{prefix}-status"},
        "brokers": {"local": {"port": broker.port}},
        "spool": {"path": str(tmp_path / "s.db")},
        "pipelines": [
            {
                "name": "p",
                "source": {"broker": "local", "topics": [f"{prefix}/+/t"]},
                "decoder": {"type": "json", "device": "topic[1]", "channels": 8},
                "window": {"size": 32, "hop": 8},
                "handler": {"type": "onnx", "model": str(w1_models[1])},
                "summary": {"every": "1h"},  # no flush request during the test
                "sinks": [{"type": "mqtt", "broker": "local", "summaries": f"{prefix}-s/{{d}}"}],
            }
        ],
    }
    agent = Agent(parse_config(raw, "test"))
    agent.build()
    agent.start()
    try:
        [unit] = agent.units.values()
        pipeline, source = unit.worker, unit.source
        assert until(source.subscribed.is_set, 15)
        items = w1_payloads(devices=2, samples=40, spike_rate=0)
        publish(broker.port, prefix + "/{device}/t", items)
        counters = pipeline.processor.counters
        assert until(lambda: counters.decoded == len(items), 15)
        # asleep on an empty intake, the stream's running totals saved (at most 1 s later)
        assert until(lambda: pipeline.intake.state == 1 and pipeline.saved(), 15)
        worker = pipeline._thread
        before = sleeps(worker.native_id)
        done = threading.Event()
        for _ in range(8):  # an interval of 8 timer expiries (0.8 s or more): 8 polls before
            done.wait(0.1)
        assert sleeps(worker.native_id) == before
    finally:
        agent.stop()


def test_an_idle_agents_main_thread_sleeps(broker, w1_models, tmp_path):
    """``edge-agent run``'s main thread sleeps until a signal or a failed worker wakes it,
    with no timer: over 4 s or more of no traffic, from READY=1 on (its start-up work
    done), it wakes at most twice (a GIL wait; before: once a second, and every 0.2 s before
    that), and a SIGTERM still ends the agent."""
    prefix = f"m{uuid.uuid4().hex[:6]}"
    pipe = w1_pipeline(
        f"{prefix}/+/t", w1_models[1], sinks=[mqtt_sink(summaries=f"{prefix}-s/{{device}}")]
    )
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(yaml.safe_dump(agent_config(broker.port, tmp_path / "s.db", pipe)))
    with notify_socket(tmp_path) as (address, ready):
        agent = AgentProcess(cfg, {"NOTIFY_SOCKET": address})
        try:
            assert ready.recv(256) == b"READY=1"  # sent just before the supervising loop
            pid = agent.proc.pid
            before = sleeps(pid, pid)
            done = threading.Event()
            for _ in range(40):  # 40 timer expiries of 0.1 s: 4 s or more
                done.wait(0.1)
            assert sleeps(pid, pid) - before <= 2
            assert agent.stop() == 0
        finally:
            kill_left(agent)


def test_a_failed_worker_wakes_the_supervisor(broker, w1_models, tmp_path):
    """A pipeline's worker that ends on an error tells the agent's ``on_failure`` at once
    (``edge-agent run`` passes the main thread's wake-up, a worker process its own stop):
    the agent does not wait for a timer to notice."""
    told = threading.Event()
    agent = period_agent(
        broker.port, w1_models[1], tmp_path, f"x{uuid.uuid4().hex[:6]}", on_failure=told.set
    )
    [unit] = agent.units.values()
    processor = unit.worker.processor
    flush = processor.flush

    def fails_once(*args, **kwargs):  # a bug in the period's flush, once
        processor.flush = flush
        raise RuntimeError("injected")

    processor.flush = fails_once
    agent.start()
    try:
        assert told.wait(15), "on_failure not called"
        assert agent.failed() == [unit.name]
    finally:
        agent.stop()


def test_summary_flush_requests_wake_no_pool_thread(broker, w1_models, tmp_path):
    """The summary job only asks the worker to flush: it runs in the scheduler's own
    thread, so a period costs no wake-up of a pool thread (before, APScheduler's pool ran
    it: one more thread woken every period)."""
    agent = period_agent(broker.port, w1_models[1], tmp_path, f"f{uuid.uuid4().hex[:6]}")
    before = {t.ident for t in threading.enumerate()}
    agent.start()
    try:
        [unit] = agent.units.values()
        periods = unit.worker.periods
        assert until(lambda: unit.worker.periods >= periods + 5, 15)
        new = [t.name for t in threading.enumerate() if t.ident not in before]
        assert not [n for n in new if n.startswith("ThreadPoolExecutor")], new
    finally:
        agent.stop()


@pytest.mark.parametrize("repeat", [pipeline_module.QUIET_REPEAT, 0.0])
def test_a_quiet_period_writes_nothing(broker, w1_models, tmp_path, monkeypatch, repeat):
    """A period in which no stats figure changed (no traffic, nothing in the spool moved)
    writes no record: no commit, so neither the spool writer, the lanes nor the sink's
    network thread wake. A period that saw a message sends its stats again; an unchanged
    record is repeated only ``QUIET_REPEAT`` after the last one (0 here: every period)."""
    monkeypatch.setattr(pipeline_module, "QUIET_REPEAT", repeat)
    prefix = f"q{uuid.uuid4().hex[:6]}"
    collector = Collector(broker.port, [f"{prefix}-stats"])
    agent = period_agent(broker.port, w1_models[1], tmp_path, prefix, stats=f"{prefix}-stats")
    agent.start()
    try:
        [unit] = agent.units.values()
        worker, spool = unit.worker, unit.spool
        assert until(unit.source.subscribed.is_set, 15)
        items = w1_payloads(devices=2, samples=16, spike_rate=0)
        publish(broker.port, prefix + "/{device}/t", items)
        seen = len(items)
        assert until(lambda: any(m["received"] == seen for m in collector.of(prefix)), 15)
        if repeat:  # once the spool has drained and a period's figures were sent, none move
            assert until(lambda: worker.quiet > 0, 15)
        stored, commits, periods = spool.stored, spool.commits, worker.periods
        assert until(lambda: worker.periods >= periods + 5, 15)
        if repeat:
            assert (spool.stored, spool.commits) == (stored, commits)
            assert worker.quiet >= 5
        else:  # each period stores its stats record
            assert spool.stored - stored >= 5 and worker.quiet == 0
        publish(broker.port, prefix + "/{device}/t", items[:1])
        assert until(lambda: any(m["received"] == seen + 1 for m in collector.of(prefix)), 15)
    finally:
        agent.stop()
        collector.close()


def test_quiet_periods_with_upstream_down_spool_nothing(broker, w1_models, tmp_path):
    """With the upstream broker down, a quiet period's stats record is not spooled either:
    the records waiting move the spool's depth and bytes, which therefore do not make a
    period count as changed (before, each period spooled one more record, so a night with
    upstream down filled the spool with identical stats)."""
    prefix = f"u{uuid.uuid4().hex[:6]}"
    with socket.socket() as closed:  # bound, not listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        agent = period_agent(broker.port, w1_models[1], tmp_path, prefix, closed.getsockname()[1])
        agent.start()
        try:
            [unit] = agent.units.values()
            worker, spool = unit.worker, unit.spool
            assert until(unit.source.subscribed.is_set, 15)
            items = w1_payloads(devices=2, samples=16, spike_rate=0)
            publish(broker.port, prefix + "/{device}/t", items)
            counters = worker.processor.counters
            assert until(lambda: counters.decoded == len(items), 15)
            assert until(lambda: worker.quiet > 0, 15)
            stored, periods = spool.stored, worker.periods
            assert until(lambda: worker.periods >= periods + 5, 15)
            assert spool.stored == stored and worker.quiet >= 5
            assert spool.depth() >= 2  # the traffic's summaries and stats wait for upstream
        finally:
            agent.stop()
