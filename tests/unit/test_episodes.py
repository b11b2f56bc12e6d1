"""Episodes through the Processor: one opened and one closed event per condition, hysteresis,
on-delay, cooldown, reminders, escalation, the flood guard, causes and batch invariance."""

from __future__ import annotations

import numpy as np
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import parse_config
from agent.records import EVENT, STATS, SUMMARY, Message
from agent.registry import Registry
from agent.stages.processor import Processor
from tests.support.configs import sample_pipeline

T0 = 1.0e9


class Newest:
    """A handler whose score is the window's newest value of channel 0 (no model); it
    attributes the score to the channel with the largest newest value."""

    threshold = 1.0
    attributes = True

    def load(self, window_size: int, channels: int) -> None:
        pass

    def infer(self, windows: np.ndarray) -> np.ndarray:
        return windows[:, -1, 0]

    def attribute(self, slots: np.ndarray, windows: np.ndarray) -> np.ndarray:
        return np.abs(windows[:, -1, :]).astype(np.float64)


def processor(rule: dict | None = None, channels: int = 1, fields=None) -> Processor:
    decoder = {"type": "json", "device": "topic[1]"}
    decoder.update({"fields": fields, "values": None} if fields else {"channels": channels})
    pipe = sample_pipeline(decoder=decoder, rule=rule or {})
    cfg = parse_config({"brokers": {"local": {}}, "pipelines": [pipe]}, "t").pipelines[0]
    proc = Processor(cfg, Registry().get("decoder", "json")(cfg.decoder), Newest())
    proc.load()
    return proc


def msgs(scores: dict[str, list[float]], start: int = 0) -> list[Message]:
    """Interleaved messages, one per device per second, value = score."""
    n = max(len(v) for v in scores.values())
    return [
        Message(f"t/{d}", orjson.dumps({"ts": T0 + start + i, "seq": start + i, "v": [v[i]]}))
        for i in range(n)
        for d, v in scores.items()
        if i < len(v)
    ]


def events(records) -> list[dict]:
    return [r.payload for r in records if r.kind == EVENT]


def run(proc: Processor, messages: list[Message], batch: int) -> list[dict]:
    out = []
    for lo in range(0, len(messages), batch):
        out += events(proc.process(messages[lo : lo + batch])[0])
    return out


def test_one_opened_and_one_closed_per_condition_with_hysteresis():
    """A fault that dips under the threshold but not under the clear level stays one
    episode; it closes after `clear_after` windows at or below the clear level."""
    proc = processor({"clear": 0.5, "clear_after": 3})
    a = [0, 0, 2, 3, 0.8, 0.9, 4, 0.2, 0.3, 0.1, 0, 0]  # onset at t=2, last above 0.5 at t=6
    got = run(proc, msgs({"a": a, "b": [0] * len(a)}), 100)
    assert [e["event"] for e in got] == ["opened", "escalated", "closed"]
    opened, escalated, closed = got
    assert escalated["ts"] == T0 + 3 and escalated["severity"] == "critical"
    assert opened["device"] == "a" and opened["onset"] == T0 + 2 and opened["ts"] == T0 + 2
    assert opened["score"] == 2 and opened["threshold"] == 1.0
    assert opened["severity"] == "warning"
    assert closed["episode"] == opened["episode"] != ""
    assert (closed["start"], closed["end"], closed["duration"]) == (T0 + 2, T0 + 6, 4.0)
    assert (closed["peak"], closed["peak_ts"], closed["windows"]) == (4, T0 + 6, 8)
    assert closed["reason"] == "cleared" and closed["ts"] == T0 + 9
    assert closed["severity"] == "critical"  # 3 > 2 x threshold escalated it
    summaries = [r.payload for r in proc.flush() if r.kind == SUMMARY]
    by = {s["device"]: s for s in summaries}
    assert (by["a"]["episodes_opened"], by["a"]["episodes_closed"]) == (1, 1)
    assert (by["b"]["episodes_opened"], by["b"]["episode_open"]) == (0, False)


def test_escalation_event_and_severity_levels():
    proc = processor({"clear_after": 2})
    got = run(proc, msgs({"a": [1.5, 1.8, 2.5, 3, 0, 0]}), 1)
    assert [(e["event"], e["severity"]) for e in got] == [
        ("opened", "warning"),
        ("escalated", "critical"),
        ("closed", "critical"),
    ]
    assert got[1]["score"] == 2.5 and len({e["episode"] for e in got}) == 1


def test_open_after_needs_consecutive_windows_and_onset_is_the_first():
    proc = processor({"open_after": 3, "clear_after": 1})
    got = run(proc, msgs({"a": [2, 2, 0, 2, 2, 2, 0]}), 100)
    assert [e["event"] for e in got] == ["opened", "closed"]
    assert got[0]["onset"] == T0 + 3 and got[0]["ts"] == T0 + 5


def test_cooldown_and_repeat_are_in_sample_time():
    proc = processor({"clear_after": 1, "cooldown": "3s", "repeat": "2s"})
    got = run(proc, msgs({"a": [2, 2, 2, 2, 2, 0, 2, 2, 0, 0, 2, 0]}), 100)
    kinds = [(e["event"], e["ts"] - T0) for e in got]
    # open at 0, reminders at 2 and 4, close at 5; the over windows at 6 and 7 fall in the
    # cooldown (until 8); the one at 10 opens again.
    assert kinds == [
        ("opened", 0),
        ("ongoing", 2),
        ("ongoing", 4),
        ("closed", 5),
        ("opened", 10),
        ("closed", 11),
    ]


def test_windows_mode_keeps_an_event_per_anomalous_window():
    proc = processor({"events": "windows"})
    got = run(proc, msgs({"a": [2, 2, 0, 2]}), 100)
    assert [e["seq"] for e in got] == [0, 1, 3] and all("event" not in e for e in got)


def test_flood_guard_reports_once_and_counts_every_suppressed_opening():
    proc = processor({"flood": {"limit": 3, "period": "10m"}, "clear_after": 1})
    devices = {f"d{i}": [2, 0] for i in range(8)}
    got = run(proc, msgs(devices), 1000)
    opened = [e for e in got if e["event"] == "opened"]
    floods = [e for e in got if e["event"] == "flood"]
    closed = [e for e in got if e["event"] == "closed"]
    assert len(opened) == 3 and len(closed) == 3  # suppressed episodes close silently
    assert len(floods) == 1 and floods[0]["limit"] == 3 and floods[0]["opened"] == 3
    stats = next(r.payload for r in proc.flush() if r.kind == STATS)
    assert stats["episodes_suppressed"] == 5 and stats["episodes_opened"] == 3
    assert stats["episodes_open"] == 0


def test_stop_closes_open_episodes_with_a_reason():
    proc = processor()
    got = run(proc, msgs({"a": [2, 2], "b": [0, 0]}), 10)
    assert [e["event"] for e in got] == ["opened"]
    closed = events(proc.close_episodes("stop"))
    assert [(e["device"], e["reason"], e["episode"]) for e in closed] == [
        ("a", "stop", got[0]["episode"])
    ]
    assert events(proc.close_episodes("stop")) == []


def test_open_episode_survives_a_reload_that_keeps_the_windows():
    old = processor()
    first = run(old, msgs({"a": [2, 2]}), 10)
    new = processor({"clear_after": 2})
    assert new.adopt(old)
    got = run(new, msgs({"a": [2, 0, 0]}, start=2), 10)
    assert [e["event"] for e in got] == ["closed"]
    assert got[0]["episode"] == first[0]["episode"] and got[0]["start"] == T0


def test_cause_names_fields_and_shares():
    proc = processor(fields=["flow", "pressure", "temp"])
    body = orjson.dumps({"ts": T0, "flow": 1.5, "pressure": 6.0, "temp": 0.5})
    (opened,) = events(proc.process([Message("t/a", body)])[0])
    assert [c["channel"] for c in opened["cause"]] == ["pressure", "flow", "temp"]
    assert [c["share"] for c in opened["cause"]] == [0.75, 0.188, 0.062]


def test_no_cause_when_the_handler_cannot_attribute():
    proc = processor()
    proc.attributes = False  # as for a handler without the Attributing ability
    (opened,) = run(proc, msgs({"a": [2]}), 1)
    assert "cause" not in opened


scores = st.lists(st.sampled_from([0.0, 0.5, 0.95, 1.5, 2.5]), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(st.sampled_from(["a", "b", "c"]), scores, min_size=1),
    st.integers(1, 17),
)
def test_batches_give_what_single_windows_give(series, batch):
    """One batch of N windows gives the events of N batches of one, field by field."""
    rule = {"open_after": 2, "clear_after": 2, "clear": 0.9, "repeat": "3s", "cooldown": "2s"}
    messages = msgs(series)
    one = [local_ids(e) for e in run(processor(rule), messages, 1)]
    many = [local_ids(e) for e in run(processor(rule), messages, batch)]
    assert many == one


def local_ids(event: dict) -> dict:
    """An event without the per-processor id prefix (its episode's serial stays)."""
    return (
        {**event, "episode": event["episode"].rsplit("-", 1)[-1]} if "episode" in event else event
    )


def test_a_warm_up_too_short_for_the_budget_is_named_at_start_up():
    """Start-up names the minimum warm-up; the first fit names the minimum for the
    device's rate when the budget would extrapolate far beyond the warm-up."""
    from structlog.testing import capture_logs

    pipe = {
        "name": "p",
        "source": {"broker": "local", "topics": ["t/+"], "max_clock_skew": None},
        "decoder": {"type": "json", "device": "topic[1]", "channels": 2},
        "window": {"size": 8, "hop": 4},
        "calibration": {"warmup": 100, "false_alarms_per_day": 1},
        "handler": {"type": "baseline"},
        "sinks": [{"type": "stdout"}],
    }
    cfg = parse_config({"brokers": {"local": {}}, "pipelines": [pipe]}, "t").pipelines[0]
    registry = Registry()
    with capture_logs() as logs:
        proc = Processor(
            cfg,
            registry.get("decoder", "json")(cfg.decoder),
            registry.get("handler", "baseline")(cfg.handler),
        )
        proc.load()
        rng = np.random.default_rng(0)
        proc.process(  # 100 samples/s: 2.2 million windows a day
            [
                Message("t/a", orjson.dumps({"ts": T0 + k / 100, "v": rng.normal(size=2).tolist()}))
                for k in range(120)
            ]
        )
    warned = [r for r in logs if r["event"] == "warmup_short_for_budget"]
    assert [w["minimum"] for w in warned] == [507, 4334]  # 1e-3 / p + 2 (size - 1)
    assert "calibration.warmup >= 507" in warned[0]["reason"]
    assert warned[1]["windows_per_day"] == 2_160_000
