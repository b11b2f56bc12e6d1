"""The console's state: the history ring and its budget, /api/state from a real agent's
processor, basic authentication, what is served where, and the assets in the wheel."""

from __future__ import annotations

import base64
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import orjson
import pytest
import yaml

from agent.config import load_config, parse_config
from agent.console import ASSETS, TICK, History, assets
from agent.records import Message
from agent.runtime.agent import Agent
from agent.runtime.metrics import MetricsServer, console_refusal
from agent.stages.aggregate import Summaries
from agent.stages.windows import DeviceIndex

ROOT = Path(__file__).resolve().parents[2]
WARMUP, CHANNELS = 64, 3
T0 = time.time()


def _index(n: int) -> DeviceIndex:
    index = DeviceIndex(10_000, initial=4)
    index.slots([f"d{i}" for i in range(n)])
    return index


def test_history_fits_its_byte_budget():
    """Ten minutes at one sample per TICK s is 8 bytes a point; the ring covers as many
    devices as the budget allows, and the rest have no series."""
    budget = 1 << 20
    h = History(600, budget)
    assert h.points == round(600 / TICK)
    assert h.max_devices == budget // (h.points * 8)
    index = _index(h.max_devices + 50)
    recent = np.arange(index.capacity, dtype=np.float64)
    h.sample(index, recent, np.full(index.capacity, 10.0), now=1000.0)
    assert h.score.nbytes + h.threshold.nbytes <= budget
    assert h.series(h.max_devices - 1)["score"] == [h.max_devices - 1]
    assert h.series(h.max_devices) is None


def test_history_ring_order_gaps_and_eviction():
    h = History(5 * TICK, 1 << 20)  # five points
    index = _index(3)
    for k in range(8):  # wraps: points 3..7 remain
        recent = np.array([k, -np.inf if k % 2 else k + 0.5, 2 * k], np.float64)
        h.sample(index, np.resize(recent, index.capacity), np.full(index.capacity, 4.0), 100.0 + k)
    s0 = h.series(0)
    assert s0["t"] == [103.0, 104.0, 105.0, 106.0, 107.0]
    assert s0["score"] == [3.0, 4.0, 5.0, 6.0, 7.0]
    assert s0["threshold"] == [4.0] * 5
    assert h.series(1)["t"] == [104.0, 106.0]  # ticks without a window are left out
    index.last_seen[:] = 10.0
    index.last_seen[index.slot_of["d2"]] = 0.0
    assert index.evict_idle(5.0) == 1  # d2's slot may go to another device: its history goes
    assert h.series(2) == {"t": [], "score": [], "threshold": []}
    other = _index(3)  # a reload with new windows: the ring starts afresh
    h.sample(other, np.full(other.capacity, 1.0), np.full(other.capacity, 2.0), 200.0)
    assert h.series(0) == {"t": [200.0], "score": [1.0], "threshold": [2.0]}


def test_summaries_keep_last_and_recent_across_flushes():
    index = _index(2)
    s = Summaries(index)
    s.add_scores(np.array([0, 0, 1]), np.array([5.0, 2.0, 1.0]), np.zeros(3, bool))
    assert s.last[:2].tolist() == [2.0, 1.0]
    s.flush()
    recent = s.take_recent()
    assert recent[:2].tolist() == [5.0, 1.0]
    assert np.isneginf(s.take_recent()[:2]).all()
    assert s.last[:2].tolist() == [2.0, 1.0]


def _config(tmp_path: Path, **metrics) -> dict:
    return {
        "agent": {"id": "console-unit"},
        "brokers": {"local": {"host": "127.0.0.1", "port": 1}},  # never connected here
        "spool": {"path": str(tmp_path / "spool.db")},
        "metrics": {"host": "127.0.0.1", "port": 0, **metrics},
        "pipelines": [
            {
                "name": "p",
                "source": {"broker": "local", "topics": ["f/+/data"]},
                "decoder": {
                    "type": "json",
                    "device": "topic[1]",
                    "ts": "ts",
                    "seq": None,
                    "values": "v",
                    "channels": CHANNELS,
                },
                "window": {"size": 16, "hop": 8},
                "calibration": {"warmup": WARMUP},
                "handler": {"type": "baseline", "threshold": "auto"},
                "sinks": [{"type": "stdout"}],
            }
        ],
    }


def _messages(devices: int, start: int, count: int, faulty: int = -1) -> list[Message]:
    """Samples ``start`` .. ``start + count`` of periodic telemetry (what follows the warm-up
    looks like it); device ``faulty``'s last 16 samples shifted by +40."""
    out = []
    for k in range(start, start + count):
        for d in range(devices):
            v = np.sin(k * 0.4 + d + np.arange(CHANNELS))
            if d == faulty and k >= start + count - 16:
                v = v + 40.0
            body = orjson.dumps({"ts": T0 + k * 0.01, "v": v.round(3).tolist()})
            out.append(Message(f"f/dev{d:04d}/data", body))
    return out


@pytest.fixture
def built(tmp_path):
    """A built (not started) agent: its processor is fed directly, no broker involved."""
    agent = Agent(parse_config(_config(tmp_path), "test"))
    agent.build()
    yield agent
    agent.spool.close()


def _feed(agent: Agent, msgs: list[Message]) -> None:
    pipe = agent.units["p"]
    for k in range(0, len(msgs), 500):
        with pipe.lock:
            events, _ = pipe.processor.process(msgs[k : k + 500])
        agent.console.take("p", events)


def test_state_lists_devices_warmup_scores_and_an_open_episode(built):
    _feed(built, _messages(5, 0, WARMUP // 2))
    table = built.console.state({})["pipelines"][0]["table"]
    assert table["warmup"] == [0.5] * 5
    assert all(np.isnan(x) for x in np.array(table["score"], float))  # none scored yet
    _feed(built, _messages(5, WARMUP // 2, WARMUP + 48, faulty=3))
    built.console.tick()
    doc = built.console.state({"pipeline": "p", "device": "dev0003", "events": "10"})
    table = doc["pipelines"][0]["table"]
    assert table["device"] == [f"dev{d:04d}" for d in range(5)]
    assert table["warmup"] == [1.0] * 5
    assert table["severity"][3] is not None and table["episode"][3].startswith("console-unit")
    assert [s is None for s in table["severity"]] == [True, True, True, False, True]
    assert table["score"][3] > table["threshold"][3] > 0
    device = doc["device"]
    assert device["episode"] == table["episode"][3]
    assert device["history"]["score"][0] > device["history"]["threshold"][0]
    assert [e["event"] for e in device["events"]] == ["opened"]
    assert doc["events"][0]["device"] == "dev0003"
    assert doc["pipelines"][0]["episodes_open"] == 1
    overview = built.console.state({"devices": "0"})
    assert "table" not in overview["pipelines"][0]
    assert built.console.state({"device": "nobody", "pipeline": "p"})["device"] is None


def test_state_payload_per_device_is_small(built):
    """The device table is by column: at 1,000 devices /api/state stays under 100 bytes per
    device (measured figure in docs/console.md)."""
    _feed(built, _messages(1000, 0, WARMUP + 16))
    body = built.console.state_json({"events": "0"})
    assert len(orjson.loads(body)["pipelines"][0]["table"]["device"]) == 1000
    assert len(body) < 100 * 1000, len(body)


def _get(url: str, auth: str | None = None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_basic_authentication_guards_everything_but_health(tmp_path, monkeypatch):
    monkeypatch.setenv("CONSOLE_USER", "plant")
    monkeypatch.setenv("CONSOLE_PASSWORD", "s3cret:with-colon")
    raw = _config(tmp_path, username="${CONSOLE_USER}", password="${CONSOLE_PASSWORD}")
    agent = Agent(parse_config(raw, "test"))
    agent.build()
    server = MetricsServer(agent, agent.config.metrics, agent.console)
    server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        for path in ("/", "/api/state", "/metrics", "/console/app.js"):
            code, headers, _ = _get(base + path)
            assert code == 401 and headers["WWW-Authenticate"].startswith("Basic"), path
            assert _get(base + path, "plant:wrong")[0] == 401
            assert _get(base + path, "plant:s3cret:with-colon")[0] == 200, path
        assert _get(base + "/healthz")[0] == 200
        code, headers, body = _get(base + "/api/state", "plant:s3cret:with-colon")
        assert orjson.loads(body)["agent"]["id"] == "console-unit"
        assert "default-src 'self'" in headers["Content-Security-Policy"]
    finally:
        server.stop()
        agent.spool.close()


def test_console_off_answers_403_and_metrics_stay(tmp_path):
    agent = Agent(parse_config(_config(tmp_path, console=False), "test"))
    agent.build()
    assert agent.console is None
    server = MetricsServer(agent, agent.config.metrics, agent.console)
    server.start()
    try:
        code, _, body = _get(f"http://127.0.0.1:{server.port}/api/state")
        assert code == 403 and b"metrics.console is false" in body
        assert _get(f"http://127.0.0.1:{server.port}/metrics")[0] == 200
    finally:
        server.stop()
        agent.spool.close()


def test_console_needs_credentials_off_loopback(tmp_path, monkeypatch):
    """Bound to another address (not bound here: tests stay on loopback) the console is
    served only with credentials (a bearer token or basic authentication); without them the
    agent keeps no console state at all (`check` refuses such a config anyway)."""
    monkeypatch.setenv("METRICS_TOKEN", "s3cret")
    cfg = parse_config(
        _config(tmp_path, host="0.0.0.0", allow_remote=True, token="${METRICS_TOKEN}"), "test"
    )
    assert console_refusal(cfg.metrics) is None
    bare = cfg.metrics.model_copy(update={"token": None})
    assert "needs a bearer token" in console_refusal(bare)
    assert Agent(cfg.model_copy(update={"metrics": bare})).console is None
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert console_refusal(bare.model_copy(update={"host": host})) is None


def test_username_needs_a_password_and_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CONSOLE_USER", "plant")
    data = _config(tmp_path, username="${CONSOLE_USER}")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(Exception) as e:
        load_config(path)
    assert "metrics.username" in str(e.value) and "metrics.password" in str(e.value)
    data["metrics"]["password"] = "literal"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(Exception) as e:
        load_config(path)
    assert "metrics.password: secrets must come from an environment variable" in str(e.value)


def test_assets_are_local_and_in_the_wheel(tmp_path):
    """No asset names another host (no CDN); a built wheel carries every one of them."""
    files = assets()
    assert set(files) == set(ASSETS)
    for url, (body, _) in files.items():
        text = body.decode()
        assert not re.search(r"(src|href)=\"(https?:)?//", text), url
        assert not re.search(r"url\((https?:)?//|@import|fetch\(\"http", text), url
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"agent/console/static/{name}" for name, _ in ASSETS.values()} <= names
