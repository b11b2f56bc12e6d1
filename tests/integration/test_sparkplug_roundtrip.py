"""Sparkplug B end to end on a real broker: births and data in, a rebirth request on a
sequence gap, and summaries out as Sparkplug B device data after proper births."""

from __future__ import annotations

import uuid

import pytest
import yaml

from agent.proto.sparkplug import DOUBLE, INT64, REBIRTH
from agent.proto.sparkplug_b_pb2 import Payload
from tests.support.configs import agent_config, spb_pipeline
from tests.support.mqtt import AgentProcess, Collector, client

pytestmark = pytest.mark.mosquitto
METRICS = [f"m{i}" for i in range(8)]


def _payload(seq, metrics, ts_ms) -> bytes:
    p = Payload(timestamp=ts_ms, seq=seq)
    for m in metrics:
        p.metrics.add(**m)
    return p.SerializeToString()


def test_sparkplug_in_and_out(broker, w1_models, tmp_path):
    import time

    group, out_group = f"g{uuid.uuid4().hex[:6]}", f"a{uuid.uuid4().hex[:6]}"
    sink = {"type": "sparkplug_b", "broker": "local", "group": out_group, "node": "edge1", "qos": 1}
    cfg = agent_config(
        broker.port,
        tmp_path / "spool.db",
        spb_pipeline(f"spBv1.0/{group}/#", w1_models[0], METRICS, sink),
        agent_id="spb-test",
    )
    path = tmp_path / "spb.yaml"
    path.write_text(yaml.safe_dump(cfg))
    col = Collector(broker.port, [f"spBv1.0/{group}/NCMD/#", f"spBv1.0/{out_group}/#"])
    agent = AgentProcess(path, {})
    try:
        agent.wait_ready()
        pub = client(broker.port, "spb")
        now = int(time.time() * 1000)
        base = f"spBv1.0/{group}"
        birth = [
            {"name": m, "alias": i + 1, "datatype": DOUBLE, "double_value": 0.0}
            for i, m in enumerate(METRICS)
        ]
        msgs = [
            (
                f"{base}/NBIRTH/n1",
                _payload(0, [{"name": "bdSeq", "datatype": INT64, "long_value": 0}], now),
            ),
            (f"{base}/DBIRTH/n1/pump1", _payload(1, birth, now)),
        ]
        seq = 2
        for k in range(40):
            if k == 20:
                seq += 3  # a gap: three messages lost
            data = [
                {"alias": i + 1, "datatype": DOUBLE, "double_value": float(k % 5)} for i in range(8)
            ]
            msgs.append((f"{base}/DDATA/n1/pump1", _payload(seq % 256, data, now + k)))
            seq += 1
        infos = [pub.publish(t, body, qos=1) for t, body in msgs]
        for i in infos:
            i.wait_for_publish(10)

        def topics(kind):
            return [t for t, _, _ in col.raw if f"/{kind}/" in t]

        assert col.wait_for(lambda: topics("NCMD") and topics("DDATA")), col.raw[-5:]
        ((_, ncmd, _),) = [r for r in col.raw if "/NCMD/" in r[0]]
        assert [m.name for m in Payload.FromString(ncmd).metrics if m.boolean_value] == [REBIRTH]
        dev = f"{group}_n1_pump1"  # the pipeline's device id, made a valid Sparkplug name

        def out():
            return [(t, Payload.FromString(b)) for t, b, _ in list(col.raw) if out_group in t]

        def counted():
            births = [p for t, p in out() if t.endswith(f"/DBIRTH/edge1/{dev}")]
            names = {m.alias: m.name for p in births for m in p.metrics}
            return sum(
                m.long_value
                for t, p in out()
                if t.endswith(f"/DDATA/edge1/{dev}")
                for m in p.metrics
                if names.get(m.alias) == "summary/count"
            )

        assert col.wait_for(lambda: counted() == 40), counted()  # every sample summarised
        kinds = [t.split("/")[2] for t, _ in out()]
        assert kinds[0] == "NBIRTH" and "DBIRTH" in kinds
        assert kinds.index("DBIRTH") < kinds.index("DDATA")
        assert not [t for t, _ in out() if t.endswith(f"/edge1/{group}_n1")], (
            "the source node's state invented a device"
        )
        assert all(p.metrics for t, p in out() if "/DDATA/" in t), "a DDATA without metrics"
        ddeath = _payload(seq % 256, [], now + 100)
        pub.publish(f"{base}/DDEATH/n1/pump1", ddeath, qos=1).wait_for_publish(10)
        assert col.wait_for(lambda: any(t.endswith(f"/DDEATH/edge1/{dev}") for t, _ in out()))
        seqs = [p.seq for _, p in out()]
        assert seqs == list(range(len(seqs))), "seq runs 0, 1, 2... from NBIRTH"
        pub.loop_stop()
        pub.disconnect()
    finally:
        assert agent.stop() == 0
        col.close()
