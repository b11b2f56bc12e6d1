"""What a new user meets first, on a real mosquitto: one agent per spool, clean errors for a
port in use and a missing CA file, `check --connect` / `run --dry-run`, `reload -c OTHER`."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from tests.support.mqtt import ROOT, AgentProcess, Collector, client, notify_socket, runtime_env
from tests.support.waiting import until

pytestmark = pytest.mark.mosquitto


def _config(tmp_path: Path, port: int, model: Path, **over) -> Path:
    cfg = {
        "agent": {"id": f"fh-{uuid.uuid4().hex[:6]}"},
        "brokers": {"local": {"host": "127.0.0.1", "port": port}},
        "spool": {"path": str(tmp_path / "spool.db")},
        "pipelines": [
            {
                "name": "w1",
                "source": {"broker": "local", "topics": [f"fh{uuid.uuid4().hex[:6]}/+/t"]},
                "decoder": {"type": "json", "device": "topic[1]", "channels": 8},
                "handler": {"type": "onnx_autoencoder", "model": str(model), "threshold": 1.5},
                "sinks": [{"type": "stdout"}],
            }
        ],
    }
    cfg.update(over)
    path = tmp_path / f"agent-{uuid.uuid4().hex[:4]}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _cli(path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        env=runtime_env(path),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_second_agent_on_one_spool_exits_naming_the_first(broker, w1_models, tmp_path):
    """The second `run` of one config exits 1 with one line naming the running PID and the
    spool, before it connects to anything; the first keeps its PID file and keeps running."""
    path = _config(tmp_path, broker.port, w1_models[1])
    first = AgentProcess(path, {})
    try:
        first.wait_ready()
        second = _cli(path, "run", "-c", str(path))
        assert second.returncode == 1
        lines = second.stderr.strip().splitlines()
        spool = (tmp_path / "spool.db").resolve()
        agent_id = yaml.safe_load(path.read_text())["agent"]["id"]
        assert lines == [
            f"error: agent {agent_id} already running (PID {first.proc.pid}, spool {spool}); "
            "stop it first, or give this one its own spool.path and agent.id"
        ]
        pid_file = tmp_path / f"edge-agent-{agent_id}.pid"
        assert pid_file.read_text().split() == [str(first.proc.pid)]
        assert first.proc.poll() is None
        assert len(first.events("mqtt_connected")) == 1  # never kicked off by a twin
    finally:
        assert first.stop() == 0
    assert not pid_file.exists()  # removed by its owner on the way out


def test_same_agent_id_with_another_spool_is_refused_by_the_pid_file(broker, w1_models, tmp_path):
    """Two configs with one agent.id and two spools would overwrite one PID file: refused."""
    path = _config(tmp_path, broker.port, w1_models[1])
    raw = yaml.safe_load(path.read_text())
    raw["spool"]["path"] = str(tmp_path / "other.db")
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(raw))
    first = AgentProcess(path, {})
    try:
        first.wait_ready()
        second = _cli(other, "run", "-c", str(other))
        assert second.returncode == 1
        pid_file = tmp_path / f"edge-agent-{raw['agent']['id']}.pid"
        assert f"(PID {first.proc.pid}, PID file {pid_file})" in second.stderr
    finally:
        assert first.stop() == 0


def test_metrics_port_in_use_is_a_config_error_before_connecting(broker, w1_models, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = _config(
            tmp_path, broker.port, w1_models[1], metrics={"host": "127.0.0.1", "port": port}
        )
        done = _cli(path, "run", "-c", str(path))
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"error: {path}: metrics.port: 127.0.0.1:{port} is already in use (another agent or "
        "exporter?): choose a free port, or 0 for any free one"
    )
    assert "Traceback" not in done.stderr and "mqtt_connected" not in done.stderr


def test_missing_tls_ca_names_file_and_key(broker, w1_models, tmp_path):
    ca = tmp_path / "certs" / "ca.pem"
    path = _config(tmp_path, broker.port, w1_models[1])
    raw = yaml.safe_load(path.read_text())
    raw["brokers"]["local"]["tls"] = {"ca": str(ca)}
    path.write_text(yaml.safe_dump(raw))
    done = _cli(path, "run", "-c", str(path))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: {path}: brokers.local.tls.ca: {ca} does not exist (expected the CA bundle "
        "that signs the broker's certificate, PEM)"
    )


def test_dry_run_reports_each_thing_the_config_opens(broker, w1_models, tmp_path):
    """`run --dry-run` and `check --connect`: one line per broker, model, spool and port."""
    good = _config(tmp_path, broker.port, w1_models[1], metrics={"port": 0})
    done = _cli(good, "run", "--dry-run", "-c", str(good))
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"{good}: ok"
    assert f"  broker local (127.0.0.1:{broker.port}): ok" in lines
    assert f"  pipeline w1 model: ok ({w1_models[1]}, 8 channels)" in lines
    assert lines[-1] == f"{good}: all ok"
    assert not (tmp_path / "spool.db").exists()  # nothing kept

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead_port = closed.getsockname()[1]  # bound, never listening: connections refused
    bad = _config(tmp_path, dead_port, tmp_path / "missing.onnx")
    done = _cli(bad, "check", "--connect", str(bad))
    closed.close()
    assert done.returncode == 1
    out = done.stdout
    assert f"  broker local (127.0.0.1:{dead_port}): FAILED: ConnectionRefusedError" in out
    assert "  pipeline w1 model: FAILED: " in out and "missing.onnx" in out
    assert out.splitlines()[-1] == f"{bad}: 2 problem(s)"


def test_reload_c_applies_the_other_file(broker, w1_models, tmp_path):
    """`reload -c other.yaml` makes the agent apply other.yaml, which later reloads re-read."""
    path = _config(tmp_path, broker.port, w1_models[1])
    raw = yaml.safe_load(path.read_text())
    raw["pipelines"][0]["handler"]["threshold"] = 3.0
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(raw))
    agent = AgentProcess(path, {})
    try:
        agent.wait_ready()
        done = _cli(path, "reload", "-c", str(other))
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"reload of {other} requested from PID {agent.proc.pid}")
        applied = _wait(agent, "reload_applied", 1)
        assert applied[0]["config"] == str(other.resolve())
        assert applied[0]["swapped"] == {"w1": True}  # the threshold changed: applied
        agent.proc.send_signal(1)  # a plain SIGHUP now re-reads other.yaml
        applied = _wait(agent, "reload_applied", 2)
        assert applied[1]["config"] == str(other.resolve())
        assert applied[1]["unchanged"] == ["w1"]
    finally:
        assert agent.stop() == 0


def _wait(agent: AgentProcess, event: str, count: int) -> list[dict]:
    assert until(lambda: len(agent.events(event)) >= count, 20), agent.logs[-5:]
    return agent.events(event)


def test_millisecond_timestamp_is_dead_lettered_with_a_hint(broker, w1_models, tmp_path):
    """A payload stamped in milliseconds: counted as ts_future, logged with its topic and the
    hint, and dead-lettered (payload kept, reason and topic as MQTT 5 user properties)."""
    line = uuid.uuid4().hex[:6]
    path = _config(tmp_path, broker.port, w1_models[1])
    raw = yaml.safe_load(path.read_text())
    raw["pipelines"][0]["source"].update(topics=[f"ms{line}/+/t"], dead_letter=f"dl{line}/{{kind}}")
    path.write_text(yaml.safe_dump(raw))
    dead = Collector(broker.port, [f"dl{line}/#"])
    agent = AgentProcess(path, {})
    try:
        agent.wait_ready()
        body = json.dumps({"ts": round(time.time() * 1000), "v": [0.0] * 8}).encode()
        pub = client(broker.port, "ms")
        pub.publish(f"ms{line}/pump7/t", body, qos=1).wait_for_publish(10)
        pub.disconnect()
        assert dead.wait_for(lambda: dead.raw, 20)
        (rejected,) = _wait(agent, "sample_rejected", 1)
    finally:
        assert agent.stop() == 0
        dead.close()
    topic, payload, props = dead.raw[0]
    assert topic == f"dl{line}/ts_future" and payload == body
    user = dict(props.UserProperty)
    assert user["topic"] == f"ms{line}/pump7/t"
    hint = "ts looks like milliseconds since 1970: send unix seconds (ts / 1000)"
    assert user["reason"].endswith(hint) and "device pump7" in user["reason"]
    assert rejected["topic"] == f"ms{line}/pump7/t" and rejected["hint"] == hint
    assert rejected["reason"].startswith("device pump7: ts ")


def test_health_follows_the_config(broker, w1_models, tmp_path):
    """`edge-agent health` (the container's HEALTHCHECK): /readyz on the configured port when
    there is one, else whether an agent holds the spool."""
    plain = _config(tmp_path, broker.port, w1_models[1])
    assert _cli(plain, "health", "-c", str(plain)).returncode == 1  # nothing running
    agent = AgentProcess(plain, {})
    try:
        agent.wait_ready()
        done = _cli(plain, "health", "-c", str(plain))
        assert done.returncode == 0
        spool = yaml.safe_load(plain.read_text())["spool"]["path"]
        assert done.stdout.strip() == (
            f"agent running (PID {agent.proc.pid}, spool {spool}; no metrics port)"
        )
    finally:
        assert agent.stop() == 0
    assert _cli(plain, "health", "-c", str(plain)).stdout.startswith("no agent holds the spool")

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free once closed
    (tmp_path / "m").mkdir()
    metered = _config(
        tmp_path / "m", broker.port, w1_models[1], metrics={"host": "127.0.0.1", "port": port}
    )
    agent = AgentProcess(metered, {})
    try:
        agent.wait_ready()
        done = _cli(metered, "health", "-c", str(metered))
        assert (done.returncode, done.stdout.strip()) == (
            0,
            f"ready (http://127.0.0.1:{port}/readyz)",
        )
    finally:
        assert agent.stop() == 0
    done = _cli(metered, "health", "-c", str(metered))
    assert done.returncode == 1 and done.stdout.startswith(
        f"no answer from http://127.0.0.1:{port}"
    )


def test_systemd_readiness_notifications(broker, w1_models, tmp_path):
    """Type=notify: READY=1 once started, RELOADING=1 then READY=1 around a reload,
    STOPPING=1 at the stop, on the socket systemd names in NOTIFY_SOCKET."""
    path = _config(tmp_path, broker.port, w1_models[1])
    with notify_socket(tmp_path) as (address, sock):
        agent = AgentProcess(path, {"NOTIFY_SOCKET": address})
        try:
            assert sock.recv(256) == b"READY=1"
            agent.wait_ready()
            agent.proc.send_signal(1)
            assert sock.recv(256).startswith(b"RELOADING=1\nMONOTONIC_USEC=")
            assert sock.recv(256) == b"READY=1"
        finally:
            assert agent.stop() == 0
        assert sock.recv(256) == b"STOPPING=1"
