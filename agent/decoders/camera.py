"""Camera detection metadata: DeepStream "full" and "minimal" schemas and plain JSON.

Each decoder gives one sample per frame, ``values = [objects, objects of classes[0], ...]``
so a windowed handler can score counts, and the frame's objects in
``SampleBatch.detections`` (boxes, tracker ids, labels) for handlers that need them.
The full schema sends one object per message, so each of its messages is a one-object
"frame" (merging messages by timestamp would make samples depend on batching); handlers
that need occupancy count live tracks instead (see the people-flow plugin).

As DeepStream sends them: a full-schema ``object.id`` is a string (``"11"``, or a text id
such as ``^S10_110_127_110_A1_^O1``, mapped to a stable number); a class block is keyed by
the model's label (``person``, ``Person``, a custom label); tracker id ``-1`` and 2^64-1
are untracked, and an int32-wrapped negative id is read back as unsigned. An empty payload
(DeepStream sends one for a frame without objects) is skipped, not an error.

Error kinds: ``json`` (not a JSON object), ``schema`` (no camera id, timestamp or object
list), ``object`` (one malformed object: that object is dropped, the rest of the frame kept).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

import numpy as np
import orjson
from pydantic import Field

from agent.config import ComponentConfig
from agent.records import Detections, Message, SampleBatch

# object blocks of the DeepStream full schema that are not the class block
FULL_NON_CLASS_BLOCKS = frozenset({"bbox", "location", "coordinate", "pose", "embedding"})


class CameraConfig(ComponentConfig):
    type: Literal["deepstream_full", "deepstream_minimal", "detections_json"]
    device: str | None = Field(
        None,
        description="camera id: topic[N], a payload field (dots for nesting), or none: the "
        "schema's own (sensor.id / sensorId / camera)",
    )
    classes: list[str] = Field(
        [], description="labels counted into their own channel (case-insensitive)"
    )


def parse_time(value: Any) -> float:
    """Unix seconds from an ISO 8601 string (``Z`` allowed) or a number."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        t = float(value)
    elif isinstance(value, str):
        t = datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    else:
        raise ValueError(f"not a timestamp: {value!r}")
    if not math.isfinite(t):
        raise ValueError("timestamp is not finite")
    return t


def _field(obj: dict, path: str) -> Any:
    for part in path.split("."):
        obj = obj[part]
    return obj


class _Frames:
    """Accumulates frames and their objects for one :meth:`decode_many` call."""

    def __init__(self, classes: list[str]) -> None:
        self.classes = [c.lower() for c in classes]
        self.devices: list[str] = []
        self.ts: list[float] = []
        self.seq: list[int] = []
        self.frame: list[int] = []
        self.track: list[int] = []
        self.boxes: list[tuple[float, float, float, float]] = []
        self.conf: list[float] = []
        self.labels: list[str] = []
        self.errors: dict[str, int] = {}
        self.rejects: list[tuple[Message, str, str]] = []
        self.origin: list[int] = []  # per frame, the index of its message
        self.at = 0  # the index of the message being decoded

    def reject(self, msg: Message | None, kind: str, reason: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        if msg is not None:
            self.rejects.append((msg, kind, reason))

    def start(self, device: str, ts: float, seq: int) -> None:
        """Open a frame; objects added next belong to it."""
        self.devices.append(device)
        self.ts.append(ts)
        self.seq.append(seq)
        self.origin.append(self.at)

    @staticmethod
    def check(box: tuple[float, float, float, float]) -> None:
        if not all(math.isfinite(v) for v in box) or box[2] < box[0] or box[3] < box[1]:
            raise ValueError(f"bad box {box}")

    def add(self, track: int, box: tuple[float, float, float, float], label: str, conf: float):
        self.check(box)
        self.frame.append(len(self.devices) - 1)
        self.track.append(track)
        self.boxes.append(box)
        self.conf.append(conf)
        self.labels.append(label)

    def batch(self) -> SampleBatch:
        n = len(self.devices)
        frame = np.asarray(self.frame, np.int64)
        values = np.zeros((n, 1 + len(self.classes)), np.float32)
        values[:, 0] = np.bincount(frame, minlength=n)
        for j, c in enumerate(self.classes, start=1):
            mine = [lab.lower() == c for lab in self.labels]
            values[:, j] = np.bincount(frame, weights=np.asarray(mine, float), minlength=n)
        det = Detections(
            frame,
            np.asarray(self.track, np.int64),
            np.asarray(self.boxes, np.float32).reshape(-1, 4),
            np.asarray(self.conf, np.float32),
            self.labels,
        )
        return SampleBatch(
            self.devices,
            np.asarray(self.ts, np.float64),
            np.asarray(self.seq, np.int64),
            values,
            self.errors,
            self.rejects,
            detections=det,
            origin=np.asarray(self.origin, np.int64),
        )


def _track(value: Any) -> int:
    """A tracker id as an int; -1 when untracked ("-1", or 2^64-1 from an unsigned field).

    An int32-wrapped id (a tracker id over 2^31 printed as signed) is read as unsigned; a
    text id (the smart-parking app's ``^S..._^O1``) becomes a stable 62-bit number."""
    if value is None or value == "":
        return -1
    if isinstance(value, bool):
        raise ValueError(f"not a tracker id: {value!r}")
    if isinstance(value, str):
        try:
            t = int(value)
        except ValueError:
            digest = hashlib.blake2b(value.encode(), digest_size=8).digest()
            return int.from_bytes(digest, "big") >> 2
    else:
        t = int(value)
    if t == -1 or t >= (1 << 63):
        return -1
    if -(1 << 31) <= t < 0:
        return t + (1 << 32)
    return t if t >= 0 else -1


def _frame_seq(value: Any) -> int:
    """A frame number from an int or a digit string (current DeepStream); -1 otherwise."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return -1


class CameraId:
    """Where a message's camera id is: ``topic[N]`` or a payload field (dots for nesting)."""

    def __init__(self, spec: str) -> None:
        topic = spec.startswith("topic[") and spec.endswith("]")
        self.segment = int(spec[6:-1]) if topic else None
        self.path = spec

    def __call__(self, msg: Message, obj: dict) -> str:
        if self.segment is not None:
            return msg.topic.split("/")[self.segment]
        value = _field(obj, self.path)
        if not isinstance(value, (str, int)) or value == "":
            raise ValueError("camera id is not a string")
        return str(value)


class _CameraDecoder:
    config_model = CameraConfig
    default_device = "sensorId"

    def __init__(self, config: CameraConfig) -> None:
        self.config = config
        self.channels = 1 + len(config.classes)
        self._camera = CameraId(config.device or self.default_device)

    def decode_many(self, messages: Sequence[Message]) -> SampleBatch:
        out = _Frames(self.config.classes)
        for out.at, msg in enumerate(messages):
            if not msg.payload.strip() or msg.payload.strip() == b'""':
                continue  # a frame without objects, as deepstream-test5 sends it
            try:
                obj = orjson.loads(msg.payload)
            except orjson.JSONDecodeError as e:
                out.reject(msg, "json", f"not JSON ({e})")
                continue
            if not isinstance(obj, dict):
                out.reject(msg, "json", "not a JSON object")
                continue
            try:
                self._frame(msg, obj, out)
            except (KeyError, IndexError, TypeError, ValueError) as e:
                out.reject(msg, "schema", f"bad or missing field ({e!r})")
        return out.batch()

    def _frame(self, msg: Message, obj: dict, out: _Frames) -> None:
        raise NotImplementedError


class DeepStreamFullDecoder(_CameraDecoder):
    """DeepStream full schema: one object per message (``sensor.id``, ``object.bbox``,
    a class block such as ``object.person``, ``@timestamp``)."""

    default_device = "sensor.id"

    def _frame(self, msg: Message, obj: dict, out: _Frames) -> None:
        camera = self._camera(msg, obj)
        ts = parse_time(obj["@timestamp"])
        o = obj["object"]
        b = o["bbox"]
        box = (
            float(b["topleftx"]),
            float(b["toplefty"]),
            float(b["bottomrightx"]),
            float(b["bottomrighty"]),
        )
        label = next(
            (k for k, v in o.items() if isinstance(v, dict) and k not in FULL_NON_CLASS_BLOCKS), ""
        )
        block = o[label] if label else {}
        conf = block.get("confidence", o.get("confidence", -1.0))
        track = _track(o.get("id"))
        conf = float(conf) if isinstance(conf, (int, float)) else -1.0
        out.check(box)
        out.start(camera, ts, -1)
        out.add(track, box, label, conf)


class DeepStreamMinimalDecoder(_CameraDecoder):
    """DeepStream minimal schema: a frame per message, ``objects`` as pipe-delimited
    ``trackingId|left|top|right|bottom|label|#|attributes...|confidence`` strings (the
    confidence is the last field after ``#``); a malformed one is dropped."""

    default_device = "sensorId"

    def _frame(self, msg: Message, obj: dict, out: _Frames) -> None:
        camera = self._camera(msg, obj)
        ts = parse_time(obj["@timestamp"])
        objects = obj.get("objects", [])
        if not isinstance(objects, list):
            raise TypeError("objects is not a list")
        out.start(camera, ts, _frame_seq(obj.get("id")))
        for item in objects:
            try:
                parts = item.split("|")
                box = (float(parts[1]), float(parts[2]), float(parts[3]), float(parts[4]))
                out.add(_track(parts[0]), box, parts[5], _trailing_confidence(parts))
            except (AttributeError, IndexError, ValueError) as e:
                out.reject(None, "object", f"{msg.topic}: bad object {item!r} ({e})")


def _trailing_confidence(parts: list[str]) -> float:
    """The confidence ending a minimal-schema object after its ``#`` attributes; -1 if none."""
    if len(parts) < 8 or parts[6] != "#":
        return -1.0
    try:
        conf = float(parts[-1])
    except ValueError:
        return -1.0
    return conf if 0.0 <= conf <= 1.0 else -1.0


class DetectionsJsonDecoder(_CameraDecoder):
    """Plain JSON: ``{"camera": id, "ts": unix seconds or ISO, "frame": n, "detections":
    [{"id": track, "label": str, "bbox": [left, top, right, bottom], "score": p}]}``;
    a malformed detection is dropped and counted."""

    default_device = "camera"

    def _frame(self, msg: Message, obj: dict, out: _Frames) -> None:
        camera = self._camera(msg, obj)
        ts = parse_time(obj["ts"]) if "ts" in obj else msg.received
        dets = obj["detections"]
        if not isinstance(dets, list):
            raise TypeError("detections is not a list")
        out.start(camera, ts, _frame_seq(obj.get("frame")))
        for d in dets:
            try:
                box = tuple(float(v) for v in d["bbox"])
                if len(box) != 4:
                    raise ValueError("bbox needs 4 numbers")
                score = d.get("score", -1.0)
                out.add(_track(d.get("id")), box, str(d["label"]), float(score))
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                out.reject(None, "object", f"{msg.topic}: bad detection ({e!r})")


class AnalyticsConfig(ComponentConfig):
    type: Literal["deepstream_analytics"]
    device: str | None = Field(
        None,
        description="camera id: topic[N], a payload field (dots for nesting), or none: sensor.id",
    )
    block: str = Field(
        "analyticsModule", description="the payload field holding the nvdsanalytics counts"
    )
    counts: dict[str, str] = Field(
        {"objInROIcnt": "roi", "objLCCumCnt": "line", "ocStatus": "overcrowding"},
        description="maps in the block (name -> count) and the device kind each becomes: "
        "<camera>/<kind>/<name>; any other number or boolean in the block is <camera>/<key>",
    )


class DeepStreamAnalyticsDecoder:
    """nvdsanalytics counts (ROI occupancy, line crossings, overcrowding) from a DeepStream
    message: one single-channel sample per camera and line or ROI, so a windowed handler
    scores each count on its own. See docs/devices.md for the DeepStream config keys
    each count comes from."""

    config_model = AnalyticsConfig
    channels = 1

    def __init__(self, config: AnalyticsConfig) -> None:
        self.config = config
        self._camera = CameraId(config.device or "sensor.id")

    def decode_many(self, messages: Sequence[Message]) -> SampleBatch:
        devices: list[str] = []
        ts: list[float] = []
        seq: list[int] = []
        values: list[float] = []
        errors: dict[str, int] = {}
        rejects: list[tuple[Message, str, str]] = []
        origin: list[int] = []
        for at, msg in enumerate(messages):
            if not msg.payload.strip() or msg.payload.strip() == b'""':
                continue
            try:
                obj = orjson.loads(msg.payload)
                if not isinstance(obj, dict):
                    raise TypeError("not a JSON object")
            except (orjson.JSONDecodeError, TypeError) as e:
                errors["json"] = errors.get("json", 0) + 1
                rejects.append((msg, "json", f"not a JSON object ({e})"))
                continue
            try:
                counts = self._counts(msg, obj)
            except (KeyError, IndexError, TypeError, ValueError) as e:
                errors["schema"] = errors.get("schema", 0) + 1
                rejects.append((msg, "schema", f"bad or missing field ({e!r})"))
                continue
            when, frame = parse_time(obj["@timestamp"]), _frame_seq(obj.get("id"))
            for device, value in counts:
                devices.append(device)
                ts.append(when)
                seq.append(frame)
                values.append(value)
                origin.append(at)
        return SampleBatch(
            devices,
            np.asarray(ts, np.float64),
            np.asarray(seq, np.int64),
            np.asarray(values, np.float32).reshape(-1, 1),
            errors,
            rejects,
            origin=np.asarray(origin, np.int64),
        )

    def _counts(self, msg: Message, obj: dict) -> list[tuple[str, float]]:
        camera = self._camera(msg, obj)
        parse_time(obj["@timestamp"])
        block = _field(obj, self.config.block)
        if not isinstance(block, dict):
            raise TypeError(f"{self.config.block} is not an object")
        out = []
        for key, value in block.items():
            kind = self.config.counts.get(key)
            if kind is not None:
                if not isinstance(value, dict):
                    raise TypeError(f"{self.config.block}.{key} is not an object")
                out += [(f"{camera}/{kind}/{name}", _count(v)) for name, v in value.items()]
            elif isinstance(value, (int, float)):
                out.append((f"{camera}/{key}", _count(value)))
        return out


def _count(value: Any) -> float:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"not a count: {value!r}")
    return float(value)
