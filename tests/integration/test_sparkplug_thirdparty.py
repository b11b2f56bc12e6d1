"""Sparkplug B against a maintained third-party library, pysparkplug 0.6.1 (in its own
virtual environment: it needs paho-mqtt < 2), on a real broker: its edge node into the
agent, and its host application reading the agent's Sparkplug sink."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path

import orjson
import pytest
import yaml

from agent.cli import main
from agent.proto.sparkplug import rebirth_request
from tests.support.configs import agent_config, spb_pipeline
from tests.support.mqtt import AgentProcess, Collector, client
from tests.support.thirdparty import Script, venv_python

pytestmark = pytest.mark.mosquitto
PYSPARKPLUG = "pysparkplug==0.6.1"
METRICS = ["i8", "i16", "i32", "i64", "u8", "d", "f", "b"]  # as tests/thirdparty/spb_edge_node.py


@pytest.fixture(scope="module")
def spb_python(request, tmp_path_factory) -> Path:
    cache = request.config.cache
    where = cache.mkdir("venv-pysparkplug") if cache else tmp_path_factory.mktemp("venv")
    return venv_python(Path(where), PYSPARKPLUG)


def _config(tmp_path: Path, port: int, group: str, out_group: str, model: Path) -> Path:
    sink = {"type": "sparkplug_b", "broker": "local", "group": out_group, "node": "edge1"}
    pipe = spb_pipeline(f"spBv1.0/{group}/#", model, METRICS, sink)
    cfg = agent_config(port, tmp_path / "spool.db", pipe, agent_id="spb-3p")
    path = tmp_path / "spb.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _decode(config: Path, raw: list[tuple[str, bytes, object]], tmp_path: Path, capsys) -> list:
    """The collected traffic through `edge-agent decode --messages`, in arrival order."""
    log = tmp_path / "traffic.jsonl"
    lines = [{"topic": t, "payload_b64": base64.b64encode(b).decode()} for t, b, _ in raw]
    log.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    capsys.readouterr()
    main(["decode", "-c", str(config), "--messages", str(log)])
    return [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_pysparkplug_node_into_the_agent_and_host_view_of_its_sink(
    broker, w1_models, tmp_path, spb_python, capsys
):
    group, out_group = f"g{uuid.uuid4().hex[:6]}", f"a{uuid.uuid4().hex[:6]}"
    config = _config(tmp_path, broker.port, group, out_group, w1_models[0])
    host = Script(spb_python, "spb_host.py", broker.port, out_group)
    col = Collector(broker.port, [f"spBv1.0/{group}/#"])
    agent = AgentProcess(config, {})
    node = None
    try:
        host.wait_for(lambda lines: lines[:1] == [{"subscribed": True}])
        agent.wait_ready()
        node = Script(spb_python, "spb_edge_node.py", broker.port, group)
        node.wait_for(lambda lines: len(lines) == 24)
        sent = [line["sent"] for line in node.lines]
        device = f"{group}_node1_pump1"  # the agent's device id as a Sparkplug name

        def host_lines(kind: str, on: str = device) -> list[dict]:
            return [h for h in host.lines if h.get("type") == kind and h["topic"].endswith(on)]

        def counted() -> int:
            return sum(
                m["value"]
                for h in host_lines("DDATA")
                for m in h["metrics"]
                if m["name"] == "summary/count"
            )

        # every sample summarised and read back by pysparkplug's host (aliases resolved)
        host.wait_for(lambda _: counted() == 24)
        node.proc.stdin.write(b"ddeath\n")
        node.proc.stdin.flush()
        node.wait_for(lambda lines: lines[-1] == {"done": True})
        host.wait_for(lambda _: host_lines("DDEATH"))  # the device's death, as a DDEATH
        assert col.wait_for(lambda: any("/NCMD/node1" in t for t, _, _ in col.raw))
        node.kill()  # no clean disconnect: the broker publishes its NDEATH will
        assert col.wait_for(lambda: any("/NDEATH/node1" in t for t, _, _ in col.raw))

        # the third party's values, negative and alias-only, arrive exactly
        traffic = [r for r in col.raw if "/NCMD/" not in r[0]]
        decoded = _decode(config, traffic, tmp_path, capsys)
        values = [r["values"][0] for r in decoded if r["samples"]]
        assert values == [[float(v) for v in row] for row in sent]
        errors = [r["errors"] for r in decoded if r["errors"]]
        assert errors == [{"seq_gap": 1}], "one gap (two seq skipped), nothing else"
        states = [(s["device"], s["state"]) for r in decoded for s in r.get("states", [])]
        assert states == [
            (f"{group}/node1", "online"),
            (f"{group}/node1/pump1", "online"),
            (f"{group}/node1/pump1", "offline"),
            (f"{group}/node1", "offline"),
        ]

        # the host's view of the sink: births first, no empty DDATA, no invented device
        births = host_lines("DBIRTH")
        assert births and {m["name"] for m in births[0]["metrics"]} >= {"summary/count"}
        assert all(h["metrics"] for h in host_lines("DDATA"))
        assert not [h for h in host.lines if h.get("topic", "").endswith(f"edge1/{group}_node1")]
        assert not [h for h in host.lines if h.get("retain")]

        agent.proc.kill()  # SIGKILL: the broker publishes the sink's will
        host.wait_for(lambda _: host_lines("NDEATH", on="/edge1"))
        late = Script(spb_python, "spb_host.py", broker.port, out_group)
        try:
            late.wait_for(lambda lines: lines[:1] == [{"subscribed": True}])
            marker_topic, marker = rebirth_request(out_group, "edge1")
            pub = client(broker.port, "marker")
            pub.publish(marker_topic, marker, qos=1).wait_for_publish(10)
            pub.loop_stop()
            pub.disconnect()
            late.wait_for(lambda lines: any(h.get("type") == "NCMD" for h in lines))
            assert [h.get("type") for h in late.lines[1:]] == ["NCMD"], (
                "a late host read a retained message (a stale NDEATH?)"
            )
        finally:
            late.kill()
    finally:
        if node is not None:
            node.kill()
        host.kill()
        col.close()
        if agent.proc.poll() is None:
            agent.stop()
