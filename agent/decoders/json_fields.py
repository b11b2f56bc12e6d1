"""JSON telemetry: device from a topic segment or a field, values from a list or named fields."""

from __future__ import annotations

import itertools
import math
import re
import sys
from collections.abc import Sequence
from typing import Literal, TypeVar

import numpy as np
import orjson
from pydantic import Field, model_validator

from agent.config import ComponentConfig
from agent.records import Message, SampleBatch

_TOPIC_SEGMENT = re.compile(r"^topic\[(-?\d+)\]$")
_NUMBERS = frozenset((int, float))
# bytes a topic string takes in memory (sys.getsizeof: 49 + 1 per ASCII character, 2 or 4 per
# character for some scripts and emoji): larger ones are split each time, so 100,000 cached
# topics and their device ids stay under ~75 MB whatever the characters
CACHED_TOPIC_BYTES = 320
T = TypeVar("T")
_INT64 = (-(1 << 63), (1 << 63) - 1)


class JsonDecoderConfig(ComponentConfig):
    type: Literal["json"]
    device: str = Field(
        "topic[2]", description="device id: topic[N] (a topic segment) or a payload field name"
    )
    ts: str | None = Field("ts", description="timestamp field, unix seconds; none: arrival time")
    seq: str | None = Field("seq", description="sequence-number field (optional in payloads)")
    values: str | None = Field("v", description="field holding a list of numbers")
    channels: int | None = Field(None, gt=0, description="length of the values list")
    fields: list[str] | None = Field(
        None, min_length=1, description="named numeric fields instead of a values list"
    )
    lenient_values: bool = Field(
        False,
        description="accept booleans and numeric strings as values (off: only JSON numbers; "
        "anything else is rejected as `values`)",
    )

    @model_validator(mode="after")
    def _one_layout(self) -> JsonDecoderConfig:
        if self.fields is None and self.channels is None:
            raise ValueError("set `channels` (length of the values list) or `fields`")
        if self.fields is not None and self.channels not in (None, len(self.fields)):
            raise ValueError(
                f"`fields` names {len(self.fields)} fields but `channels` is "
                f"{self.channels}: with `fields` the channels are the fields; drop "
                "`channels` or make the two agree"
            )
        return self


class JsonDecoder:
    """Decodes JSON objects; a bad payload is counted by kind and never raises.

    Error kinds: ``json`` (not a JSON object), ``schema`` (missing or mistyped field, a
    ``seq`` that is not an integer within int64), ``values`` (wrong count, not a JSON number
    (booleans, strings, lists: unless ``lenient_values``), NaN, infinite, beyond float32).
    """

    config_model = JsonDecoderConfig

    def __init__(self, config: JsonDecoderConfig) -> None:
        self.config = config
        self.channels = len(config.fields) if config.fields else int(config.channels or 0)
        self.channel_names = [*config.fields] if config.fields else []  # else by index
        m = _TOPIC_SEGMENT.match(config.device)
        self._segment = int(m[1]) if m else None
        self._devices: dict[str, str] = {}

    def decode_many(self, messages: Sequence[Message]) -> SampleBatch:
        if self._segment is not None and self.config.fields is None:
            batch = self._decode_clean(messages)
            if batch is not None:
                return batch
        return self._decode_each(messages)

    def _device_of(self, topic: str) -> str:
        device = self._devices.get(topic)
        if device is None:
            assert self._segment is not None, "called only when the device is a topic segment"
            device = topic.split("/")[self._segment]
            if sys.getsizeof(topic) > CACHED_TOPIC_BYTES:  # bounded by bytes, not only count
                return device
            if len(self._devices) > 100_000:
                self._devices.clear()
            self._devices[topic] = device
        return device

    def _decode_clean(self, messages: Sequence[Message]) -> SampleBatch | None:
        """Column-wise decode of a batch where every payload is good; None otherwise."""
        c = self.config
        loads, n = orjson.loads, len(messages)
        try:
            objs = [loads(m.payload) for m in messages]
            rows = [o[c.values] for o in objs]
            if not c.lenient_values and not _numbers_only(rows):
                return None
            with np.errstate(over="ignore"):  # out-of-range floats become inf: not clean
                values = np.array(rows, np.float32)
            stamps = [o[c.ts] for o in objs] if c.ts else [m.received for m in messages]
            if not set(map(type, stamps)) <= _NUMBERS:
                return None  # strings, booleans: checked one by one
            # finite: orjson reads no NaN or Infinity and no number beyond a double
            ts = np.array(stamps, np.float64)
            seqs = [o.get(c.seq, -1) for o in objs] if c.seq else None
            if seqs is not None and not set(map(type, seqs)) <= {int}:
                return None  # floats, booleans, strings: checked one by one
            seq = np.array(seqs, np.int64) if seqs is not None else np.full(n, -1, np.int64)
            devices = [self._device_of(m.topic) for m in messages]
        except (
            orjson.JSONDecodeError,
            KeyError,
            IndexError,
            TypeError,
            ValueError,
            AttributeError,
            OverflowError,
        ):
            return None
        if values.shape != (n, self.channels) or (  # count_nonzero: cheaper than all()
            np.count_nonzero(np.isfinite(values)) != values.size  # beyond float32: inf
        ):
            return None
        return SampleBatch(devices, ts, seq, values, origin=np.arange(n))

    def _decode_each(self, messages: Sequence[Message]) -> SampleBatch:
        """Message by message: keeps the good ones, counts and explains the bad ones."""
        c = self.config
        devices: list[str] = []
        ts: list[float] = []
        seq: list[int] = []
        rows: list[list[float]] = []
        kept: list[Message] = []
        origin: list[int] = []
        errors: dict[str, int] = {}
        rejects: list[tuple[Message, str, str]] = []

        def reject(msg: Message, kind: str, reason: str) -> None:
            errors[kind] = errors.get(kind, 0) + 1
            rejects.append((msg, kind, reason))

        seg, width, ts_key, seq_key = self._segment, self.channels, c.ts, c.seq
        for index, msg in enumerate(messages):
            try:
                obj = orjson.loads(msg.payload)
            except orjson.JSONDecodeError as e:
                reject(msg, "json", f"not JSON ({e})")
                continue
            if not isinstance(obj, dict):
                reject(msg, "json", "not a JSON object")
                continue
            try:
                device = msg.topic.split("/")[seg] if seg is not None else obj[c.device]
                vals = obj[c.values] if c.fields is None else [obj[f] for f in c.fields]
                t = float(obj[ts_key]) if ts_key else msg.received
                s = _seq(obj.get(seq_key, -1)) if seq_key else -1
            except (KeyError, IndexError) as e:
                reject(msg, "schema", f"missing {e}")
                continue
            except (TypeError, ValueError, OverflowError) as e:
                reject(msg, "schema", f"bad field ({e})")
                continue
            if not isinstance(vals, list) or len(vals) != width:
                reject(msg, "values", f"expected {width} values")
                continue
            if not c.lenient_values and not _numbers_only([vals]):
                reject(msg, "values", "a value is not a JSON number (boolean, string or list)")
                continue
            if not math.isfinite(t):
                reject(msg, "schema", "timestamp is not finite")
                continue
            devices.append(str(device))
            ts.append(t)
            seq.append(s)
            rows.append(vals)
            kept.append(msg)
            origin.append(index)
        values = self._to_array(rows)
        ok = np.isfinite(values).all(axis=1) if values is not None else None
        if ok is None or not ok.all():  # drop the bad rows, keep the rest
            keep = [bool(x) for x in ok] if ok is not None else [self._row_ok(r) for r in rows]
            for i in np.flatnonzero(~np.asarray(keep, bool)):
                reject(kept[i], "values", "non-numeric, NaN or infinite value")
            devices, ts, seq = _kept(devices, keep), _kept(ts, keep), _kept(seq, keep)
            rows, origin = _kept(rows, keep), _kept(origin, keep)
            values = self._to_array(rows)
        assert values is not None, "every row kept converted on its own"
        return SampleBatch(
            devices,
            np.asarray(ts, np.float64),
            np.asarray(seq, np.int64),
            values,
            errors,
            rejects,
            origin=np.asarray(origin, np.int64),
        )

    def _to_array(self, rows: list[list[float]]) -> np.ndarray | None:
        try:
            with np.errstate(over="ignore"):  # out-of-range floats become inf, then rejected
                return np.array(rows, dtype=np.float32).reshape(len(rows), self.channels)
        except (TypeError, ValueError):
            return None

    def _row_ok(self, row: list[float]) -> bool:
        arr = self._to_array([row])
        return arr is not None and bool(np.isfinite(arr).all())


def _kept(column: list[T], keep: list[bool]) -> list[T]:
    return [x for x, k in zip(column, keep) if k]


def _numbers_only(rows: list) -> bool:
    """Whether every item of every row is a JSON number (``bool`` is not: its type differs)."""
    try:
        return set(map(type, itertools.chain.from_iterable(rows))) <= _NUMBERS
    except TypeError:  # a row that is not a list
        return False


def _seq(value: object) -> int:
    """A sequence number: an integer (or an integral float) within int64."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"seq {value!r} is not a number")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"seq {value!r} is not an integer")
    n = int(value)
    if not _INT64[0] <= n <= _INT64[1]:
        raise OverflowError(f"seq {value!r} is beyond int64")
    return n
