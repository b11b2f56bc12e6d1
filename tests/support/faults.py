"""Fault-test helpers: a two-broker agent config, reading the spool file, counting output."""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path

import orjson
import yaml


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
) -> Path:
    """W1's pipeline reading from ``local`` and delivering to a separate ``upstream``."""
    backoff = {"reconnect_min": "0.2s", "reconnect_max": "2s"}
    cfg = {
        "agent": {"id": "fault-agent", **(agent or {})},
        "brokers": {
            "local": {
                "port": local,
                "clean_start": not persistent,
                "session_expiry": 3600,
                **backoff,
                **(local_extra or {}),
            },
            "upstream": {"port": upstream, **backoff, **(upstream_extra or {})},
        },
        "spool": {"path": str(spool), **(spool_extra or {})},
        "pipelines": [
            {
                "name": "w1",
                "source": {
                    "broker": "local",
                    "topics": ["plant/+/+/telemetry"],
                    "qos": qos,
                    **(source_extra or {}),
                },
                "decoder": {"type": "json", "device": "topic[2]", "channels": 8},
                "window": {"size": 32, "hop": 8},
                "handler": {"type": "onnx_autoencoder", "model": str(model), "threshold": 1.5},
                "rule": {"events": "windows"},  # these tests count an event per anomalous window
                "summary": {"every": "1s"},
                "sinks": [
                    {
                        "type": "mqtt",
                        "broker": "upstream",
                        "events": "events/{device}",
                        "summaries": "summary/{device}",
                        "stats": "stats/{pipeline}",
                    }
                ],
            }
        ],
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


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
