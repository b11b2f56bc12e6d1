"""The whole Processor under bad input: it never raises and every message is accounted for."""

from __future__ import annotations

import json
import time

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import parse_config
from agent.decoders.json_fields import JsonDecoder
from agent.handlers.onnx_model import OnnxHandler
from agent.records import Message
from agent.stages.processor import Processor


@pytest.fixture(scope="module")
def processor_factory(w1_models):
    handlers: dict = {}
    configs: dict = {}

    def make(**source) -> Processor:
        key = repr(sorted(source.items()))
        if key not in configs:
            configs[key] = parse_config(
                {
                    "brokers": {"local": {}},
                    "pipelines": [
                        {
                            "name": "p",
                            "source": {"broker": "local", "topics": ["t/#"], **source},
                            "decoder": {"type": "json", "device": "topic[1]", "channels": 8},
                            "window": {"size": 32, "hop": 8, "max_devices": 16},
                            "handler": {"type": "onnx", "model": str(w1_models[1])},
                            "sinks": [{"type": "mqtt", "broker": "local"}],
                        }
                    ],
                },
                "test",
            ).pipelines[0]
        cfg = configs[key]
        if cfg.handler.model not in handlers:  # load each model once; it holds no state
            handlers[cfg.handler.model] = OnnxHandler(cfg.handler)
            handlers[cfg.handler.model].load(32, 8)
        return Processor(cfg, JsonDecoder(cfg.decoder), handlers[cfg.handler.model])

    return make


def good(device: str, k: int, ts: float | None = None) -> Message:
    body = {"ts": time.time() if ts is None else ts, "seq": k, "v": [k % 7] * 8}
    return Message(f"t/{device}", orjson.dumps(body), time.time())


def dumps(value: object) -> bytes:
    """JSON as any sender might write it: huge integers, NaN and Infinity included."""
    return json.dumps(value).encode()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=9) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=20,
)
payloads = st.one_of(
    st.binary(max_size=400),
    json_values.map(dumps),
    st.fixed_dictionaries(
        {"ts": json_values, "v": st.lists(json_values, max_size=9)},
        optional={"seq": json_values},
    ).map(dumps),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c/d", ""]), payloads), max_size=20))
def test_worker_survives_arbitrary_payloads(processor_factory, batch):
    """Arbitrary bytes and JSON mixed with good samples: no exception, nothing unaccounted."""
    p = processor_factory(max_payload=256)
    msgs = [Message(f"t/{dev}", body, time.time()) for dev, body in batch]
    msgs += [good("ok", k) for k in range(40)]
    p.process(msgs)
    assert p.counters.decoded + sum(p.counters.errors.values()) == len(msgs)
    assert p.counters.decoded >= 40
    records = p.flush()
    assert sum(r.payload.get("count", 0) for r in records) == p.counters.decoded


def test_timestamps_beyond_the_skew_are_rejected_and_counted(processor_factory):
    """Rule: a sample more than max_clock_skew from the agent's clock is dropped, by kind."""
    p = processor_factory(max_clock_skew="1h")
    now = time.time()
    msgs = [good("a", 0, now), good("a", 1, now + 7200), good("a", 2, now - 7200)]
    msgs += [good("a", 3, now - 1800), good("b", 4, 1e12), good("b", 5, 0.0)]
    p.process(msgs)
    assert p.counters.decoded == 2
    assert p.counters.errors == {"ts_future": 2, "ts_past": 2}
    assert {r.device: r.payload["count"] for r in p.flush() if r.kind == "summary"} == {"a": 2}
    off = processor_factory(max_clock_skew=None)
    off.process(msgs)
    assert off.counters.decoded == 6 and not off.counters.errors


def test_rejected_timestamps_name_the_topic_and_guess_the_unit(processor_factory):
    """Samples in milliseconds, microseconds or from an unset clock: one reject per message
    for the dead letter, each with the reason and what probably went wrong."""
    p = processor_factory(max_clock_skew="1h")
    now = time.time()
    msgs = [good("a", 0, now * 1e3), good("b", 1, now * 1e6), good("c", 2, 5.0)]
    msgs.append(good("d", 3, now + 86400 * 30))
    p.process(msgs)
    assert p.counters.errors == {"ts_future": 3, "ts_past": 1}
    got = {m.topic: (kind, reason) for m, kind, reason in p.rejected}
    assert set(got) == {m.topic for m in msgs}
    assert got[msgs[0].topic][0] == "ts_future"
    assert got[msgs[0].topic][1].endswith(
        "ts looks like milliseconds since 1970: send unix seconds (ts / 1000)"
    )
    assert got[msgs[1].topic][1].endswith("(ts / 1000000)")
    assert got[msgs[2].topic] == ("ts_past", got[msgs[2].topic][1])
    assert got[msgs[2].topic][1].endswith(
        "the source's clock is not set: fix it, or source.max_clock_skew: none"
    )
    assert "ts looks like" not in got[msgs[3].topic][1]


BAD_ONES = [
    (b'{"ts": 1e9, "seq": 1e30, "v": [1, 2, 3, 4, 5, 6, 7, 8]}', "schema"),
    (b'{"ts": 1e9, "seq": 1180591620717411303424, "v": [1, 2, 3, 4, 5, 6, 7, 8]}', "schema"),
    (b'{"ts": 1' + b"0" * 400 + b', "v": [1, 2, 3, 4, 5, 6, 7, 8]}', "json"),  # orjson: inf
    (b'{"ts": 1e9, "v": [true, 2, 3, 4, 5, 6, 7, 8]}', "values"),
    (b'{"ts": 1e9, "v": ["1.5", 2, 3, 4, 5, 6, 7, 8]}', "values"),
    (b'{"ts": 1e9, "v": [[1], [2], [3], [4], [5], [6], [7], [8]]}', "values"),
    (b'{"ts": 1e9, "v": [1e39, 2, 3, 4, 5, 6, 7, 8]}', "values"),
    (b'{"ts": 1e9, "v": [1, 2, 3]}', "values"),
    (b"[1, 2]", "json"),
]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(0, len(BAD_ONES) - 1),
    st.integers(1, 120),
    st.integers(0, 119),
)
def test_one_bad_message_costs_only_itself(processor_factory, which, n, at):
    """One bad payload anywhere in a batch of good ones: every good sample is counted, the
    bad one is counted once, by its kind, and dead-lettered; nothing lands in ``internal``."""
    p = processor_factory(max_clock_skew=None)
    body, kind = BAD_ONES[which]
    msgs = [good(f"d{k % 5}", k) for k in range(n)]
    msgs.insert(min(at, n), Message("t/bad", body, time.time()))
    p.process(msgs)
    assert p.counters.decoded == n
    assert p.counters.errors == {kind: 1}, p.counters.errors
    assert [(m.payload, k) for m, k, _ in p.rejected] == [(body, kind)]
    counted = sum(r.payload.get("count", 0) for r in p.flush() if r.kind == "summary")
    assert counted == n


def test_a_batch_only_of_devices_over_the_cap_is_counted_once(processor_factory):
    """max_devices is 16: a batch made only of devices beyond it is counted once each, as
    ``device_limit``, and raises nothing."""
    p = processor_factory()
    p.process([good(f"d{k}", 0) for k in range(16)])
    p.process([good(f"x{k}", 0) for k in range(5)])
    assert p.counters.decoded == 16
    assert p.counters.errors == {"device_limit": 5}


class _RaisingDecoder(JsonDecoder):
    """A plugin decoder with a defect: it raises on one payload instead of counting it."""

    def decode_many(self, messages):
        if any(m.payload == b"boom" for m in messages):
            raise RuntimeError("decoder defect")
        return super().decode_many(messages)


def test_a_decoder_that_raises_costs_only_the_message(processor_factory):
    """The batch is decoded again message by message: the one that raises is rejected as
    ``decode`` (dead-lettered with the exception as reason); the others are counted."""
    base = processor_factory()
    p = Processor(base.config, _RaisingDecoder(base.config.decoder), base.handler)
    msgs = [good("a", k) for k in range(30)]
    msgs.insert(7, Message("t/a", b"boom", time.time()))
    p.process(msgs)
    assert p.counters.decoded == 30 and p.counters.errors == {"decode": 1}
    assert [(m.payload, k) for m, k, _ in p.rejected] == [(b"boom", "decode")]
    assert "decoder defect" in p.rejected[0][2]


def test_sequence_gaps_and_repeats_are_counted_per_device(processor_factory):
    """Per device, in arrival order (across batches): a jump counts once as ``seq_gap``; a
    sample at or below the last one counts as ``seq_repeat``; samples without seq are not
    compared; every sample is still counted."""
    p = processor_factory()
    p.process([good("a", k) for k in (0, 1, 2, 5, 6)] + [good("b", k) for k in (10, 11)])
    p.process([good("a", k) for k in (6, 7, 3)] + [good("b", 12), good("b", 20)])
    nos = Message("t/b", orjson.dumps({"ts": time.time(), "v": [1] * 8}), time.time())
    p.process([nos, good("b", 21)])
    assert p.sequences.stats() == {"seq_gap": 2, "seq_repeat": 2}
    assert p.counters.decoded == 5 + 2 + 5 + 2
