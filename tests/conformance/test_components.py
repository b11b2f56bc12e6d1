"""Every registered decoder, handler and sink passes the conformance kit.

The plugins in plugins/ are installed like any third-party wheel and checked the same way.
"""

from __future__ import annotations

import uuid

import numpy as np
import orjson
import pytest

from agent.config import parse_config
from agent.proto.sparkplug_b_pb2 import Payload
from agent.protocols import output_kind
from agent.records import EVENT, STATS, SUMMARY, Message, Record
from agent.registry import Registry
from agent.runtime.agent import Agent
from agent.sinks.context import Upstream
from agent.testing.conformance import (
    check_decoder,
    check_handler,
    check_output_kind,
    check_sink,
    check_sink_unavailable,
    check_stream_handler,
)
from agent.tools.training import cmapss, datasets
from tests.support.mqtt import Collector
from tests.support.payloads import T0, analytics, births, ddata, full, minimal

REG = Registry()


def _json_msgs():
    return [
        Message(f"p/l/d{i % 3}/t", orjson.dumps({"ts": T0 + i, "seq": i, "v": [i, 1.0]}))
        for i in range(6)
    ]


def _block(i: int, n: int = 64) -> Message:
    return Message(
        f"vib/m{i % 2}/accel",
        orjson.dumps({"ts": T0 + i, "fs": 1000, "v": [float(k % 7) for k in range(n)]}),
    )


DECODERS = {
    "json": (
        {"type": "json", "channels": 2},
        _json_msgs(),
        [Message("p/l/d0/t", b"nope"), Message("p/l/d0/t", b'{"ts": 1, "v": [1]}')],
    ),
    "deepstream_minimal": (
        {"type": "deepstream_minimal", "classes": ["person"]},
        [
            minimal(f"c{i % 2}", T0 + i, [f"{i}|1|2|30|40|Person", "9|5|5|9|9|Car"], i)
            for i in range(4)
        ],
        [Message("ds/c0", b"[]"), Message("ds/c0", b'{"sensorId": "c0"}')],
    ),
    "deepstream_full": (
        {"type": "deepstream_full"},
        [full("c1", T0 + i // 2, i, (0, 0, 10, 10 + i)) for i in range(6)],
        [Message("ds/c1", b"{"), Message("ds/c1", b'{"sensor": {"id": "c1"}}')],
    ),
    "detections_json": (
        {"type": "detections_json"},
        [
            Message(
                "cam",
                orjson.dumps(
                    {
                        "camera": "k",
                        "ts": T0 + i,
                        "detections": [{"id": i, "label": "person", "bbox": [0, 0, 5, 5]}],
                    }
                ),
            )
            for i in range(4)
        ],
        [Message("cam", b"1"), Message("cam", b'{"camera": "k", "ts": 1}')],
    ),
    "deepstream_analytics": (
        {"type": "deepstream_analytics"},
        [analytics(f"c{i % 2}", T0 + i, i, {"RF": i}, {"Entry": 2 * i}) for i in range(4)],
        [Message("ds/c0", b"[1]"), Message("ds/c0", b'{"sensor": {"id": "c0"}}')],
    ),
    "sparkplug_b": (
        {"type": "sparkplug_b", "metrics": ["Pressure", "Temp"]},
        [*births(), *(ddata(2 + i, float(i), ts=T0 + i) for i in range(4))],
        [Message("spBv1.0/g1/DDATA/n1/pump1", b"\x08\xff"), ddata(0, 1.0, node="other")],
    ),
    "vibration_block": (
        {"type": "vibration_block", "sample_rate": 1000},
        [_block(i) for i in range(4)],
        [
            Message("vib/m0/accel", b'{"ts": 1, "v": [1, "x"]}'),
            Message("vib/m0/accel", b'{"v": [1]}'),
            Message("vib/m0/accel", b'{"ts": 1, "fs": 1234, "v": [1, 2]}'),
        ],
    ),
}


def test_every_component_has_a_conformance_case():
    """A new built-in or installed plugin cannot skip the kit."""
    assert set(REG.names("decoder")) <= set(DECODERS)
    # `baseline` scores per device (infer_devices), a contract this kit does not cover yet
    known = {"onnx", "onnx_autoencoder", *HANDLERS, *TYPED, "people_flow", "baseline"}
    assert set(REG.names("handler")) <= known
    assert set(REG.names("sink")) <= {"file", "stdout", "mqtt", "sparkplug_b"}


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_decoder(name):
    config, good, bad = DECODERS[name]
    check_decoder(REG.get("decoder", name), config, good, bad)


HANDLERS = {"bearing_condition": ({"type": "bearing_condition"}, 1024, 1, [(512, 1), (1024, 3)])}


@pytest.mark.parametrize("name", ["onnx", "onnx_autoencoder"])
def test_onnx_handlers(name, w1_models):
    fp32, int8 = w1_models
    cls = REG.get("handler", name)
    check_handler(cls, {"type": name, "model": str(fp32)}, 32, 8, bad_shapes=[(16, 8), (32, 3)])
    check_handler(cls, {"type": name, "model": str(int8)}, 32, 8)


@pytest.mark.parametrize("name", sorted(HANDLERS))
def test_plugin_handlers(name):
    config, size, channels, bad = HANDLERS[name]
    check_handler(REG.get("handler", name), config, size, channels, bad_shapes=bad)
    h = REG.get("handler", name)(REG.get("handler", name).config_model.model_validate(config))
    if name == "bearing_condition":  # the plugin declares the classes kind
        h.bind(REG.get("decoder", "vibration_block")(_vibration_decoder()))
        h.load(size, channels)
        assert output_kind(h) == "classes" and h.healthy == "normal"


def _vibration_decoder():
    dec = REG.get("decoder", "vibration_block").config_model
    return dec.model_validate({"type": "vibration_block", "sample_rate": 12000})


def _cmapss_windows() -> np.ndarray:
    data = datasets.cmapss_train()
    unit = cmapss.split(data.engines())["held_out"][0]
    x, _ = cmapss.engine_windows(data, unit)
    return x[::12]


TYPED = {
    "onnx_classifier": ({"type": "onnx_classifier", "model": "builtin:ai4i_pdm"}, 1, 6, "classes"),
    "onnx_regression": (
        {"type": "onnx_regression", "model": "builtin:cmapss_rul"},
        30,
        14,
        "regression",
    ),
}


@pytest.mark.parametrize("name", sorted(TYPED))
def test_typed_handlers(name):
    """The typed built-ins with their shipped models pass the kit, including their kind."""
    config, size, channels, kind = TYPED[name]
    windows = _cmapss_windows() if kind == "regression" else None
    cls = REG.get("handler", name)
    check_handler(cls, config, size, channels, bad_shapes=[(size + 1, channels)], windows=windows)
    h = cls(cls.config_model.model_validate(config))
    h.load(size, channels)
    rows = np.random.default_rng(0).normal(size=(8, size, channels)).astype(np.float32)
    assert check_output_kind(h, windows if windows is not None else rows) == kind


class HalfDeclared:
    """Declares the classes kind but has no ``probabilities``: the kit must refuse it."""

    output = "classes"
    classes = ["ok", "bad"]
    healthy = "ok"
    threshold = 0.5

    def infer(self, windows: np.ndarray) -> np.ndarray:
        return windows[:, -1, 0]


def test_kit_refuses_a_kind_declared_but_not_implemented():
    with pytest.raises(AssertionError, match="does not implement its Protocol"):
        check_output_kind(HalfDeclared(), np.zeros((4, 1, 1), np.float32))


def test_people_flow_stream_handler():
    cls = REG.get("handler", "people_flow")
    dec = REG.get("decoder", "deepstream_minimal")
    dcfg = dec.config_model.model_validate({"type": "deepstream_minimal"})
    msgs = [
        minimal(
            "c1",
            T0 + i * 0.5,
            [f"1|{10 * i}|0|{10 * i + 5}|50|Person", f"2|100|{5 * i}|120|{5 * i + 40}|Person"],
            i,
        )
        for i in range(20)
    ]

    def batches():
        d = dec(dcfg)
        return [d.decode_many(msgs[:7]), d.decode_many(msgs[7:])]

    config = {
        "type": "people_flow",
        "zones": [{"name": "left", "polygon": [[0, 0], [60, 0], [60, 100], [0, 100]]}],
        "lines": [{"name": "x50", "a": [50, 0], "b": [50, 100]}],
        "profile_min_frames": 3,
    }
    check_stream_handler(cls, config, batches)


RECORDS = [
    Record(
        EVENT, "p", "dev/1", {"device": "dev/1", "ts": T0, "score": 2.0, "threshold": 1.5}, "id-1"
    ),
    Record(
        SUMMARY,
        "p",
        "dev/1",
        {"device": "dev/1", "count": 10, "windows": 2, "mean": None, "max": None, "anomalies": 0},
        "id-2",
    ),
    Record(STATS, "p", "", {"pipeline": "p", "decoded": 10}, "id-3"),
]


def _agent(port: int, **sink) -> Agent:
    cfg = parse_config(
        {
            "agent": {"id": "conf"},
            "brokers": {"up": {"host": "127.0.0.1", "port": port}},
            "pipelines": [
                {
                    "name": "p",
                    "source": {"broker": "up", "topics": ["x"]},
                    "decoder": {"type": "json", "channels": 1},
                    "handler": {"type": "onnx", "model": "m.onnx"},
                    "sinks": [{"broker": "up", **sink}],
                }
            ],
        },
        "test",
    )
    return Agent(cfg)


def _context(agent: Agent) -> Upstream:
    """The sink context the agent hands its sinks (its id, brokers and shared connections)."""
    return Upstream(agent.config.agent.id, agent.config.brokers, agent.connection)


def test_file_and_stdout_sinks(tmp_path, capsys):
    path = tmp_path / "out.jsonl"
    check_sink(REG.get("sink", "file"), {"type": "file", "path": str(path)}, None, RECORDS)
    assert len(path.read_text().splitlines()) == 2 * len(RECORDS)
    check_sink(REG.get("sink", "stdout"), {"type": "stdout"}, None, RECORDS)
    assert len(capsys.readouterr().out.splitlines()) == 2 * len(RECORDS)


@pytest.mark.mosquitto
def test_mqtt_sink_delivers_each_record_to_its_topic(broker):
    """The kit writes the records twice; a subscriber on the real broker receives each record
    twice (at least once per write), on its kind's topic with '/' in the device replaced, its
    payload unchanged plus the record id."""
    pre = f"conf-{uuid.uuid4().hex[:8]}"
    cfg = {
        "type": "mqtt",
        "broker": "up",
        "events": f"{pre}/ev/{{device}}",
        "summaries": f"{pre}/sum/{{device}}",
        "stats": f"{pre}/stats/{{pipeline}}",
    }
    agent = _agent(broker.port, **cfg)
    col = Collector(broker.port, [f"{pre}/#"])
    agent.connection("up").start()
    try:
        check_sink(REG.get("sink", "mqtt"), cfg, _context(agent), RECORDS)
        col.settle()
    finally:
        agent.connection("up").stop()
        col.close()
    topics = {EVENT: f"{pre}/ev/dev_1", SUMMARY: f"{pre}/sum/dev_1", STATS: f"{pre}/stats/p"}
    want = [(topics[r.kind], {**r.payload, "id": r.id}) for r in RECORDS]
    key = orjson.dumps
    assert sorted(map(key, col.messages)) == sorted(map(key, want + want))


def _metrics(p: Payload) -> dict[int, object]:
    return {m.alias: None if m.is_null else getattr(m, m.WhichOneof("value")) for m in p.metrics}


@pytest.mark.mosquitto
def test_sparkplug_sink_delivers_births_data_and_death(broker):
    """A subscriber on the real broker sees NBIRTH, one DBIRTH for the device, a DDATA per
    event and summary of each write (stats have no device: not sent) carrying the record's
    values under the aliases the DBIRTH named, seq 0, 1, 2, ... and, on close, an NDEATH with
    the NBIRTH's bdSeq."""
    group = f"conf{uuid.uuid4().hex[:8]}"
    cfg = {"type": "sparkplug_b", "broker": "up", "group": group}
    col = Collector(broker.port, [f"spBv1.0/{group}/#"])
    try:
        check_sink(
            REG.get("sink", "sparkplug_b"), cfg, _context(_agent(broker.port, **cfg)), RECORDS
        )
        col.settle()
    finally:
        col.close()
    got = [(t.split("/", 2)[2], Payload.FromString(body)) for t, body, _ in col.raw]
    base = "conf"  # the node id: agent.id
    assert [t for t, _ in got] == [
        f"NBIRTH/{base}",
        f"DBIRTH/{base}/dev_1",
        *[f"DDATA/{base}/dev_1"] * 4,
        f"NDEATH/{base}",
    ]
    births = [p for t, p in got if t != f"NDEATH/{base}"]
    assert [p.seq for p in births] == list(range(len(births)))
    nbirth, dbirth, ndeath = got[0][1], got[1][1], got[-1][1]
    bd_seq = {m.name: m.long_value for m in nbirth.metrics}["bdSeq"]
    assert [(m.name, m.long_value) for m in ndeath.metrics] == [("bdSeq", bd_seq)]
    name = {m.alias: m.name for m in dbirth.metrics}
    data = [{name[a]: v for a, v in _metrics(p).items()} for _, p in got[2:-1]]
    event = {"event/score": 2.0, "event/threshold": 1.5, "event/anomaly": True}
    summary = {"summary/count": 10, "summary/windows": 2, "summary/anomalies": 0}
    summary |= {"summary/mean": None, "summary/max": None}
    assert data == [event, summary, event, summary]
    assert [p.uuid for _, p in got[2:-1]] == ["id-1", "id-2", "id-1", "id-2"]


def test_sinks_without_upstream_raise_not_connected():
    from agent.testing.mosquitto import free_port

    port = free_port()
    for cfg in ({"type": "mqtt", "broker": "up"}, {"type": "sparkplug_b", "broker": "up"}):
        check_sink_unavailable(
            REG.get("sink", cfg["type"]), cfg, _context(_agent(port, **cfg)), RECORDS
        )
