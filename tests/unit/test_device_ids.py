"""Device ids are bounded by bytes: a message naming an id longer than
``source.max_device_id`` is rejected as ``device_id`` and dead-lettered, whatever decoder
produced the id; the agent keeps nothing of it."""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import orjson
import pytest

from agent.config import parse_config
from agent.decoders.camera import CameraConfig, DeepStreamFullDecoder, DeepStreamMinimalDecoder
from agent.decoders.sparkplug import SparkplugDecoder, SparkplugDecoderConfig
from agent.records import Message
from agent.stages.processor import Processor, build_processor
from tests.support.payloads import T0, births, ddata, full, minimal


def _processor(w1_models, device: str = "topic[1]", **source) -> Processor:
    cfg = parse_config(
        {
            "brokers": {"local": {}},
            "pipelines": [
                {
                    "name": "p",
                    "source": {"broker": "local", "topics": ["t/#"], **source},
                    "decoder": {"type": "json", "device": device, "channels": 8},
                    "window": {"size": 32, "hop": 8, "max_devices": 100_000},
                    "handler": {"type": "onnx", "model": str(w1_models[1])},
                    "sinks": [{"type": "mqtt", "broker": "local"}],
                }
            ],
        },
        "test",
    ).pipelines[0]
    return build_processor(cfg)


def body(k: int, **more) -> bytes:
    return orjson.dumps({"ts": time.time(), "seq": k, "v": [k % 7] * 8, **more})


@pytest.mark.parametrize("where", ["topic", "field"])
def test_an_over_long_id_costs_its_message_only(w1_models, where):
    """A 30 KB id (from the topic, or from a payload field) among good messages: counted
    once as ``device_id``, dead-lettered with the length and the key, never tracked; the
    good messages are all counted. A 256-byte id (the default limit) is still accepted,
    and so is one of 64 four-byte characters."""
    long_id = "x" * 30_000
    ok = ["a" * 256, "\U0001f600" * 64]
    if where == "topic":
        p = _processor(w1_models)
        msgs = [Message(f"t/d{k % 4}", body(k)) for k in range(40)]
        bad = Message(f"t/{long_id}", body(0))
        edge = [Message(f"t/{d}", body(1)) for d in ok]
    else:
        p = _processor(w1_models, device="dev")
        msgs = [Message("t/x", body(k, dev=f"d{k % 4}")) for k in range(40)]
        bad = Message("t/x", body(0, dev=long_id))
        edge = [Message("t/x", body(1, dev=d)) for d in ok]
    p.process([*msgs[:13], bad, *msgs[13:], *edge])
    assert p.counters.errors == {"device_id": 1}
    assert [(m, k) for m, k, _ in p.rejected] == [(bad, "device_id")]
    assert "30000 bytes > source.max_device_id (256)" in p.rejected[0][2]
    assert sorted(p.index.slot_of) == sorted(["d0", "d1", "d2", "d3", *ok])
    assert p.counters.decoded == 42


def test_the_limit_is_configurable(w1_models):
    p = _processor(w1_models, max_device_id=8)
    p.process([Message("t/12345678", body(0)), Message("t/123456789", body(0))])
    assert list(p.index.slot_of) == ["12345678"] and p.counters.errors == {"device_id": 1}


def test_ids_take_bytes_bounded_by_the_limit_not_by_what_devices_send(w1_models):
    """500 devices with 30 KB ids (the issue's probe at a quarter of the scale): the
    agent keeps under 1 MB of them; before, it kept every id (15 MB here, 200 MB at
    2,000 devices), in the device index and its slot names."""
    p = _processor(w1_models)
    p.process([Message("t/warm", body(0))])  # first-call caches outside the measurement
    msgs = [Message(f"t/{k:05d}" + "y" * 30_000, body(k)) for k in range(500)]
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for k in range(0, 500, 50):
            p.process(msgs[k : k + 50])
        kept = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    p.rejected.clear()  # the pipeline hands these to the dead-letter path after each batch
    assert p.counters.errors == {"device_id": 500}
    assert kept < 1e6, kept


@pytest.mark.parametrize(
    "decoder, messages, bad_at",
    [
        (
            DeepStreamMinimalDecoder(CameraConfig(type="deepstream_minimal")),
            [minimal("cam1", T0, ["1|1|1|2|2|Person"]), minimal("c" * 400, T0, [])],
            1,
        ),
        (
            DeepStreamFullDecoder(CameraConfig(type="deepstream_full")),
            [full("c" * 400, T0, 1, (0, 0, 1, 1)), full("cam2", T0, 2, (0, 0, 1, 1))],
            0,
        ),
    ],
    ids=["deepstream_minimal", "deepstream_full"],
)
def test_camera_decoders_say_which_message_each_frame_came_from(decoder, messages, bad_at):
    """The processor's id check dead-letters the message a sample came from: camera
    decoders (like the JSON one) set ``origin``."""
    b = decoder.decode_many(messages)
    assert b.origin is not None and b.origin.tolist() == list(range(len(messages)))
    assert [len(b.devices[i]) > 256 for i in range(len(b))].index(True) == bad_at


def test_sparkplug_samples_point_at_their_message():
    d = SparkplugDecoder(SparkplugDecoderConfig(type="sparkplug_b", metrics=["Pressure"]))
    msgs = [*births(), ddata(1, 2.0), ddata(2, 3.0)]
    b = d.decode_many(msgs)
    assert len(b) == 2 and b.origin is not None
    assert [msgs[i].topic for i in b.origin.tolist()] == [msgs[-2].topic, msgs[-1].topic]
    assert np.asarray(b.values).ravel().tolist() == [2.0, 3.0]
