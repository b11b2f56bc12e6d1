"""Per-message isolation at the decode stage: a payload that breaks a decoder costs itself.

Decoders promise to count a bad payload and never raise; a decoder (a plugin's, or a
defect in a built-in one) that raises anyway would otherwise take its whole batch with it.
:func:`decode_isolated` decodes the batch again one message at a time and rejects only the
messages that still raise, as kind ``decode`` with the exception as the reason.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from agent import log
from agent.protocols import Decoder
from agent.records import Detections, Message, SampleBatch

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
    return merge(parts, decoder.channels)


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
    found = [(p, n) for p, n in zip(parts, _offsets(parts)) if p.detections is not None]
    if found:
        out.detections = Detections(
            np.concatenate([p.detections.frame + n for p, n in found]),
            np.concatenate([p.detections.track for p, _ in found]),
            np.concatenate([p.detections.boxes for p, _ in found]),
            np.concatenate([p.detections.confidence for p, _ in found]),
            [label for p, _ in found for label in p.detections.labels],
        )
    return out


def _offsets(parts: list[SampleBatch]) -> list[int]:
    out, n = [], 0
    for p in parts:
        out.append(n)
        n += len(p)
    return out
