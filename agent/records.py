"""Plain records that flow between stages."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

EVENT = "event"
SUMMARY = "summary"
STATS = "stats"


@dataclass(slots=True)
class Message:
    """One MQTT message as received.

    ``ack`` is set by a source that acknowledges QoS 1 messages only once they are
    processed: an opaque token the worker hands back to the source (see
    :meth:`agent.transport.source.MqttSource.acknowledge`). ``mid`` is a QoS 1 message's
    packet id (-1 otherwise) and ``dup`` its DUP flag (the broker sends it again): with
    them a pipeline recognises a redelivery of input it already committed
    (:mod:`agent.runtime.redelivery`).
    """

    topic: str
    payload: bytes
    received: float = 0.0
    ack: tuple[int, tuple[int, ...]] | None = None
    mid: int = -1
    dup: bool = False


@dataclass(slots=True)
class SampleBatch:
    """Samples decoded from a batch of messages, in arrival order.

    ``values`` is ``[n, channels]`` float32; ``devices`` has n device ids; ``ts`` (float64
    unix seconds) and ``seq`` (int64, -1 when absent) are per sample. ``errors`` counts
    rejected payloads by kind and ``rejects`` keeps ``(message, kind, reason)`` for
    dead-lettering. Optional extras: ``detections`` (camera decoders), ``control``
    (``(topic, payload)`` messages the runtime publishes on the source broker, such as a
    Sparkplug rebirth request) and ``states`` (``(device, "online"|"offline", ts)``
    changes, sent upstream as events) and ``origin`` (per sample, the index of its message in
    the decoded batch; lets a sample-level reject such as a timestamp out of range be
    dead-lettered with its payload and topic).
    """

    devices: list[str]
    ts: np.ndarray
    seq: np.ndarray
    values: np.ndarray
    errors: dict[str, int] = field(default_factory=dict)
    rejects: list[tuple[Message, str, str]] = field(default_factory=list)
    detections: Detections | None = None
    control: list[tuple[str, bytes]] = field(default_factory=list)
    states: list[tuple[str, str, float]] = field(default_factory=list)
    origin: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.devices)


@dataclass(slots=True)
class Detections:
    """Object detections of the frames in a :class:`SampleBatch`, one row per object.

    Camera decoders emit one sample per frame (its object count) and the objects here:
    ``frame[i]`` is the sample (frame) row ``i`` belongs to; ``track`` is the tracker id
    (-1 when untracked); ``boxes`` is ``[n, 4]`` float32 ``left, top, right, bottom`` in
    pixels; ``confidence`` is -1 when absent; ``labels`` holds the class names.
    """

    frame: np.ndarray
    track: np.ndarray
    boxes: np.ndarray
    confidence: np.ndarray
    labels: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def take_frames(self, keep: np.ndarray, frames: int) -> Detections:
        """The detections of frames ``keep`` (sorted row indices), renumbered."""
        new = np.full(frames, -1, np.int64)
        new[keep] = np.arange(len(keep))
        rows = np.flatnonzero(new[self.frame] >= 0)
        return Detections(
            new[self.frame[rows]],
            self.track[rows],
            self.boxes[rows],
            self.confidence[rows],
            [self.labels[i] for i in rows.tolist()],
        )


@dataclass(slots=True)
class Record:
    """An upstream record: an event, a per-device summary or pipeline stats.

    ``id`` is unique per record so consumers can drop duplicates after a crash between
    publish and acknowledgement.
    """

    kind: str
    pipeline: str
    device: str
    payload: dict
    id: str = ""


def dumps(obj: Any) -> bytes:
    """JSON for a record payload from any stage or plugin: numpy scalars and arrays as
    numbers and lists, anything else orjson cannot write as its ``str()``. A payload that
    cannot be written must not fail the spool's commit (and with it every later record)."""
    return orjson.dumps(obj, default=_jsonable, option=orjson.OPT_SERIALIZE_NUMPY)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    return str(obj)
