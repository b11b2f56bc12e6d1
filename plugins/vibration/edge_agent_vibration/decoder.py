"""Blocks of high-rate samples: one JSON message carries many consecutive samples.

The sample-rate contract: the decoder delivers samples at ``sample_rate`` (the model's rate,
which the ``bearing_condition`` handler checks at start-up). A block whose ``fs`` is an
integer multiple of it (up to 8x) is decimated behind an anti-alias filter; any other rate is
rejected under the error kind ``sample_rate``, never scored as if it were the model's rate.
"""

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

from .resample import MAX_FACTOR, decimate, ratio

_TOPIC = re.compile(r"^topic\[(-?\d+)\]$")


class BlockConfig(ComponentConfig):
    type: Literal["vibration_block"]
    device: str = Field("topic[1]", description="device id: topic[N] or a payload field")
    channels: int = Field(1, ge=1, le=16, description="values per sample (axes)")
    sample_rate: float = Field(
        12000,
        gt=0,
        description="Hz of the samples delivered (the model's rate); also a payload's rate "
        "when it has no `fs`",
    )
    resample: bool = Field(
        True,
        description=f"decimate blocks whose `fs` is 2-{MAX_FACTOR}x sample_rate; "
        "false rejects every other rate",
    )
    shaft_speed: bool = Field(
        False,
        description="append a channel holding each block's shaft speed in Hz, from its "
        "optional `rpm` field (0 when absent)",
    )
    max_samples: int = Field(65536, gt=0, description="larger blocks are rejected")


class BlockDecoder:
    """``{"ts": t0, "fs": Hz, "rpm": r, "v": [x0, x1, ...] or [[x, y, z], ...]}`` -> one
    sample per row at ``sample_rate`` (decimated from ``fs`` when needed), sample ``i`` at
    ``t0 + i / sample_rate``; ``seq`` is the row within the delivered block. With
    ``shaft_speed``, each row ends with the block's ``rpm / 60`` (0 without ``rpm``).

    Error kinds: ``json``, ``schema`` (missing ``ts``/``v``), ``values`` (wrong width,
    non-numeric, NaN or infinite, too many samples, bad ``fs`` or ``rpm``), ``sample_rate``
    (an ``fs`` that cannot be brought to ``sample_rate``).
    """

    config_model = BlockConfig

    def __init__(self, config: BlockConfig) -> None:
        self.config = config
        self.sample_rate = config.sample_rate
        self.speed_channel = config.shaft_speed
        self.channels = config.channels + int(config.shaft_speed)
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
                fs = float(obj.get("fs", self.sample_rate))
                rpm = float(obj.get("rpm", 0.0))
                raw = obj["v"]
            except (KeyError, IndexError, TypeError, ValueError) as e:
                reject(msg, "schema", f"bad or missing field ({e!r})")
                continue
            try:
                with np.errstate(over="ignore"):
                    v = np.asarray(raw, np.float32).reshape(len(raw), -1)
                if v.shape[1] != self.config.channels or not len(v):
                    raise ValueError(f"expected rows of {self.config.channels} values")
                if len(v) > self.config.max_samples:
                    raise ValueError(f"{len(v)} samples > max_samples")
                if not (np.isfinite(v).all() and math.isfinite(t0)):
                    raise ValueError("NaN or infinite value or ts")
                if not (math.isfinite(fs) and fs > 0 and math.isfinite(rpm) and rpm >= 0):
                    raise ValueError(f"bad fs {fs} or rpm {rpm}")
            except (TypeError, ValueError) as e:
                reject(msg, "values", str(e))
                continue
            v, why = self._at_rate(v, fs)
            if why:
                reject(msg, "sample_rate", why)
                continue
            if self.speed_channel:
                v = np.concatenate([v, np.full((len(v), 1), rpm / 60, np.float32)], axis=1)
            n = len(v)
            devices += [dev] * n
            ts.append(t0 + np.arange(n) / self.sample_rate)
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

    def _at_rate(self, v: np.ndarray, fs: float) -> tuple[np.ndarray, str]:
        """The block at ``sample_rate``, or the reason it cannot be brought there."""
        k = ratio(fs, self.sample_rate)
        if k == 1:
            return v, ""
        if k is None:
            return v, (
                f"fs {fs:g} Hz is not {self.sample_rate:g} Hz or an integer multiple of it "
                f"up to {MAX_FACTOR}x"
            )
        if not self.config.resample:
            return v, f"fs {fs:g} Hz is not {self.sample_rate:g} Hz (resample: false)"
        try:
            return decimate(v, k).astype(np.float32), ""
        except ValueError as e:
            return v, f"fs {fs:g} Hz: cannot decimate {k}x ({e})"
