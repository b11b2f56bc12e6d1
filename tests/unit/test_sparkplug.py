"""Sparkplug B decoder on real encoded payloads: births, aliases, gaps, deaths, bad input."""

from __future__ import annotations

from agent.decoders.sparkplug import SparkplugDecoder, SparkplugDecoderConfig
from agent.proto.sparkplug import DOUBLE, INT8, INT16, INT32, INT64, REBIRTH
from agent.proto.sparkplug_b_pb2 import Payload
from agent.records import Message
from tests.support.payloads import T0, births, ddata, spb


def decoder(**kw) -> SparkplugDecoder:
    cfg = {"type": "sparkplug_b", "metrics": ["Pressure", "Temp", "Running"], **kw}
    return SparkplugDecoder(SparkplugDecoderConfig.model_validate(cfg))


def test_ddata_with_aliases_fills_channels_by_name():
    """DDATA by alias updates its metric; the others keep their birth values."""
    d = decoder()
    b = d.decode_many([*births(), ddata(2, 3.5, ts=T0 + 1), ddata(3, 4.5, ts=T0 + 2)])
    assert b.devices == ["g1/n1/pump1"] * 2
    assert b.values.tolist() == [[3.5, -5.0, 1.0], [4.5, -5.0, 1.0]]
    assert b.ts.tolist() == [T0 + 1, T0 + 2] and b.seq.tolist() == [2, 3]
    assert not b.errors and not b.control
    assert b.states == [("g1/n1", "online", T0), ("g1/n1/pump1", "online", T0)]


def test_seq_gap_counted_and_rebirth_requested_once():
    """A gap is counted, the data kept, and one NCMD rebirth is asked for."""
    d = decoder()
    b = d.decode_many([*births(), ddata(2, 1.0), ddata(5, 2.0), ddata(9, 3.0)])
    assert b.errors == {"seq_gap": 2} and len(b) == 3
    ((topic, payload),) = b.control  # held off: one request per node
    assert topic == "spBv1.0/g1/NCMD/n1"
    (m,) = Payload.FromString(payload).metrics
    assert m.name == REBIRTH and m.boolean_value is True


def test_seq_wraps_at_256():
    d = decoder()
    b = d.decode_many([*births(seq0=254), ddata(0, 1.0), ddata(1, 2.0)])
    assert not b.errors and len(b) == 2


def test_data_before_birth_and_unknown_alias_counted():
    """DDATA before any birth, and an alias no birth declared: counted, rebirth asked."""
    d = decoder()
    b = d.decode_many([ddata(0, 1.0)])
    assert b.errors == {"no_birth": 1} and len(b) == 0 and len(b.control) == 1
    d = decoder()
    alias99 = spb(
        "spBv1.0/g1/DDATA/n1/pump1", 2, [{"alias": 99, "datatype": DOUBLE, "double_value": 1.0}]
    )
    b = d.decode_many([*births(), alias99])
    assert b.errors == {"unknown_alias": 1} and len(b.control) == 1
    assert b.values.tolist() == [[1.0, -5.0, 1.0]]  # known values still make a sample


def test_deaths_mark_offline_and_block_data():
    """DDEATH and NDEATH mark devices offline; data after a death needs a new birth."""
    d = decoder()
    ddeath = spb("spBv1.0/g1/DDEATH/n1/pump1", 2, [])
    b = d.decode_many([*births(), ddeath, ddata(3, 1.0)])
    assert ("g1/n1/pump1", "offline", T0) in b.states
    assert b.errors == {"no_birth": 1} and len(b) == 0
    d = decoder()
    ndeath = spb("spBv1.0/g1/NDEATH/n1", None, [{"name": "bdSeq", "datatype": 4, "long_value": 0}])
    b = d.decode_many([*births(), ndeath, ddata(2, 1.0)])
    assert b.states[-2:] == [("g1/n1/pump1", "offline", T0), ("g1/n1", "offline", T0)]
    assert b.errors == {"no_birth": 1}
    stale = spb("spBv1.0/g1/NDEATH/n1", None, [{"name": "bdSeq", "datatype": 4, "long_value": 7}])
    d = decoder()
    b = d.decode_many([*births(), stale, ddata(2, 1.0)])
    assert len(b) == 1, "an NDEATH of an older session does not kill the node"


def test_unparsable_and_foreign_messages_never_raise():
    d = decoder()
    bad = [Message("spBv1.0/g1/DDATA/n1/pump1", b"\xff\xff\xff"), Message("other/t", b"")]
    b = d.decode_many([*births(), *bad, Message("spBv1.0/STATE/host", b"{}")])
    assert b.errors == {"protobuf": 1, "topic": 1} and len(b) == 0


def test_incomplete_metrics_counted():
    """A configured metric no birth or data has given yet: no sample, counted."""
    d = decoder(metrics=["Pressure", "Missing"])
    b = d.decode_many([*births(), ddata(2, 1.0)])
    assert b.errors == {"incomplete": 1} and len(b) == 0


def _signed_births(ints: list[tuple[str, int, int, int]]) -> list[Message]:
    """NBIRTH and a DBIRTH declaring ``(name, alias, datatype, stored value)`` metrics."""
    metrics = [{"name": n, "alias": a, "datatype": dt, "int_value": v} for n, a, dt, v in ints]
    return [births()[0], spb("spBv1.0/g1/DBIRTH/n1/pump1", 1, metrics)]


def _with_seq(msg: Message, seq: int) -> Message:
    p = Payload.FromString(msg.payload)
    p.seq = seq
    return Message(msg.topic, p.SerializeToString(), msg.received)


def test_signed_ints_at_their_own_width_or_sign_extended():
    """Int8 -3 arrives as 253 (Python encoders) or 4294967293 (Tahu Java): both are -3."""
    d = decoder(metrics=["a", "b", "c", "d", "e"])
    born = _signed_births(
        [
            ("a", 1, INT8, 253),  # -3 at 8 bits
            ("b", 2, INT8, (-3) & 0xFFFFFFFF),  # -3 sign-extended to 32 bits
            ("c", 3, INT16, 65533),  # -3 at 16 bits
            ("d", 4, INT16, 0),
            ("e", 5, INT32, (-12) & 0xFFFFFFFF),
        ]
    )
    data = spb("spBv1.0/g1/DDATA/n1/pump1", 2, [{"alias": 4, "int_value": 32767}])
    b = d.decode_many([*born, data])
    assert not b.errors
    assert b.values.tolist() == [[-3.0, -3.0, -3.0, 32767.0, -12.0]]


def test_alias_only_data_takes_the_datatype_of_the_birth():
    """Data metrics without a datatype (as the specification recommends) keep their sign."""
    d = decoder(metrics=["t8", "t16", "t32", "t64"])
    born = _signed_births([("t8", 1, INT8, 0), ("t16", 2, INT16, 0), ("t32", 3, INT32, 0)])
    p = Payload.FromString(born[1].payload)
    p.metrics.add(name="t64", alias=4, datatype=INT64, long_value=0)
    born[1] = Message(born[1].topic, p.SerializeToString(), T0)
    data = [
        {"alias": 1, "int_value": 254},
        {"alias": 2, "int_value": 65536 - 1000},
        {"alias": 3, "int_value": (-12) & 0xFFFFFFFF},
        {"alias": 4, "long_value": (-7) & 0xFFFFFFFFFFFFFFFF},
    ]
    b = d.decode_many([*born, spb("spBv1.0/g1/DDATA/n1/pump1", 2, data)])
    assert not b.errors
    assert b.values.tolist() == [[-2.0, -1000.0, -12.0, -7.0]]


def test_message_without_seq_is_not_a_gap():
    """A DDEATH without seq (some encoders) is not read as seq 0: no gap, no rebirth."""
    d = decoder()
    ddeath = spb("spBv1.0/g1/DDEATH/n1/pump1", None, [])
    reborn = _with_seq(births()[1], 2)
    b = d.decode_many([*births(), ddeath, reborn, ddata(3, 1.0)])
    assert not b.errors and not b.control
    assert len(b) == 1 and b.seq.tolist() == [3]
    assert [s[1] for s in b.states if s[0] == "g1/n1/pump1"] == ["online", "offline", "online"]


def test_offline_stamped_on_arrival_not_with_the_wills_timestamp():
    """A will NDEATH is stamped at connect; the offline states take its arrival time."""
    d = decoder()
    bd = [{"name": "bdSeq", "datatype": INT64, "long_value": 0}]
    will = spb("spBv1.0/g1/NDEATH/n1", None, bd, ts=T0 - 60)  # stamped before the NBIRTH
    arrived = Message(will.topic, will.payload, T0 + 30)
    b = d.decode_many([*births(), arrived])
    assert b.states[-2:] == [("g1/n1/pump1", "offline", T0 + 30), ("g1/n1", "offline", T0 + 30)]


def test_only_the_channels_of_a_birth_are_kept():
    """A birth's other metrics (here 500 with long names) keep no name, datatype or value:
    their aliases are known (data on them asks for no rebirth) and nothing else."""
    d = decoder()
    others = [
        {"name": f"Diagnostics/{'x' * 200}/{i}", "alias": 100 + i, "datatype": DOUBLE}
        for i in range(500)
    ]
    nbirth, dbirth = births()
    p = Payload.FromString(dbirth.payload)
    for m in others:
        p.metrics.add(**m, double_value=0.0)
    dbirth = Message(dbirth.topic, p.SerializeToString(), dbirth.received)
    extra = spb(
        "spBv1.0/g1/DDATA/n1/pump1",
        2,
        [{"alias": 1, "datatype": DOUBLE, "double_value": 7.0}, {"alias": 150, "double_value": 1}],
    )
    b = d.decode_many([nbirth, dbirth, extra])
    assert not b.errors and not b.control and b.values.tolist() == [[7.0, -5.0, 1.0]]
    node = d.nodes[("g1", "n1")]
    assert {v for v in node.aliases.values()} == {"Pressure", "Temp", "Running", None}
    assert all(set(t) <= {"Pressure", "Temp", "Running"} for t in node.datatypes.values())


def test_nodes_are_bounded_offline_ones_make_room():
    """``max_nodes``: a birth of one node too many is rejected (node_limit) while every kept
    node is online; once one is offline, a new node takes its place. Data of unknown nodes
    past the limit is counted without keeping anything for them."""
    d = decoder(max_nodes=2)
    b = d.decode_many([*births(node="a"), *births(node="b"), *births(node="c")])
    assert b.errors == {"node_limit": 1, "no_birth": 1}  # c's DBIRTH: no session for c
    assert not b.control and set(d.nodes) == {("g1", "a"), ("g1", "b")}
    b = d.decode_many([ddata(0, 1.0, node="zz")])
    assert b.errors == {"no_birth": 1} and not b.control and len(d.nodes) == 2
    bd = {"name": "bdSeq", "datatype": INT64, "long_value": 0}
    death = spb("spBv1.0/g1/NDEATH/a", None, [bd])
    b = d.decode_many([death, *births(node="c")])
    assert not b.errors and set(d.nodes) == {("g1", "b"), ("g1", "c")}


def test_devices_per_node_are_bounded_a_death_frees_its_place():
    """``max_node_devices``: a DBIRTH of one device too many is rejected (node_devices) and
    keeps nothing; a DDEATH forgets its device, so another may be born."""
    d = decoder(max_node_devices=1)
    nbirth, pump1 = births()
    pump2 = Message(pump1.topic.replace("pump1", "pump2"), pump1.payload, pump1.received)
    b = d.decode_many([nbirth, pump1, _with_seq(pump2, 2)])
    assert b.errors == {"node_devices": 1}
    assert set(d.nodes[("g1", "n1")].values) == {"g1/n1", "g1/n1/pump1"}
    death = spb("spBv1.0/g1/DDEATH/n1/pump1", 3, [])
    b = d.decode_many([death, _with_seq(pump2, 4)])
    assert not b.errors and set(d.nodes[("g1", "n1")].values) == {"g1/n1", "g1/n1/pump2"}
