"""`edge-agent replay`: recorded CSV rows through the config's pipeline, episodes scored."""

from __future__ import annotations

import csv
import json

import numpy as np
import orjson
import pytest

from agent.cli import main

CONFIG = """
brokers: {local: {}}
pipelines:
  - name: pumps
    source: {broker: local, topics: ["plant/+/+/data"]}
    decoder: {type: json, device: "topic[2]", ts: time, seq: null, values: null,
              fields: [flow, pressure, temp]}
    window: {size: 16, hop: 4}
    calibration: {warmup: 600}
    handler: {type: baseline}
    sinks: [{type: stdout}]
"""
FAULT = (1500, 1700)  # rows of pump-b with a pressure fault


@pytest.fixture
def recording(tmp_path):
    """Two pumps, 2,000 rows each, semicolon-separated, ISO times; pump-b's pressure steps
    up inside FAULT (labelled 1)."""
    rng = np.random.default_rng(4)
    path = tmp_path / "line.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter=";")
        w.writerow(["when", "pump", "flow", "pressure", "temp", "anomaly"])
        for k in range(2000):
            stamp = np.datetime64("2026-01-05T00:00:00") + np.timedelta64(k, "s")
            for d in ("pump-a", "pump-b"):
                v = np.array([12.0, 3.0, 60.0]) + rng.normal(0, 0.1, 3)
                fault = d == "pump-b" and FAULT[0] <= k < FAULT[1]
                v[1] += 2.0 if fault else 0.0
                w.writerow([str(stamp), d, *v.round(4), int(fault)])
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(CONFIG)
    return cfg, path


def replay_args(cfg, path, *more):
    return ["replay", "-c", str(cfg), "--csv", str(path), "--device-column", "pump",
            "--time-column", "when", *more]  # fmt: skip


def test_replay_scores_episodes_against_labels(recording, tmp_path, capsys):
    cfg, path = recording
    events, scores = tmp_path / "events.jsonl", tmp_path / "scores.csv"
    args = replay_args(cfg, path, "--label-column", "anomaly", "--events", str(events))
    assert main([*args, "--scores", str(scores), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert (got["rows"], got["devices"], got["labelled"], got["detected"]) == (4000, 2, 1, 1)
    assert got["episodes"] == got["detected"] + got["false_episodes"]
    assert 0 <= got["delay_p50_s"] <= 10 and got["delay_p90_s"] >= got["delay_p50_s"]
    assert got["f1"] > 0.8 and got["mar_pct"] < 20 and got["far_pct"] < 5
    assert {"false_per_device_day"} <= got.keys()
    recorded = [orjson.loads(line) for line in events.read_text().splitlines()]
    fault = [e for e in recorded if e["device"] == "pump-b" and e["event"] == "opened"]
    start = np.datetime64("2026-01-05T00:00:00").astype("datetime64[s]").astype(int) + FAULT[0]
    (opened,) = [e for e in fault if start <= e["ts"] <= start + 200]
    assert opened["cause"][0]["channel"] == "pressure"
    rows = list(csv.DictReader(scores.open()))
    assert len(rows) == 4000 and set(rows[0]) >= {"device", "ts", "score", "anomalous", "open"}
    b = [r for r in rows if r["device"] == "pump-b"]
    assert b[FAULT[0] + 20]["open"] == "1" and b[FAULT[0] + 20]["label"] == "1"
    assert b[0]["score"] == ""  # inside the warm-up: no window scored yet


def test_replay_table_and_plot(recording, tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="--plot needs matplotlib: pip install '.[plot]'")
    cfg, path = recording
    png = tmp_path / "replay.png"
    assert main([*replay_args(cfg, path, "--label-column", "anomaly"), "--plot", str(png)]) == 0
    out = capsys.readouterr()
    assert "episodes" in out.out and "detected" in out.out and "replay [" in out.err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"plot written to {png}" in out.err


def test_replay_plot_without_matplotlib_fails_before_the_run(
    recording, tmp_path, capsys, monkeypatch
):
    import sys

    cfg, path = recording
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert main([*replay_args(cfg, path), "--plot", str(tmp_path / "replay.png")]) == 2
    err = capsys.readouterr().err
    assert "--plot needs matplotlib" in err and "replay [" not in err  # nothing replayed


def test_replay_names_a_missing_column_and_a_wrong_width(recording, tmp_path, capsys):
    cfg, path = recording
    assert main(replay_args(cfg, path, "--label-column", "fault")) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "'fault'" in err
    assert main([*replay_args(cfg, path), "--columns", "flow,pressure"]) == 2
    assert "2 value columns" in capsys.readouterr().err


def test_evaluate_skab_episode_figures(capsys):
    """SKAB through `evaluate skab`: point-wise F1 >= 0.78 at FAR <= 15 % (README), at most
    1.5 opened episodes per labelled anomaly, and a detection delay reported."""
    assert main(["evaluate", "skab", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["f1"] >= 0.78 and got["far_pct"] <= 15
    assert got["labelled"] == 34 and got["opened_per_labelled"] <= 1.5
    assert got["detected"] >= 25 and got["delay_p50_s"] is not None
