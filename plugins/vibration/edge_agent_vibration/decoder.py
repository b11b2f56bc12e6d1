"""Blocks of high-rate samples: one JSON message carries many consecutive samples."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Literal

import numpy as np
import orjson
from pydantic import Field

from agent.config import ComponentConfig
from agent.records import Message, SampleBatch

_TOPIC = re.compile(r"^topic\[(-?\d+)\]$")


class BlockConfig(ComponentConfig):
    type: Literal["vibration_block"]
    device: str = Field("topic[1]", description="device id: topic[N] or a payload field")
    channels: int = Field(1, ge=1, le=16, description="values per sample (axes)")
    sample_rate: float = Field(12800, gt=0, description="Hz, when a payload has no `fs`")
    max_samples: int = Field(65536, gt=0, description="larger blocks are rejected")


class BlockDecoder:
    """``{"ts": t0, "fs": Hz, "v": [x0, x1, ...] or [[x, y, z], ...]}`` -> one sample per
    row, sample ``i`` at ``t0 + i / fs``; ``seq`` is the row within the block.

    Error kinds: ``json``, ``schema`` (missing ``ts``/``v``), ``values`` (wrong width,
    non-numeric, NaN or infinite, too many samples).
    """

    config_model = BlockConfig

    def __init__(self, config: BlockConfig) -> None:
        self.config = config
        self.channels = config.channels
        m = _TOPIC.match(config.device)
        self._segment = int(m[1]) if m else None

    def decode_many(self, messages: Sequence[Message]) -> SampleBatch:
        devices: list[str] = []
        ts, seq, blocks = [], [], []
        errors: dict[str, int] = {}
        rejects: list[tuple[Message, str, str]] = []

        def reject(msg: Message, kind: str, reason: str) -> None:
            errors[kind] = errors.get(kind, 0) + 1
            rejects.append((msg, kind, reason))

        for msg in messages:
            try:
                obj = orjson.loads(msg.payload)
                if not isinstance(obj, dict):
                    raise orjson.JSONDecodeError("not an object", "", 0)
            except orjson.JSONDecodeError as e:
                reject(msg, "json", f"not a JSON object ({e})")
                continue
            try:
                dev = (
                    msg.topic.split("/")[self._segment]
                    if self._segment is not None
                    else str(obj[self.config.device])
                )
                t0 = float(obj["ts"])
                fs = float(obj.get("fs", self.config.sample_rate))
                raw = obj["v"]
            except (KeyError, IndexError, TypeError, ValueError) as e:
                reject(msg, "schema", f"bad or missing field ({e!r})")
                continue
            try:
                with np.errstate(over="ignore"):
                    v = np.asarray(raw, np.float32).reshape(len(raw), -1)
                if v.shape[1] != self.channels or not len(v):
                    raise ValueError(f"expected rows of {self.channels} values")
                if len(v) > self.config.max_samples:
                    raise ValueError(f"{len(v)} samples > max_samples")
                if not (np.isfinite(v).all() and math.isfinite(t0) and fs > 0):
                    raise ValueError("NaN, infinite or bad fs")
            except (TypeError, ValueError) as e:
                reject(msg, "values", str(e))
                continue
            n = len(v)
            devices += [dev] * n
            ts.append(t0 + np.arange(n) / fs)
            seq.append(np.arange(n, dtype=np.int64))
            blocks.append(v)
        return SampleBatch(
            devices,
            np.concatenate(ts) if ts else np.empty(0, np.float64),
            np.concatenate(seq) if seq else np.empty(0, np.int64),
            np.concatenate(blocks) if blocks else np.empty((0, self.channels), np.float32),
            errors,
            rejects,
        )
