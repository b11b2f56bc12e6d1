"""Camera detection metadata: DeepStream "full" and "minimal" schemas and plain JSON.

Each decoder gives one sample per frame, ``values = [objects, objects of classes[0], ...]``
so a windowed handler can score counts, and the frame's objects in
``SampleBatch.detections`` (boxes, tracker ids, labels) for handlers that need them.
The full schema sends one object per message, so each of its messages is a one-object
"frame" (merging messages by timestamp would make samples depend on batching); handlers
that need occupancy count live tracks instead (see the people-flow plugin).

Error kinds: ``json`` (not a JSON object), ``schema`` (no camera id, timestamp or object
list), ``object`` (one malformed object: that object is dropped, the rest of the frame kept).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

import numpy as np
import orjson
from pydantic import Field

from ..config import ComponentConfig
from ..records import Detections, Message, SampleBatch

# class-specific blocks of the DeepStream full schema, by the key that names them
FULL_CLASS_BLOCKS = ("person", "vehicle", "face", "bicycle", "bag", "roadsign")


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

    def reject(self, msg: Message | None, kind: str, reason: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        if msg is not None:
            self.rejects.append((msg, kind, reason))

    def start(self, device: str, ts: float, seq: int) -> None:
        """Open a frame; objects added next belong to it."""
        self.devices.append(device)
        self.ts.append(ts)
        self.seq.append(seq)

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
        )


def _track(value: Any) -> int:
    """A tracker id as an int; -1 when untracked (DeepStream sends "-1" or a large id)."""
    if value is None or value == "":
        return -1
    t = int(value)
    return t if t < (1 << 63) else -1


class _CameraDecoder:
    config_model = CameraConfig
    default_device = "sensorId"

    def __init__(self, config: CameraConfig) -> None:
        self.config = config
        self.channels = 1 + len(config.classes)
        dev = config.device or self.default_device
        self._segment = int(dev[6:-1]) if dev.startswith("topic[") and dev.endswith("]") else None
        self._device = dev

    def _camera(self, msg: Message, obj: dict) -> str:
        if self._segment is not None:
            return msg.topic.split("/")[self._segment]
        value = _field(obj, self._device)
        if not isinstance(value, (str, int)) or value == "":
            raise ValueError("camera id is not a string")
        return str(value)

    def decode_many(self, messages: Sequence[Message]) -> SampleBatch:
        out = _Frames(self.config.classes)
        for msg in messages:
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
        label = next((k for k in FULL_CLASS_BLOCKS if isinstance(o.get(k), dict)), "")
        block = o.get(label, {}) if label else {}
        conf = block.get("confidence", o.get("confidence", -1.0))
        track = _track(o.get("id"))
        conf = float(conf) if isinstance(conf, (int, float)) else -1.0
        out.check(box)
        out.start(camera, ts, -1)
        out.add(track, box, label, conf)


class DeepStreamMinimalDecoder(_CameraDecoder):
    """DeepStream minimal schema: a frame per message, ``objects`` as pipe-delimited
    ``trackingId|left|top|right|bottom|label|...`` strings; a malformed one is dropped."""

    default_device = "sensorId"

    def _frame(self, msg: Message, obj: dict, out: _Frames) -> None:
        camera = self._camera(msg, obj)
        ts = parse_time(obj["@timestamp"])
        objects = obj.get("objects", [])
        if not isinstance(objects, list):
            raise TypeError("objects is not a list")
        frame_id = obj.get("id", -1)
        out.start(camera, ts, int(frame_id) if isinstance(frame_id, int) else -1)
        for item in objects:
            try:
                parts = item.split("|")
                box = (float(parts[1]), float(parts[2]), float(parts[3]), float(parts[4]))
                out.add(_track(parts[0]), box, parts[5], -1.0)
            except (AttributeError, IndexError, ValueError) as e:
                out.reject(None, "object", f"{msg.topic}: bad object {item!r} ({e})")


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
        frame_id = obj.get("frame", -1)
        out.start(camera, ts, int(frame_id) if isinstance(frame_id, int) else -1)
        for d in dets:
            try:
                box = tuple(float(v) for v in d["bbox"])
                if len(box) != 4:
                    raise ValueError("bbox needs 4 numbers")
                score = d.get("score", -1.0)
                out.add(_track(d.get("id")), box, str(d["label"]), float(score))
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                out.reject(None, "object", f"{msg.topic}: bad detection ({e!r})")
