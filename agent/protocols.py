"""Contracts every component honours; plugins implement the same Protocols.

Data flows one way: source -> decoder -> window -> handler -> rules -> aggregator -> sink.

Every component class has a ``config_model`` attribute: a pydantic model (subclass of
:class:`agent.config.ComponentConfig`, frozen, ``extra="forbid"``, every field described)
with a ``type: Literal[...]`` field naming it. Built-ins are listed in
:mod:`agent.builtins`; a plugin registers the class under the entry-point group
``edge_agent.decoders``, ``edge_agent.handlers`` or ``edge_agent.sinks`` with the same name
as its ``type``. The registry imports a plugin only when a config names it, validates the
config section with ``config_model`` and builds the component with it.

Threads: decoders and handlers are built and loaded at start-up, then called from one
pipeline's worker thread only, never concurrently; sinks from one forwarder thread each.
:mod:`agent.testing.conformance` checks these contracts; run it in a plugin's own tests.

Optional abilities are small Protocols below (``NamedChannels``, ``Describes``,
``PerDevice``...): a component has an ability when it implements that Protocol in full, and
the runtime asks with ``isinstance``, never by probing for a name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import numpy as np

from agent.config import BrokerConfig
from agent.records import Message, Record, SampleBatch
from agent.transport.mqtt import Connection

OutputKind = Literal["score", "classes", "regression", "events"]


@runtime_checkable
class Decoder(Protocol):
    """Turns payloads into samples. Pure: no I/O; never raises on bad input.

    ``channels`` is the width of ``SampleBatch.values``. ``decode_many(messages)`` returns
    the samples of every message in arrival order (a message may give zero, one or many
    samples). A payload that cannot be decoded is counted in ``SampleBatch.errors`` under a
    short kind (``json``, ``schema``, ``values``...) with a ``rejects`` entry, and the rest
    of the batch is kept. Decoding ``a + b`` gives the same samples as decoding ``a`` then
    ``b``. A decoder keeps no state between calls, except a protocol session that the
    payloads require (Sparkplug B alias tables and sequence numbers); such a decoder asks
    the runtime for actions through ``SampleBatch.control`` instead of doing I/O.
    """

    config_model: ClassVar[type]
    channels: int

    def __init__(self, config: Any) -> None: ...

    def decode_many(self, messages: Sequence[Message]) -> SampleBatch: ...


@runtime_checkable
class ModelHandler(Protocol):
    """Scores windows in batches; keeps no per-device state.

    ``__init__(config)`` only stores settings (no file access). ``load(window_size,
    channels)`` opens the model, checks its input and output against the window (raising
    :class:`agent.errors.ModelError` naming both), verifies a pinned sha256 and warms up.
    ``infer(batch)`` takes ``[n, window_size, channels]`` float32 and returns ``[n]`` float
    scores; it is called once per batch, from the pipeline's worker thread only, and row
    ``i`` of the result depends on row ``i`` of the batch only (one call for N windows gives
    the N results of N calls). ``threshold`` is the score above which a window is an
    anomaly. ``output`` declares the kind: ``score`` (this Protocol alone), or ``classes`` /
    ``regression`` with that kind's Protocol (:class:`ClassOutput`,
    :class:`RegressionOutput`), which the processor decides by.

    Optional abilities: :class:`Binds`, :class:`Describes`, :class:`Details`,
    :class:`PerDevice`, :class:`Attributing`, :class:`ModelFile`, :class:`WatchesFile`.
    """

    config_model: ClassVar[type]
    output: OutputKind
    threshold: float

    def __init__(self, config: Any) -> None: ...

    def load(self, window_size: int, channels: int) -> None: ...

    def infer(self, batch: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class ClassOutput(Protocol):
    """Handler kind ``classes``: the handler declares ``output = "classes"``.

    ``classes`` are the labels, ``healthy`` the one that counts as healthy;
    ``probabilities(batch)`` takes ``[n, window_size, channels]`` and returns ``[n, classes]``
    (rows sum to 1), one call per batch, row ``i`` from window ``i`` only. The processor calls
    it instead of ``infer``: a window is over when ``1 - P(healthy)`` exceeds ``threshold``,
    and its event names the most likely other class with its probability. ``infer`` still
    returns ``1 - P(healthy)`` (tools that know scores only keep working).
    """

    output: Literal["classes"]
    classes: list[str]
    healthy: str
    threshold: float

    def probabilities(self, batch: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class RegressionOutput(Protocol):
    """Handler kind ``regression``: the handler declares ``output = "regression"``.

    ``estimate(batch)`` returns ``(value, low, high)``, each ``[n]`` (an interval around each
    estimate, ``low <= value <= high``), of ``quantity`` in ``units``. ``worse`` says which
    direction is bad and ``threshold`` is the limit: a window is over when its value is on
    the worse side of it (RUL: ``lower`` than 30 cycles means maintenance is due). ``infer``
    returns the value.
    """

    output: Literal["regression"]
    quantity: str
    units: str
    worse: Literal["lower", "higher"]
    threshold: float

    def estimate(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


@runtime_checkable
class DeclaresOutput(Protocol):
    """A handler's declaration of its output kind (``score``, ``classes``, ``regression``)."""

    output: OutputKind


def output_kind(handler: object) -> OutputKind:
    """What a handler outputs: ``events`` for a :class:`StreamHandler`, else the kind its
    ``output`` declares when it implements that kind's Protocol in full, else ``score``."""
    if isinstance(handler, StreamHandler) and handler.stateful:
        return "events"
    if isinstance(handler, ClassOutput) and handler.output == "classes":
        return "classes"
    if isinstance(handler, RegressionOutput) and handler.output == "regression":
        return "regression"
    return "score"


@runtime_checkable
class NamedChannels(Protocol):
    """Optional decoder ability: ``channel_names`` names the ``channels`` value columns (e.g.
    the JSON decoder's ``fields``), so events name a cause by field instead of by index."""

    channel_names: list[str]


@runtime_checkable
class Thresholded(Protocol):
    """A handler's own ``threshold`` (every windowed handler has one; a stream handler may)."""

    threshold: float


@runtime_checkable
class SampleRate(Protocol):
    """Optional decoder ability: samples come at ``sample_rate`` Hz (a handler that depends
    on the rate checks it in ``bind``)."""

    sample_rate: float


@runtime_checkable
class Binds(Protocol):
    """Optional handler ability: ``bind(decoder)``, called before ``load``, checks how
    samples are decoded (e.g. the decoder's :class:`SampleRate` against the model's) and
    raises :class:`agent.errors.ModelError` when they do not fit."""

    def bind(self, decoder: Decoder) -> None: ...


@runtime_checkable
class Describes(Protocol):
    """Optional handler ability: ``describe(hits)`` returns one dict of extra event fields
    (e.g. the shaft speed used) for each index in ``hits`` of the last scoring call."""

    def describe(self, hits: np.ndarray) -> list[dict]: ...


@runtime_checkable
class Details(Protocol):
    """Optional handler ability: ``last_details`` holds per-window arrays (``[n]`` each) of
    the last scoring call, which replay and evaluation report beside the scores."""

    last_details: dict[str, np.ndarray]


@runtime_checkable
class PerDevice(Protocol):
    """Optional handler ability: a model fitted per device on its calibration warm-up.

    ``fit_devices(slots, warmup)`` fits device ``slots[k]`` on ``warmup[k]`` (normalised
    ``[m, channels]`` rows); ``infer_devices(slots, windows)`` scores each window with its
    device's fit and is called instead of ``infer``."""

    def fit_devices(self, slots: np.ndarray, warmup: np.ndarray) -> None: ...

    def infer_devices(self, slots: np.ndarray, windows: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class ModelFile(Protocol):
    """Optional handler ability: the model file it loaded (``path``) and that file's
    ``sha256`` (empty before ``load``), logged, reported to the fleet and compared on reload."""

    path: Any
    sha256: str


@runtime_checkable
class WatchesFile(Protocol):
    """Optional handler ability: ``check_file()`` returns None while the model file still
    holds the loaded bytes, else a message saying what changed (the runtime logs it)."""

    def check_file(self) -> str | None: ...


def model_identity(handler: object) -> tuple[str, str]:
    """``(path, sha256)`` of a handler's model file; ``("", "")`` without one."""
    if isinstance(handler, ModelFile):
        return str(handler.path or ""), handler.sha256 or ""
    return "", ""


@runtime_checkable
class Attributing(Protocol):
    """Optional handler ability: which channels drive a window's score.

    ``attributes`` says whether the handler, as loaded, can attribute (an ONNX model only
    when it has a per-channel output); ``attribute(slots, windows)`` returns ``[k, channels]``
    non-negative contributions for ``k`` windows as the handler scored them (normalised, with
    their device slots). A handler that cannot attribute does not implement this, or has
    ``attributes`` false: events then carry no ``cause``.
    """

    attributes: bool

    def attribute(self, slots: np.ndarray, windows: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class StreamHandler(Protocol):
    """A stateful handler: consumes decoded samples directly instead of fixed windows.

    The documented exception to "no per-device state", for analytics that need the
    history of each device (tracks of a camera, dwell times): the handler owns that state,
    bounds it (idle devices expire after ``ttl`` seconds of their own timestamps) and is
    called only from the worker thread. ``stateful`` is ``True`` (its output kind is
    ``events``; it may say so with ``output = "events"``); the pipeline then skips
    windows and calls ``update(batch)`` once per decoded batch (returns event payloads,
    each with a ``device``) and ``flush()`` once per summary period (returns per-device
    summary payloads, each with a ``device``). ``load(window_size, channels)`` checks the
    config against the decoder (e.g. that it gives detections).

    ``save(devices)`` is called before each ``update`` with the batch's devices and returns
    a step that puts their state back as it was: when the batch fails part-way (a defect on
    one message), the runtime runs the step and processes the batch again in halves, so
    nothing is counted twice. It should copy only what ``update`` may change for those
    devices; it runs once per batch.
    """

    config_model: ClassVar[type]
    stateful: ClassVar[bool]

    def __init__(self, config: Any) -> None: ...

    def load(self, window_size: int, channels: int) -> None: ...

    def save(self, devices: Sequence[str]) -> Callable[[], None]: ...

    def update(self, batch: SampleBatch) -> list[dict]: ...

    def flush(self) -> list[dict]: ...


@runtime_checkable
class SinkContext(Protocol):
    """What a sink may ask of the runtime, and nothing more (not the whole agent).

    ``agent_id`` names this agent (e.g. a default node id); ``connection(broker)`` is the
    runtime's shared connection to a named broker, started and stopped by the runtime;
    ``broker(name)`` is that broker's settings, for a sink that owns a connection of its
    own (the Sparkplug sink, whose will is its NDEATH).
    """

    @property
    def agent_id(self) -> str: ...

    def connection(self, broker: str) -> Connection: ...

    def broker(self, name: str) -> BrokerConfig: ...


@runtime_checkable
class Sink(Protocol):
    """Delivers records upstream.

    ``__init__(config, context)`` does no I/O; ``context`` is a :class:`SinkContext` (None
    for a sink that needs nothing upstream, as tests build file sinks); the sink keeps
    ``config``. ``start()`` opens what the sink owns.
    ``write_many(records)`` returns once every record is acknowledged, or raises
    :class:`agent.errors.NotConnectedError` (the spool keeps them and retries the same
    records later, so a sink must tolerate seeing a record twice: ``Record.id`` is stable).
    ``close()`` releases what ``start`` opened and may be called once.

    Optional abilities: :class:`Concurrent`, :class:`Pipelined`, :class:`SharesConnection`.
    """

    config_model: ClassVar[type]
    config: Any

    def __init__(self, config: Any, context: SinkContext | None) -> None: ...

    def start(self) -> None: ...

    def write_many(self, records: Sequence[Record]) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class Concurrent(Protocol):
    """Optional sink ability: ``write_many`` may run in two forwarder lanes at once (live
    events, and the rest), when ``concurrent`` is true."""

    concurrent: bool


@runtime_checkable
class Pipelined(Protocol):
    """Optional sink ability (with :class:`Concurrent`): ``publish_many(records)`` sends
    without waiting and returns a delivery whose ``done()`` says whether every record is
    acknowledged yet and ``wait()`` blocks until they are (both raise ``NotConnectedError``
    when that will not happen), and whose ``notify(event)`` sets ``event`` once ``done()``
    may answer differently and returns the (monotonic) time by which to ask anyway; the
    forwarder then pipelines live events (:class:`agent.sinks.mqtt.MqttSink` does)."""

    def publish_many(self, records: Sequence[Record]) -> Any: ...


@runtime_checkable
class SharesConnection(Protocol):
    """Optional sink ability: ``conn`` is the shared connection it took from
    ``SinkContext.connection`` (the runtime stops a connection no sink uses any more)."""

    conn: Connection
