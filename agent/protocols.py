"""Contracts every component honours; plugins implement the same Protocols.

Data flows one way: source -> decoder -> window -> handler -> rules -> aggregator -> sink.
Every component class has a ``config_model`` attribute: a pydantic model (subclass of
:class:`agent.config.ComponentConfig`) with a ``type: Literal[...]`` field naming it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from .records import Message, Record, SampleBatch


@runtime_checkable
class Decoder(Protocol):
    """Turns payloads into samples. Pure: no I/O, no state shared between calls.

    ``channels`` is the width of ``SampleBatch.values``. A payload that cannot be decoded
    is counted in ``SampleBatch.errors`` under a short kind (``json``, ``schema``,
    ``values``, ``too_large``...) and never raises.
    """

    config_model: ClassVar[type]
    channels: int

    def __init__(self, config: Any) -> None: ...

    def decode_many(self, messages: Sequence[Message]) -> SampleBatch: ...


@runtime_checkable
class ModelHandler(Protocol):
    """Scores windows in batches; keeps no per-device state.

    ``load(window_size, channels)`` opens the model, checks its input and output against
    the window (raising :class:`agent.errors.ModelError` naming both), verifies a pinned
    sha256 and warms up. ``infer(batch)`` takes ``[n, window_size, channels]`` float32 and
    returns ``[n]`` float scores; it is called once per batch from the pipeline's worker
    thread only. ``threshold`` is the score above which a window is an anomaly.
    """

    config_model: ClassVar[type]
    threshold: float

    def __init__(self, config: Any) -> None: ...

    def load(self, window_size: int, channels: int) -> None: ...

    def infer(self, batch: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class Sink(Protocol):
    """Delivers records upstream.

    ``write_many`` returns once every record is acknowledged, or raises
    :class:`agent.errors.NotConnectedError` (the spool keeps them and retries).
    """

    config_model: ClassVar[type]

    def __init__(self, config: Any, context: Any) -> None: ...

    def start(self) -> None: ...

    def write_many(self, records: Sequence[Record]) -> None: ...

    def close(self) -> None: ...
