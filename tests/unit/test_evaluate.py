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


def test_ai4i_reports_per_mode_precision_and_recall(capsys):
    """The classifier kind's most likely class, scored per failure mode."""
    got = run_json(capsys, "ai4i")
    assert got["per_mode"] == manifest()["ai4i_pdm"]["metrics"]["per_mode"]
    assert set(got["per_mode"]) == {"TWF", "HDF", "PWF", "OSF", "RNF"}
    assert got["per_mode"]["PWF"]["recall"] >= 0.9


def test_cmapss_validation_through_the_pipeline_matches_the_manifest(capsys):
    """evaluate cmapss replays the held-out engines through the turbofan pipeline and gets
    the figures the training script recorded; every engine run to failure is warned."""
    got = run_json(capsys, "cmapss")
    entry = manifest()["cmapss_rul"]
    assert got["split"] == "validation" and got["sha256"] == entry["sha256"]
    assert got["engines"] == entry["metrics"]["cuts"] and got["unscored"] == []
    assert got["rmse"] == entry["metrics"]["rmse"]
    assert got["phm_score"] == entry["metrics"]["phm_score"]
    assert got["held_out_engines"] == entry["training"]["held_out_engines"]
    assert got["warned"] == 1.0 and got["lead_min"] >= 10


def _nasa_test_folder(folder):
    """NASA's test layout from held-out training engines cut at known points."""
    from agent.training import cmapss, datasets

    data = datasets.cmapss_train()
    held = cmapss.split(data.engines())["held_out"][:6]
    rows, ruls = [], []
    for k, unit in enumerate(held):
        part = data.engine(unit)
        keep = len(part) - (10 + 25 * k)  # true RUL 10, 35, 60, ...
        for c, r in enumerate(part[:keep]):
            rows.append(" ".join([str(k + 1), str(c + 1), *(f"{v:.4f}" for v in r)]))
        ruls.append(str(len(part) - keep))
    (folder / "test_FD001.txt").write_text("\n".join(rows) + "\n")
    (folder / "RUL_FD001.txt").write_text("\n".join(ruls) + "\n")


def test_cmapss_with_data_uses_the_test_protocol(capsys, tmp_path):
    _nasa_test_folder(tmp_path)
    got = run_json(capsys, "cmapss", "--data", str(tmp_path))
    assert got["split"] == "test" and got["engines"] == 6
    assert {"rmse", "phm_score", "model", "sha256"} <= set(got)
    assert got["rmse"] < 25 and got["due_flagged"] == 1.0 and got["not_due_flagged"] == 0.0


def test_cmapss_with_a_wrong_folder_is_a_clear_error(capsys, tmp_path):
    assert main(["evaluate", "cmapss", "--data", str(tmp_path)]) == 2
    assert "test_FD001.txt and RUL_FD001.txt" in capsys.readouterr().err
    (tmp_path / "test_FD001.txt").write_text("1 1 0 0 100\n")
    (tmp_path / "RUL_FD001.txt").write_text("10\n")
    assert main(["evaluate", "cmapss", "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "test_FD001.txt: 5 columns, expected 26" in err
