"""Benchmark metrics: SKAB (pointwise and NAB changepoint) and AI4I (binary and failure modes).

SKAB definitions follow ``skab/BASELINES.json`` (and waico/tsad ``chp_score``): counts are pooled
over all files before the ratios are taken; results are rounded to 2 decimals as published.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

NAB_PROFILES = {
    "standard": (1.0, -0.11, -1.0),
    "lowfp": (1.0, -0.22, -1.0),
    "lowfn": (1.0, -0.11, -2.0),
}
NAB_WINDOW_S = 60
_DETAIL = 1000


def skab_pointwise(true: Sequence[np.ndarray], pred: Sequence[np.ndarray]) -> dict[str, float]:
    """Pooled pointwise ``f1`` = TP/(TP+(FP+FN)/2), ``far_pct`` and ``mar_pct``, rounded."""
    t = np.concatenate([np.asarray(a) == 1 for a in true])
    p = np.concatenate([np.asarray(a) == 1 for a in pred])
    tp, fp = int(np.sum(t & p)), int(np.sum(~t & p))
    fn, tn = int(np.sum(t & ~p)), int(np.sum(~t & ~p))
    return {
        "f1": round(tp / (tp + (fn + fp) / 2), 2) if tp + fn + fp else 1.0,
        "far_pct": round(100 * fp / (fp + tn), 2) if fp + tn else 0.0,
        "mar_pct": round(100 * fn / (fn + tp), 2) if fn + tp else 0.0,
    }


def changepoints_from_outliers(pred: np.ndarray) -> np.ndarray:
    """Predicted changepoints ``|diff(pred)|``, the first element being the first prediction."""
    p = np.asarray(pred).astype(np.int64)
    return np.abs(np.diff(p, prepend=0)).astype(np.int8)


@dataclass
class _NabCounts:
    tp_delays: list[float]
    fps: int
    fns: int
    windows: int


def _nab_counts(ts: np.ndarray, true_cp: np.ndarray, pred_cp: np.ndarray) -> _NabCounts:
    """Right-sided windows [cp, cp+60 s] (overlaps cut from the right window), first hit only."""
    bounds = [[float(c), float(c) + NAB_WINDOW_S] for c in ts[np.asarray(true_cp) == 1]]
    for a, b in pairwise(bounds):
        if a[1] >= b[0]:
            b[0] = a[1]
    hits = np.sort(ts[np.asarray(pred_cp) == 1]).astype(float)
    if not bounds:
        return _NabCounts([], len(hits), 0, 0)
    fps = int(np.sum(hits < bounds[0][0])) + int(np.sum(hits > bounds[-1][1]))
    fps += sum(int(np.sum((hits > a[1]) & (hits < b[0]))) for a, b in pairwise(bounds))
    delays, fns = [], 0
    for lo, hi in bounds:
        inside = hits[(hits >= lo) & (hits <= hi)]
        if len(inside):
            delays.append((inside[0] - lo) / (hi - lo) if hi > lo else 0.0)
        else:
            fns += 1
    return _NabCounts(delays, fps, fns, len(bounds))


def _tanh_score(rel: float, a_tp: float, a_fp: float) -> float:
    """The 'improved' NAB scale: A_tp at the window start falling to A_fp at its end."""
    x = np.linspace(-np.pi / 2, np.pi / 2, _DETAIL)
    y = (a_tp - a_fp) / 2 * -np.tanh(x) / np.tanh(np.pi / 2) + (a_tp - a_fp) / 2 + a_fp
    return float(y[min(int(rel * _DETAIL), _DETAIL - 1)])


def skab_changepoint(
    ts: Sequence[np.ndarray], true_cp: Sequence[np.ndarray], pred_cp: Sequence[np.ndarray]
) -> dict[str, float]:
    """Pooled NAB scores ``cp_standard``, ``cp_lowfp``, ``cp_lowfn`` plus missed CPs and FPs."""
    counts = [_nab_counts(*args) for args in zip(ts, true_cp, pred_cp)]
    windows = sum(c.windows for c in counts)
    out: dict[str, float] = {}
    for name, (a_tp, a_fp, a_fn) in NAB_PROFILES.items():
        s = sum(
            a_fp * c.fps + a_fn * c.fns + sum(_tanh_score(d, a_tp, a_fp) for d in c.tp_delays)
            for c in counts
        )
        null, perfect = windows * a_fn, windows * a_tp
        out[f"cp_{name}"] = round(100 * (s - null) / (perfect - null), 2)
    out["missed_cps"] = sum(c.fns for c in counts)
    out["fps"] = sum(c.fps for c in counts)
    return out


def skab_all(
    ts: Sequence[np.ndarray],
    anomaly: Sequence[np.ndarray],
    changepoint: Sequence[np.ndarray],
    pred: Sequence[np.ndarray],
) -> dict[str, float]:
    """Pointwise and changepoint metrics for per-file binary outlier predictions."""
    cps = [changepoints_from_outliers(p) for p in pred]
    return {**skab_pointwise(anomaly, pred), **skab_changepoint(ts, changepoint, cps)}


def binary_f1(true: np.ndarray, pred: np.ndarray) -> tuple[float, float, float]:
    """(f1, precision, recall) of binary labels; 0 where undefined."""
    t, p = np.asarray(true) == 1, np.asarray(pred) == 1
    tp = float(np.sum(t & p))
    precision = tp / p.sum() if p.sum() else 0.0
    recall = tp / t.sum() if t.sum() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return f1, precision, recall


def average_precision(true: np.ndarray, score: np.ndarray) -> float:
    """Area under the precision-recall curve as average precision (step-wise, ties grouped)."""
    order = np.argsort(-np.asarray(score), kind="stable")
    s, t = np.asarray(score)[order], (np.asarray(true)[order] == 1)
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(t)[last]
    precision = tps / (last + 1)
    recall = tps / max(int(t.sum()), 1)
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def macro_f1(true: np.ndarray, pred: np.ndarray) -> float:
    """Mean over columns of the binary F1 of ``true[n, K]`` vs ``pred[n, K]`` (0/1)."""
    return float(np.mean([binary_f1(true[:, k], pred[:, k])[0] for k in range(true.shape[1])]))


def ai4i_metrics(
    failure: np.ndarray,
    score: np.ndarray,
    modes: np.ndarray,
    mode_pred: np.ndarray,
    threshold: float = 0.5,
) -> dict[str, float]:
    """``f1``, ``precision``, ``recall``, ``pr_auc`` of failure and ``macro_f1`` over modes."""
    f1, precision, recall = binary_f1(failure, np.asarray(score) > threshold)  # as the runtime
    return {
        "f1": round(float(f1), 4),
        "precision": round(float(precision), 4),
        "recall": round(float(recall), 4),
        "pr_auc": round(average_precision(failure, score), 4),
        "macro_f1": round(macro_f1(modes, mode_pred), 4),
    }


def rul_scores(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """``rmse`` and the PHM08 score ``phm_score`` (sum over engines of ``exp(-d/13) - 1`` for
    early, ``exp(d/10) - 1`` for late estimates, ``d = pred - true``: late costs more)."""
    d = np.asarray(pred, np.float64) - np.asarray(true, np.float64)
    phm = np.where(d < 0, np.exp(-d / 13) - 1, np.exp(d / 10) - 1)
    return {
        "rmse": round(float(np.sqrt(np.mean(d**2))), 3) if len(d) else float("nan"),
        "phm_score": round(float(phm.sum()), 2),
        "mean_error": round(float(d.mean()), 3) if len(d) else float("nan"),
    }


def per_class(true: np.ndarray, pred: np.ndarray, names: Sequence[str]) -> dict[str, dict]:
    """``per_mode``: precision, recall and support of each column of ``true``/``pred`` [n, K]."""
    out = {}
    for k, name in enumerate(names):
        _, precision, recall = binary_f1(true[:, k], pred[:, k])
        out[name] = {
            "precision": round(float(precision), 4),
            "recall": round(float(recall), 4),
            "support": int(np.sum(true[:, k] == 1)),
        }
    return {"per_mode": out}
