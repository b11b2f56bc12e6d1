"""A stage that raises after decoding costs only the message that makes it raise.

A real onnxruntime handler with a defect: it raises when the newest sample of a window it
is asked to score carries a marker value. The batch is processed again in halves against
a processor state restored to what it was before the batch (agent/stages/undo.py), so every
other sample is counted exactly once and the processor ends in the state the good
messages alone give.
"""

from __future__ import annotations

import time

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import parse_config
from agent.decoders.json_fields import JsonDecoder
from agent.handlers.onnx_model import OnnxHandler
from agent.records import Message
from agent.stages.isolate import process_isolated
from agent.stages.processor import Processor

MARK = 999.0


class MarkedWindowRaises(OnnxHandler):
    """An ONNX handler with a defect: a window whose last sample is MARK raises."""

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if (batch[:, -1, 0] == MARK).any():
            raise RuntimeError("handler defect on a marked window")
        return super().infer(batch)


class AlwaysRaises(OnnxHandler):
    """A defect on every window of data (the all-zero windows of its load check pass)."""

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if batch.any():
            raise RuntimeError("handler defect on every window")
        return super().infer(batch)


class MarkedEventRaises(OnnxHandler):
    """A defect after scoring: describing the event of a marked window raises."""

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.marked = batch[:, -1, 0] == MARK
        return super().infer(batch)

    def describe(self, hits: np.ndarray) -> list[dict]:
        if self.marked[hits].any():
            raise RuntimeError("handler defect describing a marked window")
        return super().describe(hits)


CALIBRATED = {"calibration": {"warmup": 40, "normalise": False}, "rule": {"events": "episodes"}}


def _processor(w1_models, handler_cls=MarkedWindowRaises, **extra) -> Processor:
    cfg = parse_config(
        {
            "brokers": {"local": {}},
            "pipelines": [
                {
                    "name": "p",
                    "source": {"broker": "local", "topics": ["t/#"], "max_clock_skew": None},
                    "decoder": {"type": "json", "device": "topic[1]", "channels": 8},
                    "window": {"size": 32, "hop": 1, "max_devices": 64},
                    "handler": {"type": "onnx", "model": str(w1_models[1]), "threshold": 1.5},
                    "sinks": [{"type": "mqtt", "broker": "local"}],
                    **extra,
                }
            ],
        },
        "test",
    ).pipelines[0]
    handler = handler_cls(cfg.handler)
    p = Processor(cfg, JsonDecoder(cfg.decoder), handler)
    p.load()
    return p


def msg(device: str, k: int, value: float | None = None) -> Message:
    v = [value] * 8 if value is not None else [float(np.sin(k * 0.2 + j)) for j in range(8)]
    body = orjson.dumps({"ts": 1e9 + k, "seq": k, "v": v})
    return Message(f"t/{device}", body, time.time())


def _stream(devices: int, samples: int) -> list[Message]:
    return [msg(f"d{d}", k) for k in range(samples) for d in range(devices)]


def _state(p: Processor) -> dict:
    """What a batch leaves behind, per device name (slots may differ between processors)."""
    out = {}
    for name, s in p.index.slot_of.items():
        out[name] = (
            int(p.summaries.count[s]),
            int(p.summaries.windows[s]),
            float(p.summaries.score_sum[s]),
            int(p.windows.count[s]),
            p.windows.buf[s].tobytes(),
            int(p.sequences.last[s]),
            None if p.warmup is None else (int(p.warmup.count[s]), float(p.warmup.threshold[s])),
        )
    return out


@pytest.mark.parametrize("extra", [{}, CALIBRATED], ids=["plain", "calibrated_episodes"])
def test_a_handler_that_raises_on_one_window_costs_only_that_message(w1_models, extra):
    """One marked message in a batch of 1,200 good ones (after each device's first
    window and warm-up): every good sample is counted in the summaries, the marked one
    is counted once as ``internal`` and dead-lettered with the exception and where it
    was raised; the state is what the good messages alone leave."""
    history = _stream(devices=6, samples=60)
    good = _stream(devices=6, samples=200)[360:]
    bad = msg("d3", 10_000, MARK)
    batch = [*good[:500], bad, *good[500:]]
    p = _processor(w1_models, **extra)
    process_isolated(p, history)
    process_isolated(p, batch)
    assert p.counters.decoded == len(history) + len(good)
    assert p.counters.errors == {"internal": 1}
    assert [(m, kind) for m, kind, _ in p.rejected] == [(bad, "internal")]
    reason = p.rejected[0][2]
    assert "handler defect on a marked window" in reason and "test_isolation.py" in reason
    ref = _processor(w1_models, **extra)
    process_isolated(ref, history)
    process_isolated(ref, good)
    assert _state(p) == _state(ref)
    counted = sum(r.payload["count"] for r in p.flush() if r.kind == "summary")
    assert counted == len(history) + len(good)


def test_a_failed_call_leaves_nothing_behind(w1_models):
    """The undo is real: a failed call leaves nothing behind (counters, summaries,
    windows, sequence numbers, devices)."""
    p = _processor(w1_models, **CALIBRATED)
    process_isolated(p, _stream(devices=3, samples=60))
    before = (_state(p), p.counters.decoded, dict(p.counters.errors), len(p.index))
    with pytest.raises(RuntimeError):
        p.process([*_stream(devices=4, samples=70)[180:], msg("d1", 10_000, MARK)])
    assert (_state(p), p.counters.decoded, dict(p.counters.errors), len(p.index)) == before


def test_a_call_failing_after_its_scores_were_added_leaves_them_as_they_were(w1_models):
    """The scores' rows are saved as scores are added (the summaries' save covers only the
    counts): a defect in the emit stage, after aggregate, leaves every score as it was."""
    p = _processor(w1_models, MarkedEventRaises)
    process_isolated(p, _stream(devices=3, samples=60))
    names = ("windows", "anomalies", "score_sum", "score_max", "last", "recent")

    def state() -> tuple:
        scores = [getattr(p.summaries, k).tobytes() for k in names]
        return _state(p), scores, p.counters.windows, len(p.summaries.touched)

    before = state()
    with pytest.raises(RuntimeError, match="describing a marked window"):
        p.process([*_stream(devices=3, samples=70)[180:], msg("d1", 10_000, MARK)])
    assert state() == before


def test_a_defect_that_raises_for_every_message_rejects_each_once(w1_models):
    """Every message raises on its own: each is counted once as ``internal`` and
    dead-lettered, nothing is counted as decoded, and the call returns (no retry loop)."""
    p = _processor(w1_models, AlwaysRaises)
    warm = _stream(devices=2, samples=31)  # no window due yet: nothing raises
    process_isolated(p, warm)
    batch = _stream(devices=2, samples=40)[62:]
    assert process_isolated(p, batch) == []
    assert p.counters.errors == {"internal": len(batch)}
    assert [m for m, _, _ in p.rejected] == batch
    assert p.counters.decoded == len(warm)
    assert sum(r.payload["count"] for r in p.flush() if r.kind == "summary") == len(warm)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 200), st.lists(st.integers(0, 199), min_size=1, max_size=4))
def test_marked_messages_anywhere_cost_only_themselves(w1_models, n, at):
    """Up to four marked messages anywhere in a batch of good ones."""
    p = _processor(w1_models)
    history = _stream(devices=4, samples=40)
    process_isolated(p, history)
    batch = _stream(devices=4, samples=40 + n)[160:]
    bad = [msg(f"d{i % 4}", 5000 + i, MARK) for i in range(len(at))]
    for b, i in sorted(zip(bad, at), key=lambda x: -x[1]):
        batch.insert(min(i, len(batch)), b)
    process_isolated(p, batch)
    assert p.counters.errors == {"internal": len(bad)}
    assert sorted(m.payload for m, _, _ in p.rejected) == sorted(b.payload for b in bad)
    assert p.counters.decoded == len(history) + len(batch) - len(bad)
