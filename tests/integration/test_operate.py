"""Operating the agent on a real mosquitto: metrics, health, live reload, shared subscriptions."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import orjson
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from agent.config import parse_config
from agent.runtime.agent import Agent
from tests.support.configs import agent_config, mqtt_sink, w1_pipeline
from tests.support.mqtt import (
    ROOT,
    AgentProcess,
    Collector,
    publish,
    runtime_env,
    w1_payloads,
)


def _config(port: int, prefix: str, model: Path, spool: Path, **over) -> dict:
    pipe = w1_pipeline(
        f"{prefix}/+/telemetry",
        model,
        rule={"events": "windows"},  # these tests count an event per anomalous window
        sinks=[
            mqtt_sink(
                events=f"{prefix}-ev/{{device}}", summaries=f"{prefix}-sum/{{device}}", stats=None
            )
        ],
    )
    pipe.update(over.pop("pipeline", {}))
    return agent_config(port, spool, pipe, agent_id=f"a{uuid.uuid4().hex[:8]}", **over)


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.mark.mosquitto
def test_metrics_endpoint_scraped_and_parsed(broker, w1_models, tmp_path):
    """/metrics reports what the pipeline counted; /healthz and /readyz answer 200."""
    prefix = f"m{uuid.uuid4().hex[:6]}"
    raw = _config(
        broker.port,
        prefix,
        w1_models[1],
        tmp_path / "spool.db",
        metrics={"host": "127.0.0.1", "port": 0},
        pipeline={"rule": {}},  # episodes, the default
    )
    agent = Agent(parse_config(raw, "test"))
    agent.build()
    agent.start()
    try:
        base = f"http://127.0.0.1:{agent.metrics.port}"
        col = Collector(broker.port, [f"{prefix}-sum/#", f"{prefix}-ev/#"])
        items = w1_payloads(10, 80)
        sources = [u.source for u in agent.units.values()]
        assert all(s.subscribed.wait(15) for s in sources)  # SUBACK: nothing missed
        publish(broker.port, prefix + "/{device}/telemetry", items, qos=1)
        summed = lambda: sum(m["count"] for m in col.of(f"{prefix}-sum"))  # noqa: E731
        assert col.wait_for(lambda: summed() == len(items))
        status, body = _get(base + "/metrics")
        assert status == 200
        fams = {f.name: f for f in text_string_to_metric_families(body.decode())}
        value = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in fams.values()
            for s in f.samples
        }
        p = (("pipeline", "w1"),)
        assert value[("edge_agent_messages_received_total", p)] == len(items)
        assert value[("edge_agent_samples_decoded_total", p)] == len(items)
        assert value[("edge_agent_windows_scored_total", p)] == 10 * ((80 - 32) // 8 + 1)
        assert value[("edge_agent_intake_queue_messages", p)] == 0
        batches = value[("edge_agent_inference_seconds_count", p)]
        assert batches >= 1
        scored = value[("edge_agent_windows_scored_total", p)]
        assert value[("edge_agent_batch_windows_sum", p)] == scored
        assert ("edge_agent_spool_records", ()) in value
        assert ("edge_agent_spool_bytes", ()) in value
        opened = value[("edge_agent_episodes_opened_total", p)]
        assert opened >= 1  # the W1 payloads carry spikes
        assert opened == (
            value[("edge_agent_episodes_closed_total", p)] + value[("edge_agent_episodes_open", p)]
        )
        assert value[("edge_agent_episodes_suppressed_total", p)] == 0
        emitted = value[("edge_agent_events_emitted_total", p)]
        assert emitted >= opened + value[("edge_agent_episodes_closed_total", p)]
        assert col.wait_for(lambda: len(col.of(f"{prefix}-ev")) == emitted)
        assert value[("edge_agent_devices", p)] == 10
        assert value[("edge_agent_devices_warming_up", p)] == 0  # fixed threshold: none
        sink = (("pipeline", "w1"), ("sink", "0"), ("type", "mqtt"))
        assert value[("edge_agent_records_delivered_total", sink)] >= 10
        assert all(v == 1 for (n, _), v in value.items() if n == "edge_agent_broker_connected")
        assert all(
            v == 0 for (n, _), v in value.items() if n == "edge_agent_broker_reconnects_total"
        )
        (build,) = fams["edge_agent_build_info"].samples
        assert build.value == 1 and set(build.labels) == {"version", "python", "onnxruntime"}
        assert value[("process_resident_memory_bytes", ())] > 0
        assert value[("process_cpu_seconds_total", ())] > 0
        old_names = {"edge_agent_received", "edge_agent_queued", "edge_agent_spool_depth"}
        assert not old_names & set(fams)
        assert _get(base + "/healthz")[0] == 200
        code, ready = _get(base + "/readyz")
        assert code == 200 and orjson.loads(ready)["ready"] is True
        col.close()
    finally:
        agent.stop()


def _agent_proc(cfg: dict, path: Path) -> AgentProcess:
    path.write_text(yaml.safe_dump(cfg))
    proc = AgentProcess(path, {})
    proc.wait_ready()
    return proc


def _reload(cfg_path: Path, other: Path | None = None) -> subprocess.CompletedProcess:
    """``edge-agent reload -c`` for the agent run from ``cfg_path`` (``other``: apply that)."""
    return subprocess.run(
        [sys.executable, "-m", "agent", "reload", "-c", str(other or cfg_path)],
        env=runtime_env(cfg_path),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.mosquitto
def test_reload_threshold_under_load_loses_nothing(broker, w1_models, tmp_path):
    """A threshold changed by `edge-agent reload` while messages flow: every accepted sample
    is counted in exactly one summary, events after the swap carry the new threshold, and the
    windows are kept (same window, same model shape)."""
    prefix = f"r{uuid.uuid4().hex[:6]}"
    cfg = _config(broker.port, prefix, w1_models[1], tmp_path / "spool.db")
    path = tmp_path / "agent.yaml"
    col = Collector(broker.port, [f"{prefix}-sum/#", f"{prefix}-ev/#"])
    agent = _agent_proc(cfg, path)
    items = w1_payloads(20, 200, spike_rate=0.02)
    half = len(items) // 2
    sender = threading.Thread(
        target=publish, args=(broker.port, prefix + "/{device}/telemetry", items[:half], 1)
    )
    sender.start()
    cfg["pipelines"][0]["handler"]["threshold"] = 3.0
    path.write_text(yaml.safe_dump(cfg))
    done = _reload(path)
    assert done.returncode == 0, done.stderr
    sender.join()
    assert col.wait_for(lambda: agent.events("reload_applied"), 20), agent.logs[-5:]
    publish(broker.port, prefix + "/{device}/telemetry", items[half:], qos=1)
    assert col.wait_for(lambda: sum(m["count"] for m in col.of(f"{prefix}-sum")) >= len(items))
    assert agent.stop() == 0
    counted = sum(m["count"] for m in col.of(f"{prefix}-sum"))
    assert counted == len(items)
    applied = agent.events("reload_applied")[0]
    assert applied["swapped"] == {"w1": True}
    thresholds = [e["threshold"] for e in col.of(f"{prefix}-ev")]
    assert thresholds[-1] == 3.0 and set(thresholds) <= {1.5, 3.0}
    col.close()


@pytest.mark.mosquitto
def test_invalid_reload_keeps_running_config(broker, w1_models, tmp_path):
    """A broken file sent with SIGHUP is rejected and logged; the old config keeps working."""
    prefix = f"i{uuid.uuid4().hex[:6]}"
    cfg = _config(broker.port, prefix, w1_models[1], tmp_path / "spool.db")
    path = tmp_path / "agent.yaml"
    col = Collector(broker.port, [f"{prefix}-sum/#"])
    agent = _agent_proc(cfg, path)
    cfg["pipelines"][0]["window"]["hop"] = 0
    path.write_text(yaml.safe_dump(cfg))
    assert _reload(path).returncode == 2  # `reload -c` validates first and signals nothing
    agent.proc.send_signal(1)  # SIGHUP anyway: the agent must reject it itself
    assert col.wait_for(lambda: agent.events("reload_rejected"), 20)
    assert "pipelines[0].window.hop" in agent.events("reload_rejected")[0]["error"]
    items = w1_payloads(5, 64)
    publish(broker.port, prefix + "/{device}/telemetry", items, qos=1)
    assert col.wait_for(lambda: sum(m["count"] for m in col.of(prefix)) == len(items))
    assert agent.stop() == 0
    col.close()


@pytest.mark.mosquitto
def test_reload_swaps_a_changed_model_file_and_refuses_a_broken_one(broker, w1_models, tmp_path):
    """`reload` with the same config after the model file changed: the new model is checked,
    warmed up and swapped in (windows kept, same shape); a file of the wrong shape is refused
    and the running model keeps scoring."""
    import shutil

    from agent.handlers.onnx_model import sha256_of

    fp32, int8 = w1_models
    model = tmp_path / "model.onnx"
    shutil.copy(int8, model)
    prefix = f"m{uuid.uuid4().hex[:6]}"
    cfg = _config(broker.port, prefix, model, tmp_path / "spool.db")
    path = tmp_path / "agent.yaml"
    col = Collector(broker.port, [f"{prefix}-sum/#"])
    agent = _agent_proc(cfg, path)
    items = w1_payloads(5, 96)
    third = len(items) // 3
    publish(broker.port, prefix + "/{device}/telemetry", items[:third], qos=1)
    shutil.copy(fp32, model)
    assert _reload(path).returncode == 0
    assert col.wait_for(lambda: agent.events("reload_applied"), 20), agent.logs[-5:]
    assert agent.events("reload_applied")[0]["swapped"] == {"w1": True}
    assert agent.events("model_loaded")[-1]["sha256"] == sha256_of(fp32)
    publish(broker.port, prefix + "/{device}/telemetry", items[third : 2 * third], qos=1)
    _score_model(model)  # input [N, 8]: does not fit 32x8 windows
    assert _reload(path).returncode == 0
    assert col.wait_for(lambda: agent.events("reload_rejected"), 20), agent.logs[-5:]
    assert "model.onnx" in agent.events("reload_rejected")[0]["error"]
    publish(broker.port, prefix + "/{device}/telemetry", items[2 * third :], qos=1)
    assert col.wait_for(lambda: sum(m["count"] for m in col.of(f"{prefix}-sum")) == len(items), 20)
    assert agent.stop() == 0
    summaries = col.of(f"{prefix}-sum")
    assert sum(m["count"] for m in summaries) == len(items)
    assert sum(m["windows"] for m in summaries) == 5 * ((96 - 32) // 8 + 1)  # all scored
    col.close()


def _score_model(path: Path) -> Path:
    """A stateless model: input [N, 8], score = mean of the values."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["input"], ["score"], axes=[1], keepdims=0)],
        "mean",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.mark.mosquitto
def test_shared_subscription_two_agents_each_message_once(broker, tmp_path):
    """Two agents on `$share/...` with `window: none`: every sample scored by exactly one."""
    prefix = f"s{uuid.uuid4().hex[:6]}"
    model = _score_model(tmp_path / "mean.onnx")
    procs = []
    col = Collector(broker.port, [f"{prefix}-ev/#"])
    for k in range(2):
        cfg = _config(
            broker.port,
            prefix,
            model,
            tmp_path / f"spool{k}.db",
            pipeline={
                "source": {
                    "broker": "local",
                    "topics": [f"$share/g/{prefix}/+/telemetry"],
                    "qos": 1,
                },
                "window": "none",
                "handler": {"type": "onnx", "model": str(model), "threshold": -1e9},
                "rule": {"events": "windows"},  # these tests count an event per anomalous window
            },
        )
        procs.append(_agent_proc(cfg, tmp_path / f"a{k}.yaml"))
    rng, now = np.random.default_rng(3), time.time()
    items = [
        (
            f"d{d}",
            s,
            orjson.dumps(
                {"ts": now + s / 1000, "seq": s, "v": rng.normal(0, 1, 8).round(3).tolist()}
            ),
            False,
        )
        for s in range(150)
        for d in range(8)
    ]
    publish(broker.port, prefix + "/{device}/telemetry", items, qos=1)
    ok = col.wait_for(lambda: len(col.of(f"{prefix}-ev")) >= len(items), 30)
    assert ok, (len(col.of(f"{prefix}-ev")), [p.logs[-8:] for p in procs])
    for p in procs:
        assert p.stop() == 0
    seen = [(e["device"], e["seq"]) for e in col.of(f"{prefix}-ev")]
    assert len(seen) == len(items) and set(seen) == {(d, s) for d, s, _, _ in items}
    by_agent = {e["id"].split("-")[0] for e in col.of(f"{prefix}-ev")}
    assert len(by_agent) == 2, "both agents took a share"
    col.close()


def test_windowed_pipeline_with_shared_subscription_is_rejected(tmp_path):
    """`check` explains why a windowed pipeline cannot use $share."""
    raw = _config(
        1883,
        "x",
        tmp_path / "m.onnx",
        tmp_path / "s.db",
        pipeline={"source": {"broker": "local", "topics": ["$share/g/x/+/telemetry"]}},
    )
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = subprocess.run(
        [sys.executable, "-m", "agent", "check", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2
    assert "windows would split" in out.stderr and "window: none" in out.stderr


def test_metrics_with_a_token_refuse_requests_without_it(broker, w1_models, tmp_path, monkeypatch):
    """``metrics.token``: every endpoint but the health checks answers 401 without
    ``Authorization: Bearer`` (``/healthz`` and ``/readyz`` stay open for HEALTHCHECKs)."""
    monkeypatch.setenv("METRICS_TOKEN", "s3cret-token")
    raw = _config(
        broker.port,
        f"t{uuid.uuid4().hex[:6]}",
        w1_models[1],
        tmp_path / "spool.db",
        metrics={"host": "127.0.0.1", "port": 0, "token": "${METRICS_TOKEN}"},
    )
    agent = Agent(parse_config(raw, "test"))
    agent.build()
    agent.start()
    try:
        base = f"http://127.0.0.1:{agent.metrics.port}"
        assert _get(base + "/metrics")[0] == 401
        assert _get(base + "/healthz")[0] == 200
        wrong = urllib.request.Request(base + "/metrics", headers={"Authorization": "Bearer x"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(wrong, timeout=5)
        assert e.value.code == 401
        right = urllib.request.Request(
            base + "/metrics", headers={"Authorization": "Bearer s3cret-token"}
        )
        with urllib.request.urlopen(right, timeout=5) as r:
            assert r.status == 200
    finally:
        agent.stop()
