"""Bearing condition handler: spectral features of each window -> ONNX classifier."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from agent.config import ComponentConfig
from agent.errors import ModelError

from . import MODEL
from .features import feature_count, features


class BearingConfig(ComponentConfig):
    type: Literal["bearing_condition"]
    model: Path = Field(MODEL, description="ONNX classifier: input [N, features] float32")
    sha256: str | None = Field(
        None, pattern=r"^[0-9a-fA-F]{64}$", description="pin the model file's sha256"
    )
    threshold: float = Field(
        0.5, gt=0, lt=1, description="score (1 - P(normal)) above which a window is an event"
    )
    threads: int = Field(1, ge=1, le=64, description="onnxruntime intra-op threads")


class BearingHandler:
    """Scores ``[n, size, channels]`` vibration windows: ``1 - P(normal)``.

    The model's metadata names its classes, window size, channels and bands; ``load``
    refuses a window it was not built for. Keeps no per-device state.
    """

    config_model = BearingConfig

    def __init__(self, config: BearingConfig) -> None:
        self.config = config
        self.threshold = config.threshold
        self.path = Path(config.model)
        self.sha256 = ""
        self._last: np.ndarray | None = None

    def load(self, window_size: int, channels: int) -> None:
        import onnxruntime as ort

        if not self.path.is_file():
            raise ModelError(f"{self.path}: model file not found")
        data = self.path.read_bytes()
        self.sha256 = hashlib.sha256(data).hexdigest()
        if self.config.sha256 and self.sha256 != self.config.sha256.lower():
            raise ModelError(f"{self.path}: sha256 {self.sha256} is not the pinned one")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.config.threads
        try:
            session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ModelError(f"{self.path}: not a loadable ONNX model ({e})") from e
        meta = {k: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}
        try:
            self.classes: list[str] = meta["classes"]
            self._normal = self.classes.index(meta.get("normal_class", "normal"))
            size, want_ch, self.bands = meta["window_size"], meta["channels"], meta["bands"]
        except (KeyError, ValueError) as e:
            raise ModelError(f"{self.path}: metadata lacks {e} (see build_model.py)") from e
        if (window_size, channels) != (size, want_ch):
            raise ModelError(
                f"{self.path}: built for windows of {size} samples x {want_ch} channels, but "
                f"the pipeline gives {window_size} x {channels}: set window.size: {size} and "
                f"a decoder with {want_ch} channel(s)"
            )
        (inp,) = session.get_inputs()
        n_feat = feature_count(channels, self.bands)
        if inp.shape[-1] != n_feat:
            raise ModelError(f"{self.path}: input {inp.shape} but features are [N, {n_feat}]")
        self._session, self._input = session, inp.name
        warm = self.infer(np.zeros((2, window_size, channels), np.float32))
        if warm.shape != (2,):
            raise ModelError(f"{self.path}: gave {warm.shape} scores for 2 windows")

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """``1 - P(normal)`` per window: features for the batch, then one ONNX call."""
        (probs,) = self._session.run(None, {self._input: features(batch, self.bands)})
        self._last = probs
        return 1.0 - probs[:, self._normal].astype(np.float64)

    def describe(self, hits: np.ndarray) -> list[dict]:
        """The most likely condition and its probability for windows of the last call."""
        assert self._last is not None
        p = self._last[hits]
        best = p.argmax(axis=1)
        return [
            {"condition": self.classes[int(k)], "probability": round(float(p[i, k]), 4)}
            for i, k in enumerate(best)
        ]
