"""Bearing condition handler: features of each window -> ONNX classifier -> class probabilities.

The handler declares the ``classes`` output kind (:class:`agent.protocols.ClassOutput`): the
processor calls :meth:`BearingHandler.probabilities`, a window is over when ``1 - P(normal)``
exceeds the threshold, and its event names the most likely fault (``class``,
``probability``, ``probabilities``) plus the shaft speed used (``describe``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import numpy as np
from pydantic import Field

from agent.config import ComponentConfig
from agent.errors import ModelError
from agent.handlers.typed import metadata as model_metadata
from agent.protocols import Decoder, SampleRate

from . import MODEL
from .features import feature_names, features


class BearingConfig(ComponentConfig):
    type: Literal["bearing_condition"]
    model: Path = Field(MODEL, description="ONNX classifier: input [N, features] float32")
    sha256: str | None = Field(
        None, pattern=r"^[0-9a-fA-F]{64}$", description="pin the model file's sha256"
    )
    threshold: float = Field(
        0.5, gt=0, lt=1, description="score (1 - P(normal)) above which a window is an event"
    )
    shaft_hz: float | None = Field(
        None,
        gt=0,
        description="shaft speed (Hz) of windows whose blocks give no `rpm` (default: the "
        "speed the model was trained at)",
    )
    threads: int = Field(1, ge=1, le=64, description="onnxruntime intra-op threads")


@runtime_checkable
class ShaftSpeed(Protocol):
    """A decoder ability: ``speed_channel`` says the last channel is the shaft speed (rpm)."""

    speed_channel: bool


class BearingHandler:
    """Scores ``[n, size, channels]`` vibration windows: ``1 - P(normal)``.

    The model's metadata names its classes, sample rate, window size, channels, feature
    names, bearing fault orders and nominal shaft speed. ``bind`` checks the decoder's rate
    against the model's and learns whether the last channel is the shaft speed; ``load``
    refuses a window the model was not built for. Keeps no per-device state.
    """

    config_model = BearingConfig
    output = "classes"

    def __init__(self, config: BearingConfig) -> None:
        self.config = config
        self.threshold = config.threshold
        self.classes: list[str] = []
        self.healthy = ""
        self.path = Path(config.model)
        self.sha256 = ""
        self.speed_channel = False
        self.last_details: dict[str, np.ndarray] = {}
        self._decoder_rate: float | None = None

    def bind(self, decoder: Decoder) -> None:
        """Take the decoder's delivered rate and shaft-speed channel (called before load)."""
        if not isinstance(decoder, SampleRate):
            raise ModelError(
                f"{self.path}: bearing_condition needs a decoder that declares its sample "
                f"rate (vibration_block), not {type(decoder).__name__}"
            )
        self._decoder_rate = float(decoder.sample_rate)
        self.speed_channel = isinstance(decoder, ShaftSpeed) and decoder.speed_channel

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
        meta = model_metadata(session)
        try:
            self.classes: list[str] = meta["classes"]
            self.healthy = meta.get("normal_class", "normal")
            self._normal = self.classes.index(self.healthy)
            size, want_ch = meta["window_size"], meta["channels"]
            self.sample_rate, self.bearing = float(meta["sample_rate"]), meta["bearing_orders"]
            self.shaft_hz = float(self.config.shaft_hz or meta["shaft_hz"])
            names = meta["features"]
        except (KeyError, ValueError) as e:
            raise ModelError(f"{self.path}: metadata lacks {e} (see build_model.py)") from e
        if self._decoder_rate is not None and self._decoder_rate != self.sample_rate:
            raise ModelError(
                f"{self.path}: built for {self.sample_rate:g} Hz, but the decoder delivers "
                f"{self._decoder_rate:g} Hz: set decoder.sample_rate: {self.sample_rate:g} "
                "(blocks at integer multiples of it are decimated)"
            )
        vib = channels - int(self.speed_channel)
        if (window_size, vib) != (size, want_ch):
            raise ModelError(
                f"{self.path}: built for windows of {size} samples x {want_ch} channels, but "
                f"the pipeline gives {window_size} x {vib}: set window.size: {size} and "
                f"a decoder with {want_ch} channel(s)"
            )
        if names != feature_names(want_ch):
            raise ModelError(f"{self.path}: built on other features than this plugin computes")
        (inp,) = session.get_inputs()
        if inp.shape[-1] != len(names):
            raise ModelError(f"{self.path}: input {inp.shape} but features are [N, {len(names)}]")
        self._session, self._input = session, inp.name
        warm = self.infer(np.zeros((2, window_size, channels), np.float32))
        if warm.shape != (2,):
            raise ModelError(f"{self.path}: gave {warm.shape} scores for 2 windows")

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities ``[n, classes]``; the shaft speed used per window goes to
        ``last_details`` for :meth:`describe`."""
        probs, shaft = self._probabilities(batch)
        self.last_details = {"shaft_hz": shaft}
        return probs

    def _probabilities(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Class probabilities ``[n, classes]`` and the shaft speed (Hz) used, per window."""
        if self.speed_channel:
            given = batch[:, :, -1].astype(np.float64)
            known = given > 0
            count = known.sum(axis=1)
            total = np.where(known, given, 0).sum(axis=1)
            shaft = np.where(count > 0, total / np.maximum(count, 1), self.shaft_hz)
            batch = batch[:, :, :-1]
        else:
            shaft = np.full(len(batch), self.shaft_hz)
        f = features(batch, self.sample_rate, shaft, self.bearing)
        (probs,) = self._session.run(None, {self._input: f})
        return probs.astype(np.float64), shaft

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """``1 - P(normal)`` per window (for tools that know scores only)."""
        return 1.0 - self.probabilities(batch)[:, self._normal]

    def describe(self, hits: np.ndarray) -> list[dict]:
        """For windows ``hits`` of the last call: the shaft speed (Hz) used."""
        shaft = self.last_details["shaft_hz"]
        return [{"shaft_hz": round(float(shaft[i]), 3)} for i in hits.tolist()]
