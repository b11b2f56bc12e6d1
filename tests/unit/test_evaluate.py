"""`edge-agent evaluate`: the figures it prints are the ones the README claims, within the
rounding the README prints them with, and they are what the dataset's own metric definitions
give when recomputed here with plain numpy from the labels in the CSV files and the per-row
flags the replay produced (not from the manifest or the code's metric functions)."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from agent.cli import main
from agent.models import manifest
from agent.tools import evaluate
from tests.support.readme import table_result

DATASETS = Path(__file__).resolve().parents[2] / "datasets"
SKAB_TRAIN_ROWS = 400  # BASELINES.json "protocol": the first 400 rows of each file are train
SKAB_TARGET_FAR = 15.0  # README: F1 >= the published Conv-AE's at FAR <= 15 %


@pytest.fixture
def spy(monkeypatch):
    """What ``evaluate_skab``/``evaluate_ai4i`` returned to the CLI (called through)."""
    seen: dict = {}
    for name in ("evaluate_skab", "evaluate_ai4i"):
        real = getattr(evaluate, name)

        def keep(*args, _real=real, **kwargs):
            seen["out"] = _real(*args, **kwargs)
            return seen["out"]

        monkeypatch.setattr(evaluate, name, keep)
    return seen


def run_json(capsys, *args: str) -> dict:
    assert main(["evaluate", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def skab_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(values[n, 8], anomaly[n]) of one SKAB file, read with the csv module."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter=";"))
    names = [k for k in rows[0] if k not in ("datetime", "anomaly", "changepoint")]
    values = np.array([[float(r[k]) for k in names] for r in rows])
    return values, np.array([float(r["anomaly"]) == 1 for r in rows])


def pointwise(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """BASELINES.json metric_defs: F1 = TP/(TP+(FP+FN)/2), FAR = 100 FP/(FP+TN),
    MAR = 100 FN/(FN+TP), counts pooled over all files."""
    tp, fp = np.sum(true & pred), np.sum(~true & pred)
    fn, tn = np.sum(true & ~pred), np.sum(~true & ~pred)
    return {
        "F1": tp / (tp + (fp + fn) / 2),
        "FAR": 100 * fp / (fp + tn),
        "MAR": 100 * fn / (fn + tp),
    }


SKAB_RUNS = {
    "int8": (["skab"], "edge-agent evaluate skab --json"),
    "fp32": (
        ["skab", "--model", "builtin:skab_pump_ae_fp32"],
        "edge-agent evaluate skab --model builtin:skab_pump_ae_fp32 --json",
    ),
    "baseline": (
        ["skab", "--handler", "baseline"],
        "edge-agent evaluate skab --handler baseline --json",
    ),
}


@pytest.mark.parametrize("run", SKAB_RUNS)
def test_skab_figures_are_the_readmes_and_recount_from_the_flags(capsys, spy, run):
    """The 34 labelled files (valve1, valve2, other, by number) replayed as devices f0..f33:
    each replayed device is its CSV file, every row after the 400 train rows carries a flag,
    and pooling those flags against the CSV labels gives the README's F1/FAR/MAR."""
    args, command = SKAB_RUNS[run]
    claims = table_result("Models", command)
    got = run_json(capsys, *args)
    result = spy["out"]["result"]
    paths = [
        p
        for folder in ("valve1", "valve2", "other")
        for p in sorted(
            (DATASETS / "skab" / "data" / folder).glob("*.csv"), key=lambda p: int(p.stem)
        )
    ]
    assert len(paths) == len(result.recordings) == 34
    labels, flags = [], []
    for path, rec in zip(paths, result.recordings):
        values, anomaly = skab_csv(path)
        np.testing.assert_array_equal(rec.values, values, err_msg=str(path))
        trace = result.traces[rec.device]
        assert trace.scored[SKAB_TRAIN_ROWS:].all(), path
        labels.append(anomaly[SKAB_TRAIN_ROWS:])
        flags.append(trace.anomalous[SKAB_TRAIN_ROWS:])
    measured = pointwise(np.concatenate(labels), np.concatenate(flags))
    for name, value in measured.items():
        assert claims[name].holds(value), (name, value, claims[name])
    printed = {"F1": got["f1"], "FAR": got["far_pct"], "MAR": got["mar_pct"]}
    assert printed == {k: round(float(v), 2) for k, v in measured.items()}
    if "changepoint" in claims:  # NAB scoring: checked on published predictions (test_metrics)
        cps = [got["cp_standard"], got["cp_lowfp"], got["cp_lowfn"]]
        assert all(c.holds(v) for c, v in zip(claims["changepoint"], cps)), cps


def test_skab_int8_meets_the_published_conv_ae():
    """README: the shipped model reaches the published Conv-AE's F1 at a FAR of at most 15 %
    (the leaderboard row of datasets/skab/BASELINES.json, rounded to 2 places as published)."""
    board = json.loads((DATASETS / "skab" / "BASELINES.json").read_text())["outlier_detection"]
    conv_f1, conv_far, _ = board["leaderboard"]["Conv-AE"]
    got = evaluate.evaluate_skab("builtin:skab_pump_ae_int8", None)["metrics"]
    assert got["f1"] >= conv_f1 and got["far_pct"] <= SKAB_TARGET_FAR
    assert conv_far <= SKAB_TARGET_FAR


def ai4i_csv() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(numeric features[n, 5], failure[n], modes[n, 5]) read with the csv module."""
    with open(DATASETS / "ai4i2020" / "ai4i2020.csv", newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    numeric = ["Air temperature [K]", "Process temperature [K]", "Rotational speed [rpm]"]
    numeric += ["Torque [Nm]", "Tool wear [min]"]
    x = np.array([[float(r[c]) for c in numeric] for r in rows], np.float32)
    failure = np.array([r["Machine failure"] == "1" for r in rows])
    modes = np.array([[r[m] == "1" for m in ("TWF", "HDF", "PWF", "OSF", "RNF")] for r in rows])
    return x, failure, modes


def f1(true: np.ndarray, pred: np.ndarray) -> float:
    tp, fp, fn = np.sum(true & pred), np.sum(~true & pred), np.sum(true & ~pred)
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def test_ai4i_figures_are_the_readmes_and_recount_from_the_flags(capsys, spy):
    """The held-out 20 % (stratified: 68 of the 339 failures BASELINES.json counts) replayed
    in order; the pipeline's per-row decisions and failure modes against the CSV's labels give
    the README's F1, precision, recall and macro-F1 of the five modes."""
    claims = table_result("Models", "edge-agent evaluate ai4i --json")
    facts = json.loads((DATASETS / "ai4i2020" / "BASELINES.json").read_text())["label_facts"]
    got = run_json(capsys, "ai4i")
    result = spy["out"]["result"]
    x, failure, modes = ai4i_csv()
    assert failure.sum() == facts["Machine failure"] and len(failure) == facts["rows"]
    (rec,) = result.recordings
    # Which rows were held out: each replayed row is a CSV row, none twice, 20 % of each class.
    rows = {tuple(v): i for i, v in enumerate(x.tolist())}
    held = np.array([rows[tuple(v)] for v in rec.values[:, 1:].astype(np.float32).tolist()])
    assert len(set(held)) == len(held) == round(0.2 * len(x))
    assert failure[held].sum() == round(0.2 * facts["Machine failure"])
    trace = result.traces[rec.device]
    pred = trace.anomalous.astype(bool)
    tp = np.sum(failure[held] & pred)
    measured = {
        "F1": f1(failure[held], pred),
        "precision": tp / pred.sum(),
        "recall": tp / failure[held].sum(),
        "macro-F1": np.mean(
            [f1(modes[held, k], trace.details["class"] == k + 1) for k in range(5)]
        ),
    }
    for name, value in measured.items():
        assert claims[name].holds(value), (name, value, claims[name])
    assert got["f1"] == round(measured["F1"], 4) and got["macro_f1"] == round(
        measured["macro-F1"], 4
    )
    assert claims["PR-AUC"].holds(got["pr_auc"])


def test_shipped_models_are_the_manifests_files(capsys):
    """The sha256 evaluate prints is the manifest's (the README figures are for those files)."""
    for name in ("skab_pump_ae_int8", "ai4i_pdm"):
        dataset = "skab" if name.startswith("skab") else "ai4i"
        got = run_json(capsys, dataset, "--model", f"builtin:{name}")
        assert got["sha256"] == manifest()[name]["sha256"]


def test_baseline_handler_plots(capsys, tmp_path):
    pytest.importorskip("matplotlib", reason="--plot needs matplotlib: pip install '.[plot]'")
    png = tmp_path / "skab.png"
    assert main(["evaluate", "skab", "--handler", "baseline", "--plot", str(png), "--json"]) == 0
    out = capsys.readouterr()
    got = json.loads(out.out)  # stdout stays one JSON object
    assert got["model"] == "baseline"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"plot written to {png}" in out.err


def test_plot_shows_errors_metrics_and_file_boundaries():
    """Detections as hits, false alarms and misses; boundaries between files; the legend
    beside the axes and headroom over the highest peak; the metrics in the title."""
    pytest.importorskip("matplotlib")
    from agent.tools.evaluate import figure

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
    from agent.tools.training import cmapss, datasets

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
