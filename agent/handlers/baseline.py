"""A model-free handler for sensors with no trained model yet: a per-device PCA baseline.

Fitted on each device's warm-up (the ``calibration:`` section): robust z-scores (median and
MAD per channel), then PCA keeping the components that explain ``variance`` of the warm-up.
A sample's statistic is ``T2 / T2_ref + Q / Q_ref`` (Hotelling's T-squared in the kept
components, the squared residual Q outside them, each divided by its warm-up mean), and a
window's score is the mean over its samples, so a normal window scores about 2. Any number
of channels; numpy only. Unlike model handlers it holds per-device parameters, indexed by
the pipeline's device slots and refitted when a slot is reused.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from agent.config import ComponentConfig


class BaselineConfig(ComponentConfig):
    needs_calibration: ClassVar[bool] = True
    type: Literal["baseline"]
    variance: float = Field(0.9, gt=0, lt=1, description="warm-up variance the PCA keeps")
    threshold: float | Literal["auto"] = Field(
        "auto", description="window score above this is an anomaly; auto: from the warm-up"
    )

    def learns_threshold(self) -> bool:
        return self.threshold == "auto"


class BaselineHandler:
    """Per-device robust-z PCA (T-squared + Q); needs a pipeline ``calibration:`` section."""

    config_model = BaselineConfig
    output = "score"

    def __init__(self, config: BaselineConfig) -> None:
        self.config = config
        self.threshold = float("nan") if config.threshold == "auto" else config.threshold
        self.channels = 0
        self.attributes = True

    def load(self, window_size: int, channels: int) -> None:
        self.channels = channels
        self._alloc(0)

    def _alloc(self, cap: int) -> None:
        c = self.channels
        self.median = np.zeros((cap, c))
        self.mad = np.ones((cap, c))
        self.basis = np.tile(np.eye(c), (cap, 1, 1))
        self.inv_eig = np.zeros((cap, c))  # 1/eigenvalue for kept components, else 0
        self.kept = np.zeros((cap, c), bool)
        self.ref = np.ones((cap, 2))  # warm-up means of T2 and Q

    def _ensure(self, top: int) -> None:
        cap = len(self.median)
        if top < cap:
            return
        old = (self.median, self.mad, self.basis, self.inv_eig, self.kept, self.ref)
        self._alloc(max(top + 1, 2 * cap, 16))
        for new, prev in zip(
            (self.median, self.mad, self.basis, self.inv_eig, self.kept, self.ref), old
        ):
            new[:cap] = prev

    def fit_devices(self, slots: np.ndarray, warmup: np.ndarray) -> None:
        """Fit each device's baseline on its warm-up samples ``[k, n, channels]``."""
        self._ensure(int(slots.max()))
        for s, x in zip(slots.tolist(), np.asarray(warmup, np.float64)):
            med = np.median(x, axis=0)
            mad = np.maximum(1.4826 * np.median(np.abs(x - med), axis=0), 1e-6)
            z = (x - med) / mad
            eig, vec = np.linalg.eigh(np.cov(z, rowvar=False).reshape(self.channels, -1))
            order = np.argsort(eig)[::-1]
            eig, vec = np.maximum(eig[order], 1e-9), vec[:, order]
            share = np.cumsum(eig) / eig.sum()
            k = int(np.searchsorted(share, self.config.variance) + 1)
            k = min(k, max(self.channels - 1, 1))
            self.median[s], self.mad[s], self.basis[s] = med, mad, vec
            self.kept[s] = np.arange(self.channels) < k
            self.inv_eig[s] = np.where(self.kept[s], 1 / eig, 0)
            t2, q = self._stats(np.array([s]), z[None])
            self.ref[s] = np.maximum([t2.mean(), q.mean()], 1e-9)

    def _stats(self, slots: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """T2 and Q per sample of robust-z windows ``z[k, w, c]``."""
        proj = np.einsum("kwc,kcr->kwr", z, self.basis[slots])
        sq = proj * proj
        t2 = np.einsum("kwr,kr->kw", sq, self.inv_eig[slots])
        q = np.einsum("kwr,kr->kw", sq, (~self.kept[slots]).astype(np.float64))
        return t2, q

    def infer_devices(self, slots: np.ndarray, windows: np.ndarray) -> np.ndarray:
        """Window scores with each window's device baseline."""
        z = (windows - self.median[slots, None, :]) / self.mad[slots, None, :]
        t2, q = self._stats(slots, z)
        ref = self.ref[slots]
        return (t2 / ref[:, :1] + q / ref[:, 1:]).mean(axis=1).astype(np.float32)

    def attribute(self, slots: np.ndarray, windows: np.ndarray) -> np.ndarray:
        """Each channel's share of the window score: its part of T2 (``z_c`` times the
        whitened projection mapped back to channel ``c``) plus its squared residual (Q),
        each over its warm-up reference, averaged over the window; negatives clipped."""
        z = (windows - self.median[slots, None, :]) / self.mad[slots, None, :]
        basis = self.basis[slots]
        proj = np.einsum("kwc,kcr->kwr", z, basis)
        kept = self.kept[slots].astype(np.float64)
        back = np.einsum("kwr,kcr->kwc", proj * self.inv_eig[slots][:, None, :], basis)
        residual = z - np.einsum("kwr,kcr->kwc", proj * kept[:, None, :], basis)
        ref = self.ref[slots]
        part = z * back / ref[:, None, :1] + residual**2 / ref[:, None, 1:]
        return np.maximum(part.mean(axis=1), 0)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        raise TypeError("the baseline handler scores per device: use infer_devices")
