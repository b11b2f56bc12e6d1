"""Smoke test of the W1 bench: at a low rate nothing is lost (correctness only, never timings)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.broker import mosquitto
from bench.floor import FLOORS
from bench.floor import table as floor_table
from bench.proc import steal_share, thread_delta, thread_stats
from bench.w1 import (
    PROCESSORS,
    Processor,
    Row,
    Settings,
    Trial,
    build_models,
    highest,
    run_trial,
    steal_range,
    table,
)
from tests.support.mqtt import ROOT

# The trials run a mosquitto (marked `mosquitto`: skipped without it, tests/conftest.py);
# the table, bisection and steal tests are pure functions and always run.


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    work = tmp_path_factory.mktemp("w1")
    with mosquitto(work) as broker:
        yield Settings(broker.port, work, build_models(work), devices=10)


def by_name(name: str) -> Processor:
    return next(p for p in PROCESSORS if p.name == name)


@pytest.mark.mosquitto
@pytest.mark.parametrize("name", ["naive-fp32-q0", "naive-fp32-q1"])
def test_naive_agent_counts_every_sample(settings: Settings, name: str) -> None:
    """Each sample sent is in exactly one summary; each anomaly summed arrived as one event."""
    trial = run_trial(settings, by_name(name), target=500.0, duration=3.0)
    assert trial.sent == 1500
    assert trial.final == trial.sent
    assert trial.per_device_ok
    assert trial.events > 0  # every device's first 200 samples hold a spike
    assert trial.anomalies == trial.events
    assert trial.exit_code == 0
    assert trial.steal_pct is not None and 0 <= trial.steal_pct <= 100


@pytest.mark.mosquitto
def test_agent_counts_every_sample_once(settings: Settings) -> None:
    """The agent's summaries count each sample once, from a spool of its own per trial."""
    for _ in range(2):  # the second trial must not replay rows of the first
        trial = run_trial(settings, by_name("agent-int8-q0"), target=500.0, duration=4.0)
        assert trial.sent == 2000
        assert trial.final == trial.sent
        assert trial.per_device_ok
        assert trial.events > 0
        assert trial.anomalies == trial.events
        assert trial.duplicates == 0
        assert trial.exit_code == 0
    assert (settings.workdir / "agent-int8-q0-spool.db").exists()


@pytest.mark.mosquitto
@pytest.mark.parametrize("threads", [1, 2])
def test_relay_forwards_every_18th_sample_and_counts_all(settings: Settings, threads: int) -> None:
    """The floor relays (bench.floor) are checked like any processor: nothing lost, and
    their events are exactly the samples with seq % 18 == 0."""
    relay = next(p for p in FLOORS if p.threads == threads)
    trial = run_trial(settings, relay, target=500.0, duration=3.0)
    assert trial.sent == 1500
    assert trial.final == trial.sent
    assert trial.per_device_ok
    assert trial.events == 10 * 9  # 150 samples per device: seq 0, 18, ..., 144
    assert trial.anomalies == trial.events
    assert trial.p50_ms is not None and trial.p99_ms >= trial.p50_ms
    assert trial.exit_code == 0


def test_floor_table_shows_each_round_and_the_medians() -> None:
    trials = [
        Trial(1000.0, p50_ms=0.6, p99_ms=2.5, steal_pct=0.4),
        Trial(1000.0, p50_ms=0.7, p99_ms=9.0, steal_pct=3.0),
        Trial(1000.0, p50_ms=0.5, p99_ms=1.5, steal_pct=0.2, why=["exit code 1"]),
    ]
    header, line = floor_table({"relay-1": trials}).splitlines()
    assert header.split()[0] == "processor" and "median" in header
    assert "0.6/2.5 (0.4 %)" in line and "0.7/9.0 (3.0 %)" in line
    assert "0.60 / 2.50" in line  # the medians of p50 and of p99
    assert line.split()[-1] == "2/3"  # trials held


@pytest.mark.parametrize(
    ("name", "first_line"),
    [("w1", "W1 end-to-end"), ("floor", "Latency floor"), ("scale", "Idle and scale")],
)
def test_bench_modules_explain_themselves(name: str, first_line: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert first_line in done.stdout


@pytest.mark.mosquitto
@pytest.mark.parametrize("name", ["counter-q0", "counter-q1"])
def test_counter_counts_every_sample(settings: Settings, name: str) -> None:
    """The stock paho subscriber receives every sample sent."""
    trial = run_trial(settings, by_name(name), target=500.0, duration=3.0)
    assert trial.sent == 1500
    assert trial.final == trial.sent
    assert trial.exit_code == 0


def test_table_and_json_report_half_rate_and_1k_figures() -> None:
    """The trial at half the highest rate and the CPU at 1,000 msg/s reach the table and
    the JSON line (issue 4's targets are read off both)."""
    at_1k = Trial(1000.0, rate=1000.0, p50_ms=1.5, p99_ms=3.25, cpu_s_per_1k=0.336)
    best = Trial(32000.0, rate=31990.0, p50_ms=9.0, p99_ms=40.0, cpu_s_per_1k=0.021)
    half = Trial(16000.0, rate=15995.0, p50_ms=6.25, p99_ms=20.5, cpu_s_per_1k=0.031)
    at_100 = Trial(100.0, rate=100.0, cpu_s_per_1k=0.98)
    at_5k = Trial(5000.0, rate=4999.0, cpu_s_per_1k=0.0868)
    curve = {100: at_100, 1000: at_1k, 5000: at_5k}
    row = Row(
        "agent-int8-q0",
        trials=[at_100, at_1k, at_5k, best, half],
        best=best,
        at_1k=at_1k,
        at_half=half,
        curve=curve,
    )
    d = row.summary()
    assert (d["half_rate"], d["p50_half_ms"], d["p99_half_ms"]) == (15995, 6.25, 20.5)
    assert d["cpu_s_per_1k_at_1k"] == 0.336 and d["cpu_s_per_1k"] == 0.021
    assert d["cpu_s_per_1k_curve"] == {100: 0.98, 1000: 0.336, 5000: 0.0868}
    header, line = table([row]).splitlines()
    assert "p50/p99 ms @half" in header and "CPU s/1k @100/1k/5k" in header
    assert line.split()[:2] == ["agent-int8-q0", "31,990"]
    assert "6.25 / 20.50" in line and "0.980 / 0.336 / 0.087" in line


def test_thread_figures_are_per_thread_name_per_1000_samples() -> None:
    """thread_stats reads this process's threads; thread_delta scales the difference of two
    readings to 1,000 samples, busiest thread first."""
    now = thread_stats(os.getpid())
    assert now and all(cpu >= 0 and woke >= 0 for cpu, woke in now.values())
    before = {"worker": (1.0, 100), "reader": (0.5, 50)}
    after = {"worker": (1.5, 300), "reader": (2.5, 250), "new": (0.1, 2)}
    assert thread_delta(before, after, 2000) == {
        "reader": {"cpu_s_per_1k": 1.0, "wakeups_per_1k": 100.0},
        "worker": {"cpu_s_per_1k": 0.25, "wakeups_per_1k": 100.0},
        "new": {"cpu_s_per_1k": 0.05, "wakeups_per_1k": 1.0},
    }


def fake_step(capacity: float, generator: float, tried: list[float]):
    """A processor that keeps up to ``capacity`` msg/s behind a generator that tops out at
    ``generator`` msg/s (run_trial's verdicts, without processes)."""

    def step(target: float) -> Trial:
        tried.append(target)
        t = Trial(target, rate=min(target, generator))
        if t.rate < 0.95 * target:
            t.why.append(f"load generator reached only {t.rate:.0f}/s")
        if t.rate > capacity:
            t.why.append("not counted within 1.5 s")
        return t

    return step


@pytest.mark.parametrize(
    ("capacity", "generator", "best", "lower_bound"),
    [
        (40_000, 200_000, 40_000, False),  # the processor ends the ramp: bisected
        (200_000, 54_000, 56_000, True),  # the generator ends it (54,000 counts as 56,000
        # within RATE_SLACK): bisected all the same, a lower bound
        (50_000, 54_000, 48_000, False),  # both fall short above 48,000: the processor counts
    ],
)
def test_highest_rate_is_bisected_below_a_short_load_generator(
    capacity: float, generator: float, best: float, lower_bound: bool
) -> None:
    s = Settings(0, Path("."), {}, ramp=(2000.0, 256_000.0), bisect_steps=3)
    row, tried = Row("x"), []
    row.best = Trial(1000.0, rate=1000.0)
    highest(s, row, fake_step(capacity, generator, tried))
    assert row.best.target == best and row.lower_bound is lower_bound, tried


def test_steal_share_is_the_steal_field_over_all_cpu_time() -> None:
    before = [100, 0, 50, 800, 10, 0, 0, 40, 0, 0]  # user nice system idle iowait irq softirq steal
    after = [160, 0, 70, 1100, 10, 0, 0, 60, 5, 0]  # guest time (9th) is inside user already
    assert steal_share(before, after) == 5.0  # 20 of 400 ticks
    assert steal_share(before, before) == 0.0
    row = Row("x", trials=[Trial(1000.0, steal_pct=0.4), Trial(2000.0, steal_pct=7.5)])
    assert steal_range([row, Row("y")]) == "0.4-7.5 %"
    assert steal_range([Row("y")]) == "not measured"
