"""Plain records that flow between stages."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

EVENT = "event"
SUMMARY = "summary"
STATS = "stats"


@dataclass(slots=True)
class Message:
    """One MQTT message as received."""

    topic: str
    payload: bytes
    received: float = 0.0


@dataclass(slots=True)
class SampleBatch:
    """Samples decoded from a batch of messages, in arrival order.

    ``values`` is ``[n, channels]`` float32; ``devices`` has n device ids; ``ts`` (float64
    unix seconds) and ``seq`` (int64, -1 when absent) are per sample. ``errors`` counts
    rejected payloads by kind and ``rejects`` keeps ``(message, kind, reason)`` for
    dead-lettering.
    """

    devices: list[str]
    ts: np.ndarray
    seq: np.ndarray
    values: np.ndarray
    errors: dict[str, int] = field(default_factory=dict)
    rejects: list[tuple[Message, str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.devices)


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
