"""Agent config dicts for tests: W1's pipeline and the sections around it, written once.

Each test passes what matters to it (topics, sinks, rule, summary period, ...) explicitly;
the rest is W1 as trained: JSON telemetry with 8 channels, 32-sample windows every 8, the
autoencoder at threshold 1.5, a summary every second.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

JSON_8 = {"type": "json", "ts": "ts", "seq": "seq", "values": "v", "channels": 8}


def mqtt_sink(broker: str = "local", **topics: str | None) -> dict:
    """An MQTT sink on ``broker``; ``topics`` are its events/summaries/stats templates."""
    return {"type": "mqtt", "broker": broker, **topics}


def w1_pipeline(
    topics: str | list[str],
    model: Path | str,
    *,
    sinks: list[dict],
    device: str = "topic[1]",
    threshold: float = 1.5,
    broker: str = "local",
    qos: int = 1,
    **overrides: Any,
) -> dict:
    """W1's pipeline reading ``topics`` from ``broker``; ``overrides`` replace whole sections
    (``name``, ``source``, ``decoder``, ``handler``, ``summary``) or add others (``rule``)."""
    pipe = {
        "name": "w1",
        "source": {
            "broker": broker,
            "topics": [topics] if isinstance(topics, str) else topics,
            "qos": qos,
        },
        "decoder": {**JSON_8, "device": device},
        "window": {"size": 32, "hop": 8},
        "handler": {"type": "onnx_autoencoder", "model": str(model), "threshold": threshold},
        "summary": {"every": "1s"},
        "sinks": sinks,
    }
    pipe.update(overrides)
    return pipe


def agent_config(
    port: int, spool: Path, *pipelines: dict, agent_id: str = "test-agent", **sections: Any
) -> dict:
    """An agent on one loopback broker ``local`` at ``port``, spooling to ``spool``;
    ``sections`` add or replace top-level sections (``metrics``, ``brokers``, ``fleet``)."""
    return {
        "agent": {"id": agent_id},
        "brokers": {"local": {"host": "127.0.0.1", "port": port}},
        "spool": {"path": str(spool)},
        "pipelines": list(pipelines),
        **sections,
    }


def spb_pipeline(topic: str, model: Path | str, metrics: list[str], sink: dict) -> dict:
    """Sparkplug B in (``metrics`` as channels) and out through ``sink``: the W1 fp32 model
    with a threshold no window reaches, summaries every 500 ms."""
    return w1_pipeline(
        topic,
        model,
        sinks=[sink],
        name="spb",
        decoder={"type": "sparkplug_b", "metrics": metrics},
        handler={"type": "onnx", "model": str(model), "threshold": 1e9},
        summary={"every": "500ms"},
    )


def sample_pipeline(**overrides: Any) -> dict:
    """A pipeline of one-sample windows over 1-channel JSON on ``t/+`` (device: topic[1]), no
    clock-skew check, printing to stdout; its handler's model is never loaded (unit tests hand
    the Processor a handler object). ``overrides`` replace or add whole sections (``rule``)."""
    return {
        "name": "p",
        "source": {"broker": "local", "topics": ["t/+"], "max_clock_skew": None},
        "decoder": {"type": "json", "device": "topic[1]", "channels": 1},
        "window": {"size": 1, "hop": 1},
        "handler": {"type": "onnx", "model": "unused.onnx", "threshold": 1.0},
        "sinks": [{"type": "stdout"}],
        **overrides,
    }
