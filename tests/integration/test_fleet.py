"""A fleet on one real mosquitto: three agent processes in two groups, signed rollouts.

Agents a1 and a2 are in group line-a, a3 in line-b. While samples flow to all three, a new
model goes to line-a as a canary (50 %), then to the whole group, then a second version;
then bundles that must not apply: tampered, untrusted, unsigned, replayed, oversized, a
model whose chunks do not match its hash, a config that fails validation, and one that
leaves the agent unready (rolled back). Summaries prove no sample is lost; a3 never changes.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import orjson
import pytest
import yaml

from agent.fleet import bundle
from agent.handlers.onnx_model import sha256_of
from agent.testing.mosquitto import free_port
from tests.support.configs import agent_config, mqtt_sink, w1_pipeline
from tests.support.mqtt import ROOT, AgentProcess, Collector, client

pytestmark = pytest.mark.mosquitto

DEVICES = 4
LINE_ENV = "FLEET_LINE"  # each gateway's own topics: the bundle's pipelines say ${FLEET_LINE}


def _pipeline(model: Path, threshold: float = 1.5, sink_broker: str = "local") -> dict:
    line = "${" + LINE_ENV + "}"
    sink = mqtt_sink(
        sink_broker,
        events=f"out/{line}/ev/{{device}}",
        summaries=f"out/{line}/sum/{{device}}",
        stats=None,
    )
    return w1_pipeline(
        f"{line}/+/telemetry",
        model,
        device="topic[2]",
        threshold=threshold,
        sinks=[sink],
    )


def _local(port: int, agent: str, groups: list[str], root: str, key: str, tmp: Path, model):
    local = {"host": "127.0.0.1", "port": port, "clean_start": False}
    spare = {"host": "127.0.0.1", "port": free_port()}  # nothing listens there
    fleet = {
        "broker": "local",
        "groups": groups,
        "trusted_keys": [key],
        "topic": root,
        "state_dir": str(tmp / f"{agent}-fleet"),
        "max_bundle": 100_000,
        "health": {"window": "5s", "hold": "1s"},
    }
    spool = tmp / f"{agent}-spool.db"
    brokers = {"local": local, "spare": spare}
    return agent_config(port, spool, _pipeline(model), agent_id=agent, brokers=brokers, fleet=fleet)


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [sys.executable, "-m", "agent", "fleet", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, LINE_ENV: "x/y", **(env or {})},
    )
    return out


class Load(threading.Thread):
    """W1 samples for every line at a steady pace until stopped; counts what it published."""

    def __init__(self, port: int, lines: list[str], first_seq: int = 0) -> None:
        super().__init__(daemon=True)
        self.c, self.lines = client(port, "load"), lines
        self.sent = dict.fromkeys(lines, 0)
        self.halt = threading.Event()
        self.infos: list = []
        self.first_seq = first_seq

    def run(self) -> None:
        rng, k = np.random.default_rng(5), self.first_seq
        phase = rng.uniform(0, 6.28, (DEVICES, 8))
        while not self.halt.is_set():
            for line in self.lines:
                for d in range(DEVICES):
                    v = np.sin(k * 0.2 + phase[d]) + rng.normal(0, 0.05, 8)
                    body = orjson.dumps({"ts": time.time(), "seq": k, "v": v.round(4).tolist()})
                    self.infos.append(self.c.publish(f"{line}/dev{d}/telemetry", body, qos=1))
                    self.sent[line] += 1
            k += 1
            self.halt.wait(0.02)  # pacing of the generator, not synchronisation

    def finish(self) -> dict[str, int]:
        self.halt.set()
        self.join()
        for i in self.infos:
            i.wait_for_publish(30)
        self.c.loop_stop()
        self.c.disconnect()
        return self.sent


class Reported:
    """The retained reported records of the agents, as they change."""

    def __init__(self, port: int, root: str) -> None:
        self.col = Collector(port, [f"{root}/agent/+/reported"])

    def all(self, agent: str) -> list[dict]:
        return [m for m in self.col.of("") if m.get("agent") == agent]

    def of(self, agent: str) -> dict:
        recs = self.all(agent)
        return recs[-1] if recs else {}

    def wait(self, agents: list[str], pred, timeout: float = 60) -> bool:
        return self.col.wait_for(lambda: all(pred(self.of(a)) for a in agents), timeout)


def _sign(tmp: Path, name: str, cfg: dict, models: list[Path], version: int, key: Path, *extra):
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out_file = tmp / f"{name}.bundle"
    out = _cli("sign", str(path), *map(str, models), "--key", str(key), "--version",
               str(version), "-o", str(out_file), *extra)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out_file


def _publish(port: int, root: str, bundle_file: Path, *target: str) -> subprocess.CompletedProcess:
    out = _cli("publish", str(bundle_file), "--broker", f"127.0.0.1:{port}", "--topic", root,
               *target)  # fmt: skip
    assert out.returncode in (0, 1), out.stderr
    return out


def _raw_publish(port: int, topic: str, payload: bytes) -> None:
    c = client(port, "raw")
    c.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
    c.loop_stop()
    c.disconnect()


def _counted(rec: dict, reason: str) -> int:
    return (rec.get("counts") or {}).get(reason, 0)


def test_fleet_rollout_canary_bad_bundles_and_no_sample_lost(broker, w1_models, tmp_path):
    fp32, int8 = w1_models
    prefix = f"f{uuid.uuid4().hex[:6]}"
    root = f"fleet-{prefix}"
    ops, rogue = tmp_path / "ops", tmp_path / "rogue"
    assert _cli("keygen", "--out", str(ops)).returncode == 0
    assert _cli("keygen", "--out", str(rogue)).returncode == 0
    pub = (tmp_path / "ops.pub").read_text().strip()
    groups = {"a1": ["line-a"], "a2": ["line-a"], "a3": ["line-b"]}
    ids = {a: f"{prefix}-{a}" for a in groups}
    lines = {a: f"{prefix}/{a}" for a in groups}
    reported = Reported(broker.port, root)
    summaries = Collector(broker.port, [f"out/{prefix}/#"])
    procs: dict[str, AgentProcess] = {}
    cfg_paths = {}
    for a, g in groups.items():
        cfg = _local(broker.port, ids[a], g, root, pub, tmp_path, int8)
        cfg_paths[a] = tmp_path / f"{a}.yaml"
        cfg_paths[a].write_text(yaml.safe_dump(cfg))
        procs[a] = AgentProcess(cfg_paths[a], {LINE_ENV: lines[a]})
    for p in procs.values():
        p.wait_ready(60)
    line_a = [ids["a1"], ids["a2"]]
    assert reported.wait(list(ids.values()), lambda r: r.get("state") == "local")
    load = Load(broker.port, list(lines.values()))
    load.start()
    base = _local(broker.port, "operator", ["line-a"], root, pub, tmp_path, int8)

    # v2: the fp32 model (chunked: 141 KB > --inline-max) to a canary half of line-a first.
    v2cfg = {**base, "pipelines": [_pipeline(fp32, threshold=2.0)]}
    small = ("--inline-max", "65536", "--chunk-size", "32768")
    v2 = _sign(tmp_path, "v2", v2cfg, [fp32], 2, tmp_path / "ops.key", *small)
    out = _publish(broker.port, root, v2, "--group", "line-a", "--canary", "50%", "--wait", "60")
    assert out.returncode == 0, out.stdout + out.stderr
    canary = re.search(r"to agents \['([^']+)'\]", out.stdout)[1]
    other = next(a for a in line_a if a != canary)
    assert reported.of(canary)["version"] == 2
    assert reported.of(other)["version"] is None and reported.of(other)["state"] == "local"
    out = _publish(broker.port, root, v2, "--group", "line-a", "--wait", "60")
    assert out.returncode == 0, out.stdout + out.stderr
    promote_s = float(re.search(r"the last after ([\d.]+) s", out.stdout)[1])
    assert all(reported.of(a)["version"] == 2 for a in line_a)
    assert {reported.of(a)["models"]["w1"] for a in line_a} == {sha256_of(fp32)}

    # v3: the int8 model inline and a new threshold, to the whole group at once.
    v3cfg = {**base, "pipelines": [_pipeline(int8, threshold=1.8)]}
    v3 = _sign(tmp_path, "v3", v3cfg, [int8], 3, tmp_path / "ops.key")
    t0 = time.monotonic()
    out = _publish(broker.port, root, v3, "--group", "line-a", "--wait", "60")
    assert out.returncode == 0, out.stdout + out.stderr
    all_s = float(re.search(r"the last after ([\d.]+) s", out.stdout)[1])
    round_trip = time.monotonic() - t0
    assert all(reported.of(a)["version"] == 3 for a in line_a)

    # Refused at the door: tampered, untrusted key, unsigned, replayed, oversized.
    group_topic = f"{root}/group/line-a/desired"
    good = orjson.loads(v3.read_bytes())["desired"]
    doc = orjson.loads(base64.b64decode(good["doc"]))
    tampered = {**good, "doc": base64.b64encode(orjson.dumps({**doc, "version": 9})).decode()}
    untrusted = bundle.sign({**doc, "version": 9}, bundle.load_private(
        (tmp_path / "rogue.key").read_bytes()))  # fmt: skip
    untrusted["key"] = good["key"]  # claims the trusted key: the signature must catch it
    rogue_key = bundle.sign({**doc, "version": 9}, bundle.load_private(
        (tmp_path / "rogue.key").read_bytes()))  # fmt: skip
    unsigned = {k: v for k, v in good.items() if k != "sig"}
    cases = [
        ("bad_signature", tampered),
        ("untrusted_key", rogue_key),
        ("unsigned", unsigned),
    ]
    for reason, envelope in cases:
        _raw_publish(broker.port, group_topic, orjson.dumps(envelope))
        assert reported.wait(line_a, lambda r, why=reason: _counted(r, why) == 1), reported.of(
            line_a[0]
        )
    _raw_publish(broker.port, group_topic, orjson.dumps(untrusted))
    assert reported.wait(line_a, lambda r: _counted(r, "bad_signature") == 2)
    old = _sign(tmp_path, "v1", v3cfg, [int8], 1, tmp_path / "ops.key")
    _publish(broker.port, root, old, "--group", "line-a")
    assert reported.wait(line_a, lambda r: _counted(r, "replayed") == 1)
    big = _sign(tmp_path, "v4", v2cfg, [fp32], 4, tmp_path / "ops.key")  # inline: ~190 KB
    _publish(broker.port, root, big, "--group", "line-a")
    assert reported.wait(line_a, lambda r: _counted(r, "oversized") == 1)
    for a in line_a:
        assert reported.of(a)["last_refused"]["reason"] == "oversized"
        assert reported.of(a)["version"] == 3 and reported.of(a)["state"] == "applied"

    # Staged, then failed: chunks that do not match the signed hash.
    v5 = _sign(tmp_path, "v5", v2cfg, [fp32], 5, tmp_path / "ops.key", *small)
    data = orjson.loads(v5.read_bytes())
    sha = next(iter(data["blobs"]))
    corrupt = bytearray(base64.b64decode(data["blobs"][sha]))
    corrupt[1000] ^= 0xFF
    data["blobs"][sha] = base64.b64encode(bytes(corrupt)).decode()
    v5.write_bytes(orjson.dumps(data))
    _publish(broker.port, root, v5, "--group", "line-a")
    assert reported.wait(line_a, lambda r: (r.get("last") or {}).get("version") == 5)
    for a in line_a:
        r = reported.of(a)
        assert r["state"] == "failed" and r["version"] == 3
        assert r["last"]["reason"].startswith("model_hash_mismatch")

    # A config that fails validation (signed by a tool that did not check it).
    bad_pipe = _pipeline(Path("x"), threshold=1.8)
    bad_pipe["handler"]["model"] = "fleet:w1_int8.onnx"
    bad_pipe["window"]["hop"] = 0
    doc6, _ = bundle.make_doc(6, yaml.safe_dump({"pipelines": [bad_pipe]}), {
        "w1_int8.onnx": int8.read_bytes()})  # fmt: skip
    v6 = bundle.sign(doc6, bundle.load_private((tmp_path / "ops.key").read_bytes()))
    _raw_publish(broker.port, group_topic, orjson.dumps(v6))
    assert reported.wait(line_a, lambda r: (r.get("last") or {}).get("version") == 6)
    for a in line_a:
        r = reported.of(a)
        assert r["state"] == "failed" and r["version"] == 3
        assert "pipelines[0].window.hop" in r["last"]["reason"]

    def counted(line: str) -> int:
        """Samples in the line's summaries, each summary once: delivery is at least once,
        deduplicable by `id` (docs/reliability.md)."""
        unique = {m["id"]: m["count"] for m in summaries.of(f"out/{line}/sum")}
        return sum(unique.values())

    # Up to here every version was swapped in (same source and sinks).
    sent = load.finish()
    for line in lines.values():
        summaries.wait_for(lambda line=line: counted(line) >= sent[line])
    got = {line: counted(line) for line in sent}
    assert got == sent

    # Valid, applied, but the agent is not ready (its sink's broker is down): rolled back.
    load = Load(broker.port, list(lines.values()), first_seq=10**6)
    load.start()
    v7cfg = {**base, "pipelines": [_pipeline(int8, threshold=1.8, sink_broker="spare")]}
    v7 = _sign(tmp_path, "v7", v7cfg, [int8], 7, tmp_path / "ops.key")
    _publish(broker.port, root, v7, "--group", "line-a")
    assert reported.wait(line_a, lambda r: (r.get("last") or {}).get("version") == 7, 60)
    for a in line_a:
        r = reported.of(a)
        assert r["state"] == "rolled_back" and r["version"] == 3, r
        assert "spare/upstream" in r["last"]["reason"]
        assert _counted(r, "rolled_back") == 1 and _counted(r, "applied") == 2
    sent2 = load.finish()
    for line in lines.values():
        summaries.wait_for(lambda line=line: counted(line) - got[line] >= sent2[line])
    got2 = {line: counted(line) - got[line] for line in sent2}
    # v7 and its rollback restart line-a's pipelines (their sinks change); what the v7
    # pipeline summarised while its broker was down goes out after the rollback.
    assert got2 == sent2

    # a3 (line-b) never changed: local config, the int8 model, nothing refused.
    a3 = reported.all(ids["a3"])
    assert a3 and all(r["version"] is None and r["state"] == "local" for r in a3)
    assert {r["models"]["w1"] for r in a3} == {sha256_of(int8)} and not a3[-1]["counts"]

    # The last good version survives a restart; the retained bad v7 is not tried again.
    boot = reported.of(ids["a1"])["boot"]
    assert procs["a1"].stop() == 0
    procs["a1"] = AgentProcess(cfg_paths["a1"], {LINE_ENV: lines["a1"]})
    procs["a1"].wait_ready(60)
    assert reported.wait([ids["a1"]], lambda r: r.get("boot") not in (None, boot))
    r = reported.of(ids["a1"])
    assert r["version"] == 3 and r["models"]["w1"] == sha256_of(int8)
    assert r["last"]["version"] == 7 and _counted(r, "applied") == 2
    status = _cli("status", "--broker", f"127.0.0.1:{broker.port}", "--topic", root)
    assert status.returncode == 0, status.stderr
    table = {
        line.split()[0]: line.split() for line in status.stdout.splitlines()[1:] if line[0] != " "
    }
    assert table[ids["a3"]][2] == "local" and table[ids["a2"]][2] == "3"
    for p in procs.values():
        assert p.stop() == 0
    summaries.close()
    reported.col.close()
    print(
        f"\nfleet: canary+promote {promote_s:.2f} s, group-wide publish->applied on all "
        f"{all_s:.2f} s (CLI round trip {round_trip:.2f} s); samples {sent} counted {got}; "
        f"across v7 and its rollback: samples {sent2} counted {got2}"
    )
