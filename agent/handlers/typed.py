"""ONNX handlers of the typed output kinds: class probabilities and a regression estimate.

A model describes itself in its ONNX metadata (JSON values, written by the training
scripts): ``classes`` and ``healthy`` for a classifier; ``quantity``, ``units``, ``worse``,
``limit`` and an ``interval`` for a regressor. The config may override each of them, and
must give what a model's metadata lacks.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import numpy as np
from pydantic import Field

from agent.config import ComponentConfig
from agent.errors import ModelError
from agent.handlers.onnx_model import OnnxHandler, _dims, resolve_model


class _OnnxFileConfig(ComponentConfig):
    model: str = Field(description="path to an .onnx file, or builtin:NAME")
    sha256: str | None = Field(
        None, pattern=r"^[0-9a-fA-F]{64}$", description="pin the model file's sha256"
    )
    input: str | None = Field(None, description="input name; default: the model's only input")
    threads: int = Field(1, ge=1, le=64, description="onnxruntime intra-op threads")


class OnnxClassifierConfig(_OnnxFileConfig):
    type: Literal["onnx_classifier"]
    output: str = Field("probabilities", description="output of class probabilities [N, K]")
    classes: list[str] | None = Field(
        None, min_length=2, description="class labels in output order; default: the model's"
    )
    healthy: str | None = Field(
        None, description="the class that counts as healthy; default: the model's"
    )
    threshold: float = Field(
        0.5, gt=0, lt=1, description="a window is over when 1 - P(healthy) exceeds this"
    )


class OnnxRegressionConfig(_OnnxFileConfig):
    type: Literal["onnx_regression"]
    output: str | None = Field(None, description="output of one value per window; default: first")
    limit: float | None = Field(
        None, description="due limit: over when the value is past it; default: the model's"
    )
    quantity: str | None = Field(None, description="what the value is (e.g. rul)")
    units: str | None = Field(None, description="its units (e.g. cycles)")
    worse: Literal["lower", "higher"] | None = Field(
        None, description="which direction is bad; default: the model's"
    )


def metadata(session: Any) -> dict[str, Any]:
    """The model's JSON metadata values (plain-string entries other tools add are skipped)."""
    out = {}
    for k, v in session.get_modelmeta().custom_metadata_map.items():
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            continue
    return out


def _setting(config: Any, meta: dict, key: str, path: Any) -> Any:
    value = getattr(config, key)
    if value is None:
        value = meta.get(key)
    if value is None:
        raise ModelError(f"{path}: the model declares no {key!r}: set handler.{key}")
    return value


class OnnxClassifier(OnnxHandler):
    """Kind ``classes``: a model whose output is ``[N, K]`` class probabilities."""

    config_model = OnnxClassifierConfig
    output = "classes"

    def __init__(self, config: OnnxClassifierConfig) -> None:
        self.config = config  # type: ignore[assignment]
        self.threshold = config.threshold
        self.path = resolve_model(config.model)
        self.sha256 = ""
        self.last_details: dict[str, np.ndarray] = {}
        self.attributes = False
        self.classes: list[str] = []
        self.healthy = ""

    def load(self, window_size: int, channels: int) -> None:
        session, outputs = self.open_session(window_size, channels)
        path, meta = self.path, metadata(session)
        out = outputs.get(self.config.output)
        if out is None:
            raise ModelError(f"{path}: no output {self.config.output!r}; it has {sorted(outputs)}")
        self.classes = list(_setting(self.config, meta, "classes", path))
        self.healthy = str(_setting(self.config, meta, "healthy", path))
        if self.healthy not in self.classes:
            raise ModelError(f"{path}: healthy class {self.healthy!r} not in {self.classes}")
        shape = list(out.shape)
        if len(shape) != 2 or shape[1] not in (len(self.classes), None):
            raise ModelError(
                f"{path}: output {out.name!r} has shape {_dims(shape)}, expected "
                f"[N, {len(self.classes)}] probabilities of {self.classes}"
            )
        self._outputs = [out.name]
        warm = self.probabilities(np.zeros((2, window_size, channels), np.float32))
        if warm.shape != (2, len(self.classes)):
            raise ModelError(f"{path}: gave probabilities of shape {warm.shape} for 2 windows")

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """``[n, classes]`` probabilities: one onnxruntime call."""
        x = batch.reshape(len(batch), -1) if self._flat else batch
        (p,) = self._session.run(self._outputs, {self._input: x})
        return np.asarray(p, np.float64).reshape(len(batch), -1)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """``1 - P(healthy)`` per window."""
        return 1.0 - self.probabilities(batch)[:, self.classes.index(self.healthy)]


class OnnxRegressor(OnnxHandler):
    """Kind ``regression``: one value per window, with an interval from the model's
    ``interval.bins`` (``[[upper edge, low, high], ...]`` offsets by bin of the value)."""

    config_model = OnnxRegressionConfig
    output = "regression"

    def __init__(self, config: OnnxRegressionConfig) -> None:
        self.config = config  # type: ignore[assignment]
        self.path = resolve_model(config.model)
        self.sha256 = ""
        self.last_details: dict[str, np.ndarray] = {}
        self.attributes = False
        self.threshold = float("nan")
        self.quantity = self.units = ""
        self.worse: Literal["lower", "higher"] = "lower"
        self._bins = np.zeros((1, 3))

    def load(self, window_size: int, channels: int) -> None:
        session, outputs = self.open_session(window_size, channels)
        path, meta = self.path, metadata(session)
        name = self.config.output or session.get_outputs()[0].name
        out = outputs.get(name)
        if out is None:
            raise ModelError(f"{path}: no output {name!r}; it has {sorted(outputs)}")
        shape = list(out.shape)
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] in (1, None))):
            raise ModelError(f"{path}: output {name!r} has shape {_dims(shape)}, expected [N]")
        self.threshold = float(_setting(self.config, meta, "limit", path))
        self.quantity = str(_setting(self.config, meta, "quantity", path))
        self.units = str(_setting(self.config, meta, "units", path))
        self.worse = _setting(self.config, meta, "worse", path)
        bins = (meta.get("interval") or {}).get("bins") or [[float("inf"), 0.0, 0.0]]
        self._bins = np.asarray(bins, np.float64)
        if self._bins.ndim != 2 or self._bins.shape[1] != 3:
            raise ModelError(f"{path}: metadata interval.bins must be [[edge, low, high], ...]")
        self._outputs = [name]
        warm = self.infer(np.zeros((2, window_size, channels), np.float32))
        if warm.shape != (2,):
            raise ModelError(f"{path}: output {name!r} gave shape {warm.shape} for 2 windows")

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """The value per window: one onnxruntime call."""
        x = batch.reshape(len(batch), -1) if self._flat else batch
        (v,) = self._session.run(self._outputs, {self._input: x})
        return np.asarray(v, np.float64).reshape(len(batch))

    def estimate(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(value, low, high)`` per window; the interval's low end is clipped at 0 for a
        quantity that cannot be negative (``worse: lower``, e.g. RUL)."""
        value = self.infer(batch)
        k = np.searchsorted(self._bins[:-1, 0], value, side="right")
        low, high = value + self._bins[k, 1], value + self._bins[k, 2]
        if self.worse == "lower":
            low = np.maximum(low, 0.0)
        return value, np.minimum(low, value), np.maximum(high, value)
