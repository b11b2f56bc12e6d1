"""Alarm quality on synthetic plants, through ``edge-agent replay``'s code (docs/alarms.md).

Two runs of 20 devices, 3 channels each, one sample every 5 s: a slow periodic swing
(period 2 h, a different phase per device) plus noise; a 4-h warm-up (two periods) with
``calibration.false_alarms_per_day: 1`` and the model-free ``baseline`` handler, every rule
at its default.

- healthy: 24 h per device after the warm-up, nothing injected: false episodes per
  device-day (target: at most 2).
- faults: 12 h per device after the warm-up, one 10-min fault per device at a random time
  (one channel steps by 6 noise widths): faults detected (target: at least 18 of 20) and
  episodes opened per fault (target: one, no reopening inside a fault).

    python -m bench.alarms [--devices 20] [--hours 24] [--json]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from agent.config import parse_config
from agent.tools.replay import Recording, Result, episode_metrics, replay

PERIOD_S = 7200.0
STEP_S = 5.0
WARMUP_H = 4.0
FAULT_S = 600.0
NOISE = 0.2
T0 = 1.7e9


def config(budget: float | None = 1.0):
    """The pipeline every run uses (all rule settings at their defaults)."""
    calibration: dict = {"warmup": int(WARMUP_H * 3600 / STEP_S)}
    if budget is not None:
        calibration["false_alarms_per_day"] = budget
    pipe = {
        "name": "plant",
        "source": {"broker": "local", "topics": ["plant/+/data"]},
        "decoder": {"type": "json", "device": "topic[1]", "channels": 3},
        "window": {"size": 32, "hop": 8},
        "calibration": calibration,
        "handler": {"type": "baseline"},
        "sinks": [{"type": "stdout"}],
    }
    return parse_config({"brokers": {"local": {}}, "pipelines": [pipe]}, "bench").pipelines[0]


def plant(devices: int, hours: float, faults: bool, seed: int = 1) -> list[Recording]:
    """Each device's rows: warm-up plus ``hours``; labels mark the injected fault."""
    rng = np.random.default_rng(seed)
    n = int((WARMUP_H + hours) * 3600 / STEP_S)
    t = np.arange(n) * STEP_S
    out = []
    for d in range(devices):
        phase = rng.uniform(0, 2 * np.pi)
        swing = np.sin(2 * np.pi * t / PERIOD_S + phase)[:, None] * np.array([1.0, 0.6, 2.5])
        values = np.array([50.0, 7.0, 120.0]) + swing + rng.normal(0, NOISE, (n, 3))
        labels = np.zeros(n, bool)
        if faults:
            start = rng.uniform(WARMUP_H * 3600 + 600, t[-1] - FAULT_S - 600)
            labels = (t >= start) & (t < start + FAULT_S)
            values[labels, int(rng.integers(0, 3))] += 6 * NOISE
        out.append(Recording(f"dev{d:02d}", T0 + t, values, labels))
    return out


def run(devices: int, hours: float, faults: bool, budget: float | None = 1.0) -> dict:
    result: Result = replay(config(budget), plant(devices, hours, faults))
    metrics = episode_metrics(result)
    days = devices * hours / 24
    opened = [e for e in result.events if e.get("event") == "opened"]
    metrics["false_per_device_day"] = round(metrics["false_episodes"] / days, 3)
    if faults:
        per_fault = [
            sum(
                1
                for e in opened
                if e["device"] == r.device and r.ts[r.labels][0] <= e["ts"] <= r.ts[r.labels][-1]
            )
            for r in result.recordings
        ]
        metrics["max_opened_in_a_fault"] = max(per_fault)
    return metrics


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.alarms", description=__doc__.split("\n")[0])
    p.add_argument("--devices", type=int, default=20)
    p.add_argument("--hours", type=float, default=24)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    out = {
        "healthy": run(args.devices, args.hours, faults=False),
        "healthy_factor_rule": run(args.devices, args.hours, faults=False, budget=None),
        "faults": run(args.devices, args.hours / 2, faults=True),
    }
    if args.json:
        print(json.dumps(out))
    else:
        for name, m in out.items():
            print(name, " ".join(f"{k}={v}" for k, v in m.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
