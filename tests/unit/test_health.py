"""Where `edge-agent health` asks: the config's metrics address, a wildcard as loopback."""

from __future__ import annotations

import pytest

from agent.config import parse_config
from agent.runtime.health import readyz_url


def _cfg(metrics):
    raw = {
        "brokers": {"local": {}},
        "pipelines": [
            {
                "name": "p",
                "source": {"broker": "local", "topics": ["a/+"]},
                "decoder": {"type": "json", "channels": 1},
                "handler": {"type": "baseline", "threshold": 1.0},
                "calibration": {"warmup": 100},
                "sinks": [{"type": "stdout"}],
            }
        ],
    }
    if metrics is not None:
        raw["metrics"] = metrics
    return parse_config(raw, "test")


REMOTE = {"allow_remote": True, "token": "${HEALTH_TOKEN}"}  # off loopback: authenticated


@pytest.mark.parametrize(
    ("metrics", "url"),
    [
        ({"host": "0.0.0.0", "port": 9464, **REMOTE}, "http://127.0.0.1:9464/readyz"),
        ({"host": "::", "port": 9100, **REMOTE}, "http://[::1]:9100/readyz"),
        ({"host": "10.1.2.3", "port": 9464, **REMOTE}, "http://10.1.2.3:9464/readyz"),
        ({}, "http://127.0.0.1:9464/readyz"),
        ({"port": 0}, None),  # any free port: unknown, the spool lock decides
        (None, None),
    ],
)
def test_readyz_url(metrics, url, monkeypatch):
    monkeypatch.setenv("HEALTH_TOKEN", "t")
    assert readyz_url(_cfg(metrics)) == url
