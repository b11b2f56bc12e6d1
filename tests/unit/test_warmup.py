"""Online calibration: per-device normaliser and `threshold: auto` from each warm-up."""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import orjson
import pytest

from agent.config import parse_config
from agent.errors import ConfigError
from agent.records import Message
from agent.stages.calibration import auto_threshold, fit_normaliser
from agent.stages.processor import Processor, build_processor

T0 = float(int(time.time()))


def processor(
    model: str, warmup: int = 100, hop: int = 1, max_mb: float = 128, max_devices: int = 100_000
) -> Processor:
    cfg = parse_config(
        {
            "brokers": {"local": {}},
            "pipelines": [
                {
                    "name": "cal",
                    "source": {"broker": "local", "topics": ["p/+/t"]},
                    "decoder": {"type": "json", "device": "topic[1]", "channels": 8},
                    "window": {"size": 32, "hop": hop, "max_devices": max_devices},
                    "calibration": {"warmup": warmup, "max_warmup_mb": max_mb},
                    "handler": {"type": "onnx", "model": model, "threshold": "auto"},
                    "sinks": [{"type": "stdout"}],
                }
            ],
        },
        "test",
    )
    return build_processor(cfg.pipelines[0])


def device_values(rng, n, level, fault_at):
    """Channels at very different operating levels; a step fault from ``fault_at``."""
    t = np.arange(n)[:, None]
    v = level + level * 0.05 * np.sin(t * 0.3 + np.arange(8)) + rng.normal(0, level * 0.01, (n, 8))
    v[fault_at:] += level * 0.3
    return v


def test_matches_the_direct_computation(w1_models):
    """Interleaved devices in batches give what fit_normaliser / auto_threshold give
    on each device alone; warm-up windows are never scored."""
    rng = np.random.default_rng(1)
    n, warm = 300, 100
    data = {f"d{k}": device_values(rng, n, level, 200) for k, level in enumerate([1, 50, 3000])}
    msgs = [
        Message(f"p/{d}/t", orjson.dumps({"ts": T0 + i, "seq": i, "v": v[i].tolist()}), 0.0)
        for i in range(n)
        for d, v in data.items()
    ]
    proc = processor(str(w1_models[0]), warmup=warm)
    got: dict[str, list[tuple[int, float, bool]]] = {d: [] for d in data}
    for lo in range(0, len(msgs), 97):
        _, scored = proc.process(msgs[lo : lo + 97])
        if scored is not None:
            for d, s, sc, a in zip(scored.devices, scored.seq, scored.scores, scored.anomalous):
                got[d].append((int(s), float(sc), bool(a)))
    for d, v in data.items():
        z = fit_normaliser(v[:warm]).apply(v)
        win = np.stack([z[i : i + 32] for i in range(n - 31)])
        scores = proc.handler.infer(win)
        thr = auto_threshold(scores[: warm - 31])
        seqs = [s for s, _, _ in got[d]]
        assert seqs == list(range(warm, n))  # first scored window ends on the first test row
        np.testing.assert_allclose([sc for _, sc, _ in got[d]], scores[warm - 31 :], rtol=1e-5)
        assert [a for _, _, a in got[d]] == list(scores[warm - 31 :] > thr)
        assert any(a for _, _, a in got[d])  # the step fault is found on every device


def test_auto_threshold_needs_calibration(w1_models):
    cfg = {
        "brokers": {"l": {}},
        "pipelines": [
            {
                "name": "x",
                "source": {"broker": "l", "topics": ["a"]},
                "decoder": {"type": "json", "channels": 8},
                "handler": {"type": "onnx", "model": "m.onnx", "threshold": "auto"},
                "sinks": [{"type": "stdout"}],
            }
        ],
    }
    with pytest.raises(ConfigError, match=r"pipelines\[0\].handler.threshold: 'auto'"):
        parse_config(cfg, "t.yaml")


def test_baseline_handler_finds_a_broken_correlation():
    """No model: per-device PCA on the warm-up flags a fault that keeps every channel in
    its normal range but breaks how channels move together; 5 channels, hop 4."""
    cfg = parse_config(
        {
            "brokers": {"local": {}},
            "pipelines": [
                {
                    "name": "base",
                    "source": {"broker": "local", "topics": ["p/+/t"]},
                    "decoder": {"type": "json", "device": "topic[1]", "channels": 5},
                    "window": {"size": 16, "hop": 4},
                    "calibration": {"warmup": 200, "factor": 1.5},
                    "handler": {"type": "baseline"},
                    "sinks": [{"type": "stdout"}],
                }
            ],
        },
        "test",
    )
    proc = build_processor(cfg.pipelines[0])
    rng = np.random.default_rng(2)
    n, fault = 400, 300
    msgs, scored_seqs = [], []
    for d, level in (("a", 1.0), ("b", 900.0)):
        load = rng.normal(0, 1, n)
        v = level * (10 + np.stack([load, 2 * load, -load, load, 0.5 * load], 1))
        v += rng.normal(0, level * 0.05, (n, 5))
        v[fault:, 1] = level * (10 - 2 * load[fault:])  # same range, opposite sign
        msgs += [
            Message(f"p/{d}/t", orjson.dumps({"ts": T0 + i, "seq": i, "v": v[i].tolist()}), 0)
            for i in range(n)
        ]
    events = []
    for lo in range(0, len(msgs), 50):
        evs, scored = proc.process(msgs[lo : lo + 50])
        events += evs
        if scored is not None:
            scored_seqs += scored.seq.tolist()
    assert min(scored_seqs) >= 200  # warm-up windows are not scored
    late = {(e.device, e.payload["seq"] >= fault) for e in events}
    assert late == {("a", True), ("b", True)}  # every event is after the fault, on both


def test_reload_keeps_warmup_state_on_the_adopted_devices(w1_models):
    """A reloaded processor that keeps the windows keeps each device's calibration too (same
    calibration and model), and its warm-up state follows the adopted device index past the
    new processor's own initial capacity."""
    rng = np.random.default_rng(2)

    def batch(devices, seq):
        return [
            Message(
                f"p/d{d}/t",
                orjson.dumps({"ts": T0 + seq, "seq": seq, "v": rng.normal(size=8).tolist()}),
                0.0,
            )
            for d in devices
        ]

    old = processor(str(w1_models[0]), warmup=40)
    for seq in range(60):  # 300 devices: past the initial 256 slots; all calibrated
        old.process(batch(range(300), seq))
    learned = old.warmup.threshold[: len(old.index)].copy()
    new = processor(str(w1_models[0]), warmup=40)
    assert new.adopt(old)
    assert new.warmup is old.warmup
    for seq in range(60, 70):  # new devices join on the adopted index
        new.process(batch(range(500), seq))
    np.testing.assert_array_equal(new.warmup.threshold[: len(learned)], learned)

    changed = processor(str(w1_models[0]), warmup=50)  # new calibration: learn again
    assert changed.adopt(new)
    assert changed.warmup is not new.warmup
    _, scored = changed.process(batch(range(500), 70))
    assert scored is None or not len(scored.devices)  # warming up again: nothing scored


def test_devices_warming_up_are_counted(w1_models):
    """`edge_agent_devices_warming_up`: devices tracked whose warm-up is not complete."""
    proc = processor(str(w1_models[0]), warmup=40)
    assert proc.warming_up() == 0

    def batch(device: str, n: int, start: int = 0) -> list[Message]:
        return [
            Message(f"p/{device}/t", orjson.dumps({"ts": T0 + k, "v": [0.1 * k] * 8}))
            for k in range(start, start + n)
        ]

    proc.process(batch("a", 39) + batch("b", 40))
    assert proc.warming_up() == 1  # b is calibrated, a lacks one sample
    proc.process(batch("a", 1, 39))
    assert proc.warming_up() == 0


def rounds(devices: list[str], start: int, n: int) -> list[list[Message]]:
    """One batch per round, one sample of every device in each."""
    rng = np.random.default_rng(start)
    return [
        [
            Message(
                f"p/{d}/t",
                orjson.dumps({"ts": T0 + k, "seq": k, "v": (1 + rng.normal(0, 0.05, 8)).tolist()}),
            )
            for d in devices
        ]
        for k in range(start, start + n)
    ]


def test_warmup_memory_is_bounded_by_its_budget_not_by_devices(w1_models):
    """2,000 new devices with a 400-sample warm-up and a 1 MiB budget: the warm-up takes
    about its budget, where it took ``devices x 400 x 8 x 4`` bytes (25.6 MB here, and
    twice that while growing by copy)."""
    proc = processor(str(w1_models[0]), warmup=400, max_mb=1)
    batches = rounds([f"d{k}" for k in range(2000)], 0, 3)
    proc.process(rounds(["first"], 0, 1)[0])  # lazy imports and first-call caches
    tracemalloc.start()
    try:
        for b in batches:
            proc.process(b)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert proc.warmup.buf.nbytes <= 1 << 20
    assert peak < 6e6, peak  # windows, index and decoding of 2,000 devices included
    assert proc.warmup_deferred() == 3 * (2001 - len(proc.warmup.buf))


def test_devices_beyond_the_budget_wait_then_calibrate(w1_models):
    """A budget of two warm-up buffers and four devices: c and d wait (counted as
    ``warmup_deferred``, not scored) while a and b warm up, then take the freed buffers;
    each ends with the threshold its own first 40 buffered samples give."""
    warm, devices = 40, ["a", "b", "c", "d"]
    row = warm * 8 * 4
    proc = processor(str(w1_models[0]), warmup=warm, max_mb=2 * row / (1 << 20))
    assert len(proc.warmup.buf) == 2
    batches = rounds(devices, 0, 3 * warm)
    for b in batches[:warm]:
        proc.process(b)
    assert proc.warmup_deferred() == 2 * warm
    assert proc.device_threshold("a") is not None and proc.device_threshold("c") is None
    assert proc.warming_up() == 2
    for b in batches[warm:]:
        _, scored = proc.process(b)
    assert proc.warmup_deferred() == 2 * warm and proc.warming_up() == 0
    assert set(scored.devices) == set(devices)
    alone = processor(str(w1_models[0]), warmup=warm)
    for b in batches[warm:]:
        alone.process([m for m in b if m.topic in ("p/c/t", "p/d/t")])
    for d in ("c", "d"):
        assert proc.device_threshold(d) == alone.device_threshold(d)
