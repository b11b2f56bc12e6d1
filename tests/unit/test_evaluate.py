"""`edge-agent evaluate`: the datasets replayed through the pipeline give the manifest's
numbers (so the runtime scores the way the models were measured)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from agent.cli import main
from agent.models import manifest

SKAB_KEYS = ("f1", "far_pct", "mar_pct", "cp_standard", "cp_lowfp", "cp_lowfn")


def run_json(capsys, *args: str) -> dict:
    assert main(["evaluate", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("name", ["skab_pump_ae_int8", "skab_pump_ae_fp32"])
def test_skab_through_the_pipeline_matches_the_manifest(capsys, name):
    got = run_json(capsys, "skab", "--model", f"builtin:{name}")
    entry = manifest()[name]
    assert got["sha256"] == entry["sha256"]
    assert {k: got[k] for k in SKAB_KEYS} == {k: entry["metrics"][k] for k in SKAB_KEYS}


def test_ai4i_meets_its_target(capsys):
    got = run_json(capsys, "ai4i")
    entry = manifest()["ai4i_pdm"]["metrics"]
    assert got["f1"] == entry["f1"] and got["f1"] >= 0.90
    assert got["macro_f1"] == entry["macro_f1"]


def test_baseline_handler_evaluates_without_a_model(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "skab.png"
    assert main(["evaluate", "skab", "--handler", "baseline", "--plot", str(png), "--json"]) == 0
    out = capsys.readouterr()
    got = json.loads(out.out)  # stdout stays one JSON object
    assert got["model"] == "baseline" and 0 < got["f1"] <= 1
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"plot written to {png}" in out.err


def test_plot_shows_errors_metrics_and_file_boundaries():
    """Detections as hits, false alarms and misses; boundaries between files; the legend
    beside the axes and headroom over the highest peak; the metrics in the title."""
    pytest.importorskip("matplotlib")
    from agent.evaluate import figure

    labels = [np.r_[np.zeros(50), np.ones(50)], np.r_[np.ones(30), np.zeros(70)]]
    scores = [np.r_[np.ones(50), np.full(50, 900.0)], np.r_[np.full(30, 0.5), np.ones(70) * 2]]
    flagged = [s > 1.5 for s in scores]  # file 2: 30 missed rows, 70 false alarms
    plot = {"scores": scores, "thresholds": [1.5, 1.5], "labels": labels, "detections": flagged}
    fig = figure(plot, "skab: test", {"f1": 0.5, "far_pct": 12.0, "rows": 200})
    (ax,) = fig.axes
    assert ax.get_ylabel() == "score / threshold (log)"
    assert ax.get_ylim()[1] > 900 / 1.5
    assert ax.get_title(loc="left") == "skab: test\nf1 0.5, far_pct 12.0"
    legend = ax.get_legend()
    fig.canvas.draw()
    assert legend.get_window_extent().x0 >= ax.get_window_extent().x1  # beside, not over
    ticks = {t.get_text(): t for t in legend.get_texts()}
    assert {"detected (labelled)", "false alarm", "missed (labelled, not flagged)"} <= set(ticks)
    lines = {c.get_label(): c for c in ax.collections}
    assert len(lines["detected (labelled)"].get_segments()) == 50
    assert len(lines["false alarm"].get_segments()) == 70
    assert len(lines["missed (labelled, not flagged)"].get_segments()) == 30
    assert [seg[0][0] for seg in lines["file boundary"].get_segments()] == [100]


def test_plot_without_matplotlib_fails_before_the_run(capsys, tmp_path, monkeypatch):
    """No evaluation (here: not even finding the data) before saying matplotlib is missing."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    args = ["skab", "--data", str(tmp_path / "nowhere"), "--plot", str(tmp_path / "p.png")]
    assert main(["evaluate", *args]) == 2
    err = capsys.readouterr().err
    assert "--plot needs matplotlib" in err and "nowhere" not in err


def test_missing_dataset_is_a_clear_error(capsys, tmp_path):
    assert main(["evaluate", "skab", "--data", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "nowhere") in err


def test_missing_model_is_a_clear_error(capsys, tmp_path):
    assert main(["evaluate", "ai4i", "--model", str(tmp_path / "m.onnx")]) == 2
    assert "model file not found" in capsys.readouterr().err
