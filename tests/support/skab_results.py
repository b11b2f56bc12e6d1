"""The published SKAB leaderboard's per-file predictions, read for scoring them ourselves."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


def read_skab_predictions(path: Path) -> dict[str, np.ndarray]:
    """Per-file binary predictions from a ``file,datetime,predicted_anomaly`` CSV."""
    preds: dict[str, list[int]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            preds.setdefault(row["file"], []).append(int(row["predicted_anomaly"]))
    return {k: np.array(v, np.int8) for k, v in preds.items()}
