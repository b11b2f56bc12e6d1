"""The threshold rule's ``hold``: anomalies stay open for ``hold`` windows, per device."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import orjson
import pytest

from agent.config import parse_config
from agent.errors import ConfigError
from agent.records import EVENT, Message
from agent.registry import Registry
from agent.stages.processor import Processor
from agent.stages.rule import Hold
from agent.stages.windows import DeviceIndex
from tests.support.configs import sample_pipeline


def reference(over: list[bool], hold: int) -> list[bool]:
    """The rule written as a loop: open on an over window, close after ``hold`` more."""
    out, since = [], hold + 1
    for o in over:
        since = 0 if o else since + 1
        out.append(since <= hold)
    return out


def test_opens_on_over_and_closes_after_hold():
    over = np.array([0, 1, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0], bool)
    got = Hold(DeviceIndex(4), 2).apply(np.zeros(len(over), np.int64), over)
    assert got.tolist() == [0, 1, 1, 1, 0, 1, 1, 1, 1, 1, 0, 0]
    assert got.tolist() == reference(over.tolist(), 2)


def test_hold_zero_is_the_plain_rule():
    over = np.random.default_rng(0).random(50) > 0.7
    assert (Hold(DeviceIndex(4), 0).apply(np.zeros(50, np.int64), over) == over).all()


@pytest.mark.parametrize("hold", [1, 3, 10])
def test_one_batch_equals_batches_of_one(hold):
    """Interleaved devices (more than the index's initial capacity, so it grows): one call for
    all windows, one call per window and random batch cuts all match the per-device loop."""
    rng = np.random.default_rng(hold)
    devices = 300
    index = DeviceIndex(1000)
    slots = index.slots([f"d{k}" for k in rng.integers(0, devices, 6000)])
    over = rng.random(len(slots)) > 0.8
    whole = Hold(index, hold).apply(slots, over)
    one, cuts = Hold(index, hold), Hold(index, hold)
    single = np.concatenate([one.apply(slots[i : i + 1], over[i : i + 1]) for i in range(6000)])
    bounds = [0, *sorted(rng.choice(np.arange(1, 6000), 40, replace=False)), 6000]
    parts = np.concatenate([cuts.apply(slots[a:b], over[a:b]) for a, b in pairwise(bounds)])
    assert (whole == single).all() and (whole == parts).all()
    for s in np.unique(slots)[:20]:
        mine = slots == s
        assert whole[mine].tolist() == reference(over[mine].tolist(), hold)


def test_evicted_device_starts_closed():
    index = DeviceIndex(4)
    (slot,) = index.slots(["a"])
    hold = Hold(index, 5)
    assert hold.apply(np.array([slot]), np.array([True])).all()
    hold._evict(np.array([slot]))
    assert not hold.apply(np.array([slot]), np.array([False])).any()


def config(rule: dict | None) -> dict:
    pipe = sample_pipeline() if rule is None else sample_pipeline(rule=rule)
    return {"brokers": {"local": {}}, "pipelines": [pipe]}


def test_config_default_and_errors():
    assert parse_config(config(None), "t").pipelines[0].rule.hold == 0
    with pytest.raises(ConfigError) as e:
        parse_config(config({"hold": -1, "extra": 1}), "t")
    text = str(e.value)
    assert "pipelines[0].rule.hold" in text and "pipelines[0].rule.extra" in text


class Identity:
    """A handler whose score is the window's newest value (no model)."""

    threshold = 1.0

    def infer(self, windows: np.ndarray) -> np.ndarray:
        return windows[:, -1, 0]


def test_processor_holds_events_open():
    """Through the Processor: windows after the score falls back stay anomalous (and raise
    events) for ``hold`` windows; another device is unaffected."""
    cfg = parse_config(config({"hold": 2, "events": "windows"}), "t").pipelines[0]
    registry = Registry()
    proc = Processor(cfg, registry.get("decoder", "json")(cfg.decoder), Identity())
    values = [0, 2, 0, 0, 0, 0]
    msgs = [
        Message(f"t/{d}", orjson.dumps({"ts": 1e9 + i, "seq": i, "v": [v if d == "a" else 0]}))
        for i, v in enumerate(values)
        for d in ("a", "b")
    ]
    events, scored = proc.process(msgs)
    flags = {d: scored.anomalous[[x == d for x in scored.devices]].tolist() for d in "ab"}
    assert flags == {"a": [False, True, True, True, False, False], "b": [False] * 6}
    assert [e.payload["seq"] for e in events if e.kind == EVENT] == [1, 2, 3]
