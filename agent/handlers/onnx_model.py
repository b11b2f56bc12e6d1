"""ONNX model handler: one onnxruntime call per batch of windows."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from agent.config import ComponentConfig
from agent.errors import ModelError


class OnnxHandlerConfig(ComponentConfig):
    type: Literal["onnx", "onnx_autoencoder"]
    model: str = Field(description="path to an .onnx file, or builtin:NAME")
    sha256: str | None = Field(
        None, pattern=r"^[0-9a-fA-F]{64}$", description="pin the model file's sha256"
    )
    input: str | None = Field(None, description="input name; default: the model's only input")
    output: str = Field("score", description="output holding one score per window")
    details: list[str] = Field(
        [], description="more outputs (one value per window) added to each event, e.g. mode"
    )
    cause: str | None = Field(
        "channel_error",
        description="output of per-channel contributions [N, channels] (e.g. reconstruction "
        "error) naming an event's cause; used when the model has it; none: never",
    )
    threshold: float | Literal["auto"] = Field(
        1.5,
        description="a window scoring above this is an anomaly; `auto`: per device from its "
        "warm-up (needs a `calibration:` section)",
    )
    threads: int = Field(1, ge=1, le=64, description="onnxruntime intra-op threads")

    def learns_threshold(self) -> bool:
        return self.threshold == "auto"


def resolve_model(ref: str) -> Path:
    """A model path from ``builtin:NAME`` or a file path."""
    if ref.startswith("builtin:"):
        from agent.models import resolve

        return resolve(ref.removeprefix("builtin:"))
    return Path(ref)


MAX_MODEL_BYTES = 512 << 20  # larger files are refused before they are read
_CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    """The file's sha256, read in 1 MiB chunks (a model check holds no copy of the file)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _too_large(path: Path) -> str | None:
    size = path.stat().st_size
    if size > MAX_MODEL_BYTES:
        return f"{path}: {size} bytes, more than the {MAX_MODEL_BYTES} a model file may have"
    return None


def _dims(shape: list) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) else "N" for d in shape) + "]"


class OnnxHandler:
    """Scores ``[n, size, channels]`` windows with a model taking ``[n, size*channels]`` or
    ``[n, size, channels]`` float32 and returning ``[n]`` (or ``[n, 1]``) scores."""

    # the typed handlers (agent.handlers.typed) subclass this with configs of their own
    config_model: ClassVar[type[ComponentConfig]] = OnnxHandlerConfig
    output = "score"

    def __init__(self, config: OnnxHandlerConfig) -> None:
        self.config = config
        self.threshold = float("nan") if config.threshold == "auto" else config.threshold
        self.path = resolve_model(config.model)
        self.sha256 = ""
        self._session: Any = None  # an onnxruntime.InferenceSession once loaded (untyped)
        self._flat = True
        self.last_details: dict[str, np.ndarray] = {}
        self.attributes = False

    def open_session(self, window_size: int, channels: int):
        """Read, pin-check and open the model; check its input against the window. Returns
        the session and its outputs by name (sets ``sha256``, the input name and layout)."""
        import onnxruntime as ort

        path = self.path
        if not path.is_file():
            raise ModelError(f"{path}: model file not found")
        big = _too_large(path)
        if big:
            raise ModelError(big)
        data = path.read_bytes()
        self.sha256 = hashlib.sha256(data).hexdigest()
        if self.config.sha256 and self.sha256 != self.config.sha256.lower():
            raise ModelError(
                f"{path}: sha256 {self.sha256} does not match the pinned {self.config.sha256}"
            )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.config.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.enable_cpu_mem_arena = False
        try:
            session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ModelError(f"{path}: not a loadable ONNX model ({e})") from e
        inputs = session.get_inputs()
        if self.config.input:
            match = [i for i in inputs if i.name == self.config.input]
            if not match:
                names = [i.name for i in inputs]
                raise ModelError(f"{path}: no input {self.config.input!r}; it has {names}")
            inp = match[0]
        elif len(inputs) == 1:
            inp = inputs[0]
        else:
            names = [i.name for i in inputs]
            raise ModelError(f"{path}: several inputs {names}; set handler.input")
        shape = list(inp.shape)
        want = window_size * channels
        fixed = [d if isinstance(d, int) else None for d in shape[1:]]
        if len(shape) == 2 and fixed[0] in (None, want):
            self._flat = True
        elif len(shape) == 3 and fixed[0] in (None, window_size) and fixed[1] in (None, channels):
            self._flat = False
        else:
            raise ModelError(
                f"{path}: input {inp.name!r} has shape {_dims(shape)} but the window gives "
                f"{window_size} samples x {channels} channels: expected [N, {want}] or "
                f"[N, {window_size}, {channels}]"
            )
        if inp.type != "tensor(float)":
            raise ModelError(f"{path}: input {inp.name!r} is {inp.type}, expected tensor(float)")
        self._session, self._input = session, inp.name
        return session, {o.name: o for o in session.get_outputs()}

    def load(self, window_size: int, channels: int) -> None:
        path = self.path
        _, outputs = self.open_session(window_size, channels)
        if self.config.output not in outputs:
            raise ModelError(f"{path}: no output {self.config.output!r}; it has {sorted(outputs)}")
        out = outputs[self.config.output]
        oshape = list(out.shape)
        if not (len(oshape) == 1 or (len(oshape) == 2 and oshape[1] in (1, None))):
            raise ModelError(
                f"{path}: output {out.name!r} has shape {_dims(oshape)}, expected [N] scores"
            )
        missing = [d for d in self.config.details if d not in outputs]
        if missing:
            raise ModelError(f"{path}: no output {missing}; it has {sorted(outputs)}")
        self._outputs = [out.name, *self.config.details]
        cause = outputs.get(self.config.cause or "")
        self.attributes = cause is not None and list(cause.shape)[1:] in ([channels], [None])
        warm = self.infer(np.zeros((2, window_size, channels), np.float32))
        if warm.shape != (2,):
            raise ModelError(f"{path}: output {out.name!r} gave shape {warm.shape} for 2 windows")

    def check_file(self) -> str | None:
        """Compare the model file on disk with the loaded model; never touches the session.

        Returns None while the file still has the loaded sha256, else a message saying why
        the file is refused (missing, pin mismatch) or that it changed and needs a reload.
        The running model stays in service either way; a reload re-runs :meth:`load`,
        which refuses a pin mismatch or an unloadable (e.g. truncated) file.
        """
        try:
            big = _too_large(self.path)
            if big:
                return f"{big}; refused, the running model stays in service"
            digest = sha256_of(self.path)
        except OSError as e:
            return f"{self.path}: model file unreadable ({e.strerror}); running model kept"
        if digest == self.sha256:
            return None
        pin = (self.config.sha256 or "").lower()
        if pin and digest != pin:
            return (
                f"{self.path}: replaced on disk with sha256 {digest}, which does not match "
                f"the pinned {pin}; refused, the running model stays in service"
            )
        return (
            f"{self.path}: changed on disk (sha256 {digest}, running {self.sha256}); "
            "the running model stays in service until a reload"
        )

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Scores of ``batch`` [n, size, channels]: one onnxruntime call."""
        x = batch.reshape(len(batch), -1) if self._flat else batch
        scores, *details = self._session.run(self._outputs, {self._input: x})
        self.last_details = {
            name: d.reshape(len(batch)) for name, d in zip(self.config.details, details)
        }
        return scores.reshape(len(batch))

    def attribute(self, slots: np.ndarray, windows: np.ndarray) -> np.ndarray:
        """Per-channel contributions of ``windows`` from the model's ``cause`` output."""
        if not self.attributes:
            raise TypeError(f"{self.path}: the model has no {self.config.cause!r} output")
        x = windows.reshape(len(windows), -1) if self._flat else windows
        (out,) = self._session.run([self.config.cause], {self._input: x})
        return np.maximum(np.asarray(out, np.float64).reshape(len(windows), -1), 0)

    def describe(self, hits: np.ndarray) -> list[dict]:
        """The ``details`` outputs of the last call for windows ``hits``, for their events."""
        return [{name: d[i].item() for name, d in self.last_details.items()} for i in hits.tolist()]
