"""Camera metadata decoders: DeepStream full and minimal, plain JSON detections."""

from __future__ import annotations

import orjson

from agent.decoders.camera import (
    CameraConfig,
    DeepStreamFullDecoder,
    DeepStreamMinimalDecoder,
    DetectionsJsonDecoder,
)
from agent.records import Message
from tests.support.payloads import T0, full, minimal


def test_minimal_frame_with_objects():
    """Pipe-delimited objects become detections; counts per class become the sample."""
    d = DeepStreamMinimalDecoder(CameraConfig(type="deepstream_minimal", classes=["person"]))
    b = d.decode_many([minimal("cam1", T0, ["7|10|20|50|120|Person", "8|60|20|90|90|Car|#|x"])])
    assert b.devices == ["cam1"] and b.ts.tolist() == [T0]
    assert b.values.tolist() == [[2.0, 1.0]]
    assert b.detections.track.tolist() == [7, 8]
    assert b.detections.labels == ["Person", "Car"]
    assert b.detections.boxes[0].tolist() == [10, 20, 50, 120]


def test_minimal_bad_object_dropped_rest_kept():
    """A malformed object string is dropped and counted; the frame keeps the others."""
    d = DeepStreamMinimalDecoder(CameraConfig(type="deepstream_minimal"))
    objs = ["1|10|20|50|120|Person", "2|ten|20|50|120|Person", "3|1|2", 5, "4|1|1|0|0|Bag"]
    b = d.decode_many([minimal("cam1", T0, objs), minimal("cam1", T0 + 1, [])])
    assert b.errors == {"object": 4}
    assert b.values[:, 0].tolist() == [1.0, 0.0]  # the empty frame is still a frame
    assert b.detections.track.tolist() == [1]


def test_full_schema_one_object_per_frame():
    """Each full-schema message is a one-object frame (independent of batching)."""
    d = DeepStreamFullDecoder(CameraConfig(type="deepstream_full"))
    msgs = [full("c2", T0, 1, (0, 0, 10, 10)), full("c2", T0, 2, (5, 5, 20, 30), "vehicle")]
    msgs.append(full("c2", T0 + 0.1, 1, (1, 0, 11, 10)))
    b = d.decode_many(msgs)
    assert b.devices == ["c2"] * 3 and b.values[:, 0].tolist() == [1.0, 1.0, 1.0]
    assert b.detections.labels == ["person", "vehicle", "person"]
    assert b.detections.frame.tolist() == [0, 1, 2]
    assert abs(float(b.detections.confidence[0]) - 0.9) < 1e-6


def test_bad_payloads_counted():
    """Not JSON, no timestamp, no bbox: counted by kind, never raised."""
    d = DeepStreamFullDecoder(CameraConfig(type="deepstream_full"))
    bad = [
        Message("t", b"{"),
        Message("t", orjson.dumps({"sensor": {"id": "c"}, "object": {}})),
        Message(
            "t",
            orjson.dumps(
                {
                    "@timestamp": "2024-01-01T00:00:00Z",
                    "sensor": {"id": "c"},
                    "object": {"id": "1", "bbox": {"topleftx": 1}},
                }
            ),
        ),
    ]
    b = d.decode_many([*bad, full("c", T0, 1, (0, 0, 1, 1))])
    assert b.errors == {"json": 1, "schema": 2} and len(b) == 1


def test_json_detections_and_topic_device():
    """Plain JSON detections; the camera id can come from the topic."""
    d = DetectionsJsonDecoder(CameraConfig(type="detections_json", device="topic[1]"))
    body = {
        "ts": T0,
        "frame": 3,
        "detections": [
            {"id": 4, "label": "person", "bbox": [1, 2, 3, 4], "score": 0.5},
            {"id": 5, "label": "person", "bbox": [1, 2]},
        ],
    }
    b = d.decode_many([Message("cams/door/det", orjson.dumps(body))])
    assert b.devices == ["door"] and b.seq.tolist() == [3]
    assert b.errors == {"object": 1} and b.detections.confidence.tolist() == [0.5]
