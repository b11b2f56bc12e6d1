"""Fault-test helpers: a two-broker agent config, reading the spool file, counting output."""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path

import orjson
import yaml

from tests.support.configs import mqtt_sink, w1_pipeline


def write_config(
    path: Path,
    *,
    local: int,
    upstream: int,
    model: Path,
    spool: Path,
    qos: int = 1,
    persistent: bool = True,
    agent: dict | None = None,
    spool_extra: dict | None = None,
    source_extra: dict | None = None,
    local_extra: dict | None = None,
    upstream_extra: dict | None = None,
    pipeline_extra: dict | None = None,
) -> Path:
    """W1's pipeline reading from ``local`` and delivering to a separate ``upstream``;
    ``pipeline_extra`` replaces whole pipeline sections (``summary``)."""
    backoff = {"reconnect_min": "0.2s", "reconnect_max": "2s"}
    pipe = w1_pipeline(
        "plant/+/+/telemetry",
        model,
        device="topic[2]",
        qos=qos,
        rule={"events": "windows"},  # these tests count an event per anomalous window
        sinks=[
            mqtt_sink(
                "upstream",
                events="events/{device}",
                summaries="summary/{device}",
                stats="stats/{pipeline}",
            )
        ],
        **(pipeline_extra or {}),
    )
    pipe["source"].update(source_extra or {})
    local_broker = {"port": local, "clean_start": not persistent, "session_expiry": 3600}
    cfg = {
        "agent": {"id": "fault-agent", **(agent or {})},
        "brokers": {
            "local": {**local_broker, **backoff, **(local_extra or {})},
            "upstream": {"port": upstream, **backoff, **(upstream_extra or {})},
        },
        "spool": {"path": str(spool), **(spool_extra or {})},
        "pipelines": [pipe],
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def line_config(
    tmp_path: Path,
    line: str,
    local: int,
    upstream: int,
    model: Path,
    pipeline_extra: dict | None = None,
    *,
    beat: bool = False,
    **extra,
) -> Path:
    """``write_config`` into ``tmp_path`` (agent.yaml, spool.db) for agent ``a-<line>``, with a
    heartbeat on ``status/<line>`` when ``beat``; ``extra`` as ``write_config`` takes it
    (``agent`` replaces the whole section)."""
    agent = beating_agent(line) if beat else {"id": f"a-{line}"}
    return write_config(
        tmp_path / "agent.yaml",
        local=local,
        upstream=upstream,
        model=model,
        spool=tmp_path / "spool.db",
        pipeline_extra=pipeline_extra,
        **{"agent": agent, **extra},
    )


def beating_agent(line: str) -> dict:
    """The ``agent`` section for ``line``: a heartbeat every second on ``status/<line>``."""
    return {
        "id": f"a-{line}",
        "status_topic": f"status/{line}",
        "status_broker": "local",
        "heartbeat": "1s",
    }


def spool_rows(path: Path) -> list[tuple[str, str, dict]]:
    """(kind, id, payload) of every row in a spool file, read by a second connection."""
    if not path.exists():
        return []
    db = sqlite3.connect(path, timeout=10)
    try:
        rows = db.execute("SELECT body FROM outbox ORDER BY id").fetchall()
    finally:
        db.close()
    return [(k, i, p) for k, _, _, i, p in (orjson.loads(b) for (b,) in rows)]


def tally(messages: list[dict]) -> tuple[dict[str, dict], int]:
    """Unique messages by id and how many copies beyond the first arrived."""
    unique: dict[str, dict] = {}
    for m in messages:
        unique.setdefault(m["id"], m)
    return unique, len(messages) - len(unique)


def samples_per_device(summaries: dict[str, dict]) -> Counter:
    per = Counter()
    for s in summaries.values():
        per[s["device"]] += s["count"]
    return per
