"""docs/records.md against what the code emits: a real pipeline (the baseline handler, which
names causes; episodes; a calibration warm-up) opens, escalates, reminds, closes and floods,
flushes summaries and stats, and the agent builds its status record. Every field emitted is
documented in the section of its kind (for events, in a row that names that event), and
every documented field is emitted."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import orjson

from agent.config import parse_config
from agent.records import EVENT, STATS, SUMMARY, Message
from agent.runtime.agent import Agent

ROOT = Path(__file__).resolve().parents[2]
EVENT_KINDS = ("opened", "escalated", "ongoing", "closed", "flood")


def _sections() -> dict[str, list[tuple[set[str], str]]]:
    """Per ``## `` heading: (field names, the row's second column) of its table rows."""
    out: dict[str, list[tuple[set[str], str]]] = {}
    current = None
    for line in (ROOT / "docs/records.md").read_text().splitlines():
        if line.startswith("## "):
            current = line[3:].strip()
            out[current] = []
        elif current and line.startswith("| ") and not line.startswith("| ---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            names = set(re.findall(r"`([a-z_]+)`", cells[0]))
            if names:
                out[current].append((names, cells[1]))
    return out


def _documented(section: str) -> set[str]:
    return {n for names, _ in _sections()[section] for n in names}


def _config(**rule) -> dict:
    return {
        "agent": {"id": "doc"},
        "brokers": {"local": {}},
        "pipelines": [
            {
                "name": "w1",
                "source": {"broker": "local", "topics": ["p/+/t"]},
                "decoder": {"type": "json", "device": "topic[1]", "channels": 8},
                "window": {"size": 32, "hop": 8},
                "calibration": {"warmup": 64},
                "handler": {"type": "baseline", "threshold": "auto"},
                "rule": {"repeat": "1s", "flood": {"limit": 1, "period": "1h"}, **rule},
                "sinks": [{"type": "stdout"}],
            }
        ],
    }


def _emitted(cfg: dict, spool: Path) -> tuple[list, list]:
    """Every record of a run, and the first flush's (during every device's warm-up), from
    the agent's own pipeline (its stats carry the intake and spool figures)."""
    agent = Agent(parse_config({**cfg, "spool": {"path": str(spool)}}, "test"))
    agent.build()
    (pipeline,) = agent.units.values()
    processor = pipeline.processor
    rng = np.random.default_rng(3)
    t0 = time.time() - 3600
    records, warm = [], []
    for k in range(800):
        msgs = []
        for d in range(3):
            v = np.sin(k * 0.2 + np.arange(8) + d) + rng.normal(0, 0.05, 8)
            if d < 2 and 200 <= k < 200 + 40 * (d + 1):  # two break: the second floods
                v = v + (0.3 if k < 220 else 30.0)  # then worse: escalated
            body = orjson.dumps({"ts": t0 + k * 0.1, "seq": k, "v": v.tolist()})
            msgs.append(Message(f"p/dev{d}/t", body, time.time()))
        events, _ = processor.process(msgs)
        records += events
        if k == 40:  # every device is still in its warm-up (64 samples): nothing scored
            warm = processor.flush(pipeline.record_stats())
            records += warm
    records += processor.close_episodes("stop")
    records += processor.flush(pipeline.record_stats())
    agent.spool.close()
    return records, warm


def test_event_summary_and_stats_fields_match_the_doc(tmp_path):
    records, warm = _emitted(_config(), tmp_path / "spool.db")
    events = [r.payload for r in records if r.kind == EVENT]
    kinds = {e["event"] for e in events}
    assert kinds == set(EVENT_KINDS), kinds
    rows = _sections()["Events: episodes (default, `rule.events: episodes`)"]
    emitted: set[str] = set()
    for e in events:
        for key in e:
            where = [col for names, col in rows if key in names]
            assert where, f"event field {key!r} is not in docs/records.md"
            col = where[0]
            ok = col == "all" or (e["event"] in col and "but" not in col)
            ok |= col.startswith("all but") and e["event"] not in col
            assert ok, f"{key!r} documented for {col!r}, emitted in {e['event']!r}"
            emitted.add(key)
    documented = {n for names, _ in rows for n in names} - set(EVENT_KINDS)
    assert documented == emitted - {"opened"}, documented ^ emitted

    summaries = [r.payload for r in records if r.kind == SUMMARY]
    warming = [r.payload for r in warm if r.kind == SUMMARY]  # "null while in its warm-up"
    assert len(warming) == 3
    assert all(s["mean"] is None and s["windows"] == 0 and s["count"] > 0 for s in warming)
    keys = set().union(*summaries)
    # `recovered` only marks summaries rebuilt after a crash (tests/integration/test_durability.py)
    documented = _documented("Summaries") - {"handler", "recovered"}
    assert keys == documented, keys ^ documented
    stats = [r.payload for r in records if r.kind == STATS]
    keys = set().union(*stats)
    assert keys == _documented("Stats"), keys ^ _documented("Stats")


def test_window_events_fields_match_the_doc(tmp_path):
    records, _ = _emitted(_config(events="windows", repeat=None), tmp_path / "spool.db")
    text = (ROOT / "docs/records.md").read_text()
    section = text.split("## Events: windows")[1].split("## ")[0]
    documented = set(re.findall(r"`([a-z_]+)`", section)) - {"events", "hold", "rule"}
    keys = set().union(*(r.payload for r in records if r.kind == EVENT))
    assert keys == documented, keys ^ documented


def test_status_record_fields_match_the_doc(tmp_path):
    cfg = _config()
    cfg["spool"] = {"path": str(tmp_path / "spool.db")}
    agent = Agent(parse_config(cfg, "test"))
    agent.build()
    try:
        body = agent.status_record("online")
    finally:
        agent.spool.close()
    assert set(body) == _documented("Status") - {"state_"}, set(body) ^ _documented("Status")
    (pipeline,) = body["pipelines"].values()
    row = next(col for names, col in _sections()["Status"] if "pipelines" in names)
    listed = set(re.findall(r"`([a-z_]+)`", row)) - {"episodes_"}
    episodes = {k for k in pipeline if k.startswith("episodes_")}
    assert set(pipeline) - episodes == listed, (set(pipeline) - episodes) ^ listed
    assert episodes <= _documented("Stats")
    stats_row = next(col for names, col in _sections()["Stats"] if "spool" in names)
    assert set(body["spool"]) == set(re.findall(r"`([a-z_]+)`", stats_row)) - {"spool"}
