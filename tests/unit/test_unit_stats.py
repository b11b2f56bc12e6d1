"""One pipeline's figures, one snapshot: the status record, the stats record, /metrics and
the console show the same numbers for the same moment (a real agent, built not started; its
intake and processor fed directly, no broker involved)."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from agent.config import parse_config
from agent.records import STATS
from agent.runtime.agent import Agent
from agent.runtime.metrics import PIPELINE_METRICS
from tests.unit.test_console import _config, _messages


def _scrape(agent: Agent) -> dict[str, float]:
    """``{metric sample name: value}`` of pipeline ``p`` from a real /metrics scrape."""
    agent.metrics.start()
    try:
        url = f"http://127.0.0.1:{agent.metrics.port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as r:
            text = r.read().decode()
    finally:
        agent.metrics.stop()
    return {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.labels.get("pipeline") == "p" and set(s.labels) == {"pipeline"}
    }


def test_status_stats_record_metrics_and_console_read_one_snapshot(tmp_path):
    cfg = _config(tmp_path)
    cfg["pipelines"][0]["source"]["queue"] = 10_000
    agent = Agent(parse_config(cfg, "test"))
    agent.build()
    try:
        unit = agent.units["p"]
        msgs = _messages(4, 0, 300, faulty=2)
        for m in msgs:
            unit.intake.put(m)
        taken = unit.intake.drain(1000)  # 250 samples of each device; 200 stay queued
        with unit.lock:
            events, _ = unit.processor.process(taken)
            unit.processor.counters.events += len(events)

        status = agent.status()["p"]
        (record,) = [
            r.payload for r in unit.processor.flush(unit.record_stats()) if r.kind == STATS
        ]
        scraped = _scrape(agent)
        overview = agent.console.state({"devices": "0"})["pipelines"][0]
    finally:
        agent.spool.close()

    assert status["received"] == len(msgs) and status["queued"] == len(msgs) - len(taken)
    assert status["decoded"] == len(taken) and status["devices"] == 4
    assert status["windows"] > 0 and status["warming_up"] == 0  # warm-up: 64 samples
    shared = (set(status) & set(record)) - {"errors"}
    assert {"received", "queued", "decoded", "windows", "devices"} <= shared
    assert {k: record[k] for k in shared} == {k: status[k] for k in shared}
    assert record["errors"] == status["errors"]
    for key, name, kind, _ in PIPELINE_METRICS:
        if key in status:
            sample = f"{name}_total" if kind == "counter" else name
            assert scraped[sample] == status[key], (key, scraped[sample], status[key])
    for key in ("received", "dropped", "queued", "decoded", "windows", "anomalies", "devices"):
        assert overview[key] == status[key], key
