"""SKAB and AI4I metrics: golden values from the published Conv-AE predictions, and small cases."""

from __future__ import annotations

import numpy as np
import pytest

from agent.tools.training import datasets, metrics
from tests.support.skab_results import read_skab_predictions

SKAB = datasets.data_root() / "skab"


def test_pointwise_counts():
    """F1 = TP/(TP+(FP+FN)/2), FAR and MAR in percent, pooled over files."""
    true = [np.array([1, 1, 0, 0]), np.array([0, 1])]
    pred = [np.array([1, 0, 1, 0]), np.array([0, 1])]
    assert metrics.skab_pointwise(true, pred) == {"f1": 0.67, "far_pct": 33.33, "mar_pct": 33.33}


def test_changepoint_perfect_and_null():
    """A hit on the changepoint scores 100; no prediction scores 0; a late hit scores less."""
    ts = [np.arange(200)]
    cp = [np.zeros(200, np.int8)]
    cp[0][50] = 1
    late = np.zeros(200, np.int8)
    late[80] = 1
    assert metrics.skab_changepoint(ts, cp, cp)["cp_standard"] == 100.0
    assert metrics.skab_changepoint(ts, cp, [np.zeros(200, np.int8)])["cp_standard"] == 0.0
    assert 0 < metrics.skab_changepoint(ts, cp, [late])["cp_standard"] < 100


def test_changepoints_from_outliers():
    """|diff| with the first element equal to the first prediction."""
    got = metrics.changepoints_from_outliers(np.array([1, 1, 0, 0, 1]))
    assert got.tolist() == [1, 0, 1, 0, 1]


def test_average_precision_and_macro_f1():
    """Average precision matches the step-wise definition; macro F1 averages columns."""
    ap = metrics.average_precision(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.7, 0.1]))
    assert ap == pytest.approx((1.0 + 2 / 3) / 2)
    true = np.array([[1, 0], [0, 1], [0, 0]])
    pred = np.array([[1, 0], [0, 0], [0, 0]])
    assert metrics.macro_f1(true, pred) == pytest.approx(0.5)


def test_conv_ae_golden():
    """Re-scoring the published Conv-AE predictions reproduces the SKAB leaderboard row."""
    files = datasets.skab_files()
    preds = read_skab_predictions(SKAB / "results" / "predictions-Conv_AE.csv")
    w = datasets.SKAB_WARMUP
    got = metrics.skab_all(
        [f.ts[w:] for f in files],
        [f.anomaly[w:] for f in files],
        [f.changepoint[w:] for f in files],
        [preds[f.name] for f in files],
    )
    assert (got["f1"], got["far_pct"], got["mar_pct"]) == (0.78, 13.55, 28.02)
    assert (got["cp_standard"], got["cp_lowfp"], got["cp_lowfn"]) == (23.61, 21.54, 27.55)
    assert (got["missed_cps"], got["fps"]) == (82, 23)
