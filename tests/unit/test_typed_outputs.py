"""Typed handler outputs through the Processor, with the shipped models: class probabilities
(AI4I failure modes) and a regression with an interval (C-MAPSS remaining useful life), their
decision rules feeding the episode machine, event fields, summaries and restarts."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from agent.config import load_config, parse_config
from agent.errors import ModelError
from agent.protocols import output_kind
from agent.records import EVENT, SUMMARY, Message
from agent.stages.processor import build_processor
from agent.tools.evaluate_rul import messages as engine_messages
from agent.tools.evaluate_rul import pipeline as rul_pipeline
from agent.tools.training import cmapss, datasets

CONFIG = datasets.data_root().parent / "configs" / "turbofan-rul.yaml"


def _processor(pipe: dict):
    cfg = parse_config({"brokers": {"none": {}}, "pipelines": [pipe]}, "test")
    return build_processor(cfg.pipelines[0])


def _events(records) -> list[dict]:
    return [r.payload for r in records if r.kind == EVENT]


# -- classes: AI4I ---------------------------------------------------------------------------
OK = [1, 298.1, 308.6, 1551, 42.8, 0]  # a normal reading
POWER_FAIL = [0, 298.9, 309.1, 2861, 4.6, 143]  # power ~1.4 kW: PWF


def ai4i_processor(**rule):
    return _processor(
        {
            "name": "mill",
            "source": {"broker": "none", "topics": ["m/+"], "max_clock_skew": None},
            "decoder": {"type": "json", "device": "topic[1]", "channels": 6},
            "window": "none",
            "handler": {"type": "onnx_classifier", "model": "builtin:ai4i_pdm"},
            "rule": rule,
            "sinks": [{"type": "stdout"}],
        }
    )


def reading(device: str, t: float, row: list) -> Message:
    return Message(f"m/{device}", orjson.dumps({"ts": t, "seq": int(t), "v": row}))


def test_classifier_kind_opens_an_episode_naming_the_mode():
    """A class other than healthy opens an episode; the event names the class with its
    probability, summaries count windows per most likely class."""
    p = ai4i_processor(clear_after=2)
    assert output_kind(p.handler) == "classes" and p.handler.healthy == "none"
    rows = [OK, OK, POWER_FAIL, POWER_FAIL, OK, OK, OK]
    records, scored = p.process([reading("m1", 100 + i, r) for i, r in enumerate(rows)])
    got = _events(records)
    assert [e["event"] for e in got] == ["opened", "closed"]
    opened = got[0]
    assert opened["class"] == "PWF" and opened["probability"] > 0.5
    assert set(opened["probabilities"]) == {"none", "TWF", "HDF", "PWF", "OSF", "RNF"}
    assert opened["score"] == pytest.approx(1 - opened["probabilities"]["none"], abs=1e-4)
    assert opened["threshold"] == 0.5 and opened["seq"] == 102
    assert scored.anomalous.tolist() == [False, False, True, True, False, False, False]
    (summary,) = [r.payload for r in p.flush() if r.kind == SUMMARY]
    assert summary["classes"] == {"none": 5, "TWF": 0, "HDF": 0, "PWF": 2, "OSF": 0, "RNF": 0}
    assert summary["max"] > 0.5 and summary["episodes_opened"] == 1


def test_classifier_kind_in_window_events():
    """``events: windows`` gives one event per over window with the same class fields."""
    p = ai4i_processor(events="windows")
    records, _ = p.process([reading("m1", 1, OK), reading("m2", 1, POWER_FAIL)])
    (event,) = _events(records)
    assert event["device"] == "m2" and event["class"] == "PWF" and event["score"] > 0.5


def test_classifier_without_declared_classes_is_refused(tmp_path):
    """A model that names no classes needs them in the config; the error says which key."""
    p_cfg = {
        "name": "x",
        "source": {"broker": "none", "topics": ["m/+"]},
        "decoder": {"type": "json", "device": "topic[1]", "channels": 8},
        "window": {"size": 32, "hop": 8},
        "handler": {
            "type": "onnx_classifier",
            "model": "builtin:skab_pump_ae_fp32",
            "output": "score",
        },
        "sinks": [{"type": "stdout"}],
    }
    with pytest.raises(ModelError, match=r"declares no 'classes': set handler\.classes"):
        _processor(p_cfg)


# -- regression: C-MAPSS RUL -------------------------------------------------------------------
@pytest.fixture(scope="module")
def engines():
    data = datasets.cmapss_train()
    held = cmapss.split(data.engines())["held_out"]
    return data, held


def rul_processor(**rule):
    pipe = rul_pipeline()
    pipe["rule"] = {**pipe["rule"], **rule}
    return _processor(pipe)


def test_rul_episode_opens_below_the_limit_and_closes_on_a_restart(engines):
    """An engine run to failure opens one episode when its estimate falls below 30 cycles,
    with the estimate, its interval, units and limit instead of a score; escalates below 15;
    maintenance (the cycle counter restarting) closes it, and windows spanning the restart
    are not scored."""
    data, held = engines
    unit = held[0]
    rows = data.engine(unit)
    p = rul_processor()
    life1 = engine_messages("e1", rows, data.columns)
    life2 = engine_messages("e1", rows[:40], data.columns, t0=len(rows) + 5)
    records, scored = p.process(life1 + life2)
    got = _events(records)
    assert [e["event"] for e in got] == ["opened", "escalated", "closed"]
    opened, escalated, closed = got
    assert opened["rul"] < 30 and "score" not in opened and "threshold" not in opened
    assert opened["units"] == "cycles" and opened["limit"] == 30
    low, high = opened["interval"]
    assert low <= opened["rul"] <= high
    assert len(rows) - opened["seq"] >= 10  # warned at least 10 cycles before failure
    assert escalated["rul"] < 15 and escalated["severity"] == "critical"
    assert closed["reason"] == "reset" and closed["episode"] == opened["episode"]
    assert closed["rul_min"] < 15 and closed["ts"] == pytest.approx(len(rows) + 5)
    assert "peak" not in closed and closed["limit"] == 30
    # life 1 gives len-29 windows; life 2 (40 cycles) only from its 30th cycle: 11 windows
    assert len(scored.devices) == (len(rows) - 29) + 11
    assert scored.seq[-11:].tolist() == list(range(30, 41))
    (summary,) = [r.payload for r in p.flush() if r.kind == SUMMARY]
    assert "mean" not in summary and "max" not in summary
    assert summary["rul_last"] == pytest.approx(float(scored.details["rul"][-1]), abs=0.01)
    assert summary["rul_min"] == pytest.approx(float(scored.details["rul"].min()), abs=0.01)
    assert summary["rul_min"] < 15 < summary["rul_last"]


def test_restarts_do_not_depend_on_batching(engines):
    """Two engines interleaved, one restarting mid-stream: one batch or batches of 7 give the
    same events and the same estimates."""
    data, held = engines
    a, b = data.engine(held[1]), data.engine(held[2])
    msgs_a = engine_messages("a", a, data.columns) + engine_messages(
        "a", a[:35], data.columns, t0=len(a)
    )
    msgs_b = engine_messages("b", b, data.columns)
    mixed = [m for pair in zip(msgs_a, msgs_b) for m in pair]
    mixed += msgs_a[len(msgs_b) :] + msgs_b[len(msgs_a) :]

    def run(batch: int):
        p = rul_processor()
        events, rul = [], []
        for lo in range(0, len(mixed), batch):
            records, scored = p.process(mixed[lo : lo + batch])
            events += [{k: v for k, v in e.items() if k != "episode"} for e in _events(records)]
            if scored is not None:
                rul += list(zip(scored.devices, scored.seq.tolist(), scored.details["rul"]))
        return events, rul

    whole, chunked = run(len(mixed)), run(7)
    assert whole[0] == chunked[0]
    assert [(d, s) for d, s, _ in whole[1]] == [(d, s) for d, s, _ in chunked[1]]
    np.testing.assert_allclose([r for *_, r in whole[1]], [r for *_, r in chunked[1]], atol=1e-4)
    assert [e["reason"] for e in whole[0] if e["event"] == "closed"] == ["reset"]


def test_shipped_config_is_the_evaluated_pipeline():
    """configs/turbofan-rul.yaml (name matches configs/*rul*.yaml) is what evaluate cmapss
    replays: same decoder, window, handler and restart rule."""
    assert CONFIG.match("*rul*.yaml")
    (pipe,) = load_config(CONFIG).pipelines
    ref = parse_config({"brokers": {"none": {}}, "pipelines": [rul_pipeline()]}, "t").pipelines[0]
    assert pipe.decoder == ref.decoder and pipe.window.size == ref.window.size
    assert pipe.window.hop == ref.window.hop and pipe.handler == ref.handler
    assert pipe.rule.reset_on_restart and pipe.rule.severity.critical == 2.0
