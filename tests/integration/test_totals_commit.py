"""Input acknowledged on receipt (QoS 0) does not cost a spool commit per batch: its running
totals reach the spool with the next records or within ``TOTALS_EVERY`` (issue 21; before,
every batch was a commit, with an fsync)."""

from __future__ import annotations

import threading
import uuid

import orjson
import pytest

from agent.config import parse_config
from agent.runtime.agent import Agent
from agent.runtime.pipeline import TOTALS_EVERY
from tests.support.configs import agent_config, mqtt_sink, w1_pipeline
from tests.support.mqtt import client, w1_payloads
from tests.support.waiting import until

pytestmark = pytest.mark.mosquitto


def test_qos0_batches_share_commits_and_their_totals_reach_the_spool(broker, w1_models, tmp_path):
    prefix = f"c{uuid.uuid4().hex[:6]}"
    pipe = w1_pipeline(
        f"{prefix}/+/t",
        w1_models[1],
        sinks=[mqtt_sink(summaries=f"{prefix}-s/{{device}}", events=f"{prefix}-e/{{device}}")],
        qos=0,
        name="p",
        summary={"every": "1h"},  # no flush: the totals stay in the period table
        threshold=1e9,  # no events: nothing else to commit
    )
    agent = Agent(parse_config(agent_config(broker.port, tmp_path / "s.db", pipe), "test"))
    agent.build()
    agent.start()
    try:
        [unit] = agent.units.values()
        pipeline, spool = unit.worker, unit.spool
        assert until(unit.source.subscribed.is_set, 15)
        counters = pipeline.processor.counters
        commits = spool.commits
        items = w1_payloads(devices=2, samples=40, spike_rate=0)
        pub = client(broker.port, "paced")
        pace = threading.Event()
        for d, _, body, _ in items:  # one message every 5 ms: (nearly) one batch each
            pub.publish(f"{prefix}/{d}/t", body).wait_for_publish(10)
            pace.wait(0.005)
        pub.loop_stop()
        pub.disconnect()
        assert until(lambda: counters.decoded == len(items), 15)
        assert until(pipeline.saved, 2 * TOTALS_EVERY + 5)
        spool.wait()
        rows = spool.period_rows("p")
        assert sum(orjson.loads(body)[0] for _, _, body, _ in rows) == len(items)
        assert counters.batches >= 20, "the paced stream should arrive in many batches"
        assert spool.commits - commits <= counters.batches // 4
    finally:
        agent.stop()
