"""Per-message isolation: a payload that breaks a stage costs itself, not its batch.

Decoders promise to count a bad payload and never raise; a decoder (a plugin's, or a
defect in a built-in one) that raises anyway would otherwise take its whole batch with it.
:func:`decode_isolated` decodes the batch again one message at a time and rejects only the
messages that still raise, as kind ``decode`` with the exception as the reason.

After decoding, :func:`process_isolated` does the same for the whole processor: a batch whose
processing raises (a handler's defect on one device's window, a bug in a stage) leaves the
processor's state as it was, and is processed again in halves until each message that
raises on its own is found; only those are rejected (kind ``internal``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from agent import log
from agent.protocols import Decoder
from agent.records import Detections, Message, Record, SampleBatch


class BatchProcessor(Protocol):
    """What :func:`process_isolated` needs of a processor (declared here, so this module does
    not import the processor that imports it)."""

    def process(self, messages: Sequence[Message]) -> tuple[list[Record], Any]: ...

    def reject_raised(self, msg: Message, error: Exception) -> None: ...


_log = log.get(component="decoder")
_limit = log.RateLimit(1.0)


def decode_isolated(decoder: Decoder, messages: Sequence[Message]) -> SampleBatch:
    try:
        return decoder.decode_many(messages)
    except Exception:
        if len(messages) == 1:
            raise
    parts: list[SampleBatch] = []
    for msg in messages:
        try:
            parts.append(decoder.decode_many([msg]))
        except Exception as e:
            reason = f"{type(e).__name__}: {e}"[:300]
            if _limit.allow("decode"):
                _log.warning("decoder_raised", topic=msg.topic, error=reason, exc_info=True)
            parts.append(_empty(decoder, msg, reason))
    out = merge(parts, decoder.channels)
    if all(p.origin is not None for p in parts if len(p)):  # each part is message i
        out.origin = np.concatenate(
            [
                np.empty(0, np.int64),
                *(p.origin + i for i, p in enumerate(parts) if len(p) and p.origin is not None),
            ]
        )
    return out


def process_isolated(processor: BatchProcessor, messages: Sequence[Message]) -> list[Record]:
    """The events of ``messages``; never raises for an ``Exception`` of a stage.

    Halving finds k failing messages of n in at most about ``2k log2(n)`` extra calls; a
    defect that raises for every message costs ``2n - 1`` calls for the batch (each message
    then counted and dead-lettered once, as ``internal``) and never loops.
    """
    try:
        return processor.process(messages)[0]
    except Exception as e:
        if len(messages) == 1:
            processor.reject_raised(messages[0], e)
            return []
    mid = len(messages) // 2
    return process_isolated(processor, messages[:mid]) + process_isolated(processor, messages[mid:])


def _empty(decoder: Decoder, msg: Message, reason: str) -> SampleBatch:
    return SampleBatch(
        [],
        np.empty(0, np.float64),
        np.empty(0, np.int64),
        np.empty((0, decoder.channels), np.float32),
        {"decode": 1},
        [(msg, "decode", reason)],
    )


def merge(parts: list[SampleBatch], channels: int) -> SampleBatch:
    """One batch of ``parts`` in order (errors summed, detections renumbered)."""
    errors: dict[str, int] = {}
    for p in parts:
        for k, v in p.errors.items():
            errors[k] = errors.get(k, 0) + v
    with_rows = [p for p in parts if len(p)]
    out = SampleBatch(
        [d for p in parts for d in p.devices],
        np.concatenate([p.ts for p in with_rows]) if with_rows else np.empty(0, np.float64),
        np.concatenate([p.seq for p in with_rows]) if with_rows else np.empty(0, np.int64),
        np.concatenate([p.values for p in with_rows])
        if with_rows
        else np.empty((0, channels), np.float32),
        errors,
        [r for p in parts for r in p.rejects],
        control=[c for p in parts for c in p.control],
        states=[s for p in parts for s in p.states],
    )
    found = [(p.detections, n) for p, n in zip(parts, _offsets(parts)) if p.detections is not None]
    if found:
        out.detections = Detections(
            np.concatenate([d.frame + n for d, n in found]),
            np.concatenate([d.track for d, _ in found]),
            np.concatenate([d.boxes for d, _ in found]),
            np.concatenate([d.confidence for d, _ in found]),
            [label for d, _ in found for label in d.labels],
        )
    return out


def _offsets(parts: list[SampleBatch]) -> list[int]:
    out, n = [], 0
    for p in parts:
        out.append(n)
        n += len(p)
    return out
