"""JSON decoder: samples from good payloads, counted kinds for bad ones, never raising."""

from __future__ import annotations

import json

import numpy as np
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.decoders.json_fields import JsonDecoder, JsonDecoderConfig
from agent.records import Message


def dec(**kw) -> JsonDecoder:
    return JsonDecoder(JsonDecoderConfig(type="json", **{"channels": 2, **kw}))


def msg(body, topic="plant/l1/dev7/telemetry") -> Message:
    return Message(topic, body if isinstance(body, bytes) else orjson.dumps(body), 99.0)


def test_list_values_and_topic_device():
    b = dec().decode_many([msg({"ts": 1.5, "seq": 4, "v": [1, 2.5]})])
    assert b.devices == ["dev7"] and b.seq.tolist() == [4] and b.ts.tolist() == [1.5]
    assert b.values.tolist() == [[1.0, 2.5]] and b.values.dtype == np.float32


def test_named_fields_and_payload_device():
    d = dec(channels=None, fields=["temp", "rpm"], device="id", ts=None, seq=None)
    b = d.decode_many([msg({"id": "m1", "temp": 20, "rpm": 1500})])
    assert b.devices == ["m1"] and b.values.tolist() == [[20.0, 1500.0]]
    assert b.ts.tolist() == [99.0] and b.seq.tolist() == [-1]


def test_bad_payloads_counted_by_kind_rest_kept():
    good = {"ts": 1, "v": [1, 2]}
    b = dec().decode_many(
        [
            msg(b"{not json"),
            msg(b"[1, 2]"),
            msg({"v": [1, 2]}),
            msg({"ts": 1, "v": [1, 2, 3]}),
            msg({"ts": 1, "v": [1, "x"]}),
            msg({"ts": 1, "v": [1, 1e39]}),
            msg({"ts": "later", "v": [1, 2]}),
            msg(good),
        ]
    )
    assert b.errors == {"json": 2, "schema": 2, "values": 3}
    assert len(b) == 1 and len(b.rejects) == 7
    assert all(m.topic == "plant/l1/dev7/telemetry" for m, _, _ in b.rejects)


JSON = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=5),
    lambda c: (
        st.lists(c, max_size=9)
        | st.dictionaries(st.sampled_from(["ts", "v", "seq", "x"]), c, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200) | JSON.map(lambda o: json.dumps(o).encode()), max_size=20))
def test_arbitrary_payloads_never_raise(payloads):
    """Anything in: every message is either a finite sample or a counted error."""
    b = dec().decode_many([msg(p) for p in payloads])
    assert len(b) + sum(b.errors.values()) == len(payloads)
    assert len(b.rejects) == sum(b.errors.values())
    assert np.isfinite(b.values).all() and b.values.shape == (len(b), 2)


def test_long_topics_are_decoded_but_not_cached():
    """The topic -> device cache is bounded by the bytes a topic takes, not its characters: a
    30 KB topic, and one of 100 emoji (100 characters, 4 bytes each in memory), are split
    every time; a 200-character ASCII topic is cached."""
    d = dec(device="topic[1]")
    body = b'{"ts": 1e9, "v": [1, 2]}'
    long_id, emoji, ascii_id = "x" * 30_000, "\U0001f600" * 100, "a" * 190
    topics = [f"t/{long_id}/a", f"t/{emoji}/a", f"t/{ascii_id}/a", "t/short/a"]
    batch = d.decode_many([Message(t, body, 99.0) for t in topics])
    assert batch.devices == [long_id, emoji, ascii_id, "short"]
    assert list(d._devices) == [f"t/{ascii_id}/a", "t/short/a"]
