"""Camera metadata decoders: DeepStream full and minimal, plain JSON detections."""

from __future__ import annotations

import orjson
import pytest

from agent.decoders.camera import (
    AnalyticsConfig,
    CameraConfig,
    DeepStreamAnalyticsDecoder,
    DeepStreamFullDecoder,
    DeepStreamMinimalDecoder,
    DetectionsJsonDecoder,
)
from agent.records import Message
from tests.support.payloads import T0, analytics, full, iso, minimal


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


def _full_schema(camera: str, ts: float, obj: dict) -> Message:
    """A full-schema message shaped as nvmsgconv writes it (place, sensor, analyticsModule,
    object, event, videoPath), with millisecond ISO timestamps."""
    body = {
        "messageid": "84a3a0ad-7eb8-49a2-9aa7-104ded6764d0",
        "mdsversion": "1.0",
        "@timestamp": iso(ts),
        "place": {"id": "1", "name": "XYZ", "type": "garage", "location": {"lat": 0, "lon": 0}},
        "sensor": {
            "id": camera,
            "type": "Camera",
            "description": "Aisle Camera",
            "location": {"lat": 45.29, "lon": -75.83, "alt": 48.15},
            "coordinate": {"x": 5.2, "y": 10.1, "z": 11.2},
        },
        "analyticsModule": {"id": "XYZ", "description": "", "source": "", "version": "1.0"},
        "object": obj,
        "event": {"id": "ev-1", "type": "moving"},
        "videoPath": "",
    }
    return Message(f"ds/{camera}", orjson.dumps(body), ts)


def _bbox(left, top, right, bottom) -> dict:
    return {"topleftx": left, "toplefty": top, "bottomrightx": right, "bottomrighty": bottom}


def test_full_schema_text_ids_and_any_class_block():
    """Real streams: object.id is text (smart-parking app) and the class block is keyed by
    the model's label (Person from PeopleNet, a custom label); no message is rejected."""
    d = DeepStreamFullDecoder(CameraConfig(type="deepstream_full", classes=["person"]))
    vehicle = {
        "id": "^S10_110_127_110_A1_^O1",
        "speed": 0.0,
        "direction": 0.0,
        "orientation": 0.0,
        "vehicle": {"type": "sedan", "make": "", "model": "", "color": "", "confidence": 0.8},
        "bbox": _bbox(100, 200, 300, 360),
        "location": {"lat": 0, "lon": 0, "alt": 0},
        "coordinate": {"x": 0.0, "y": 0.0, "z": 0.0},
    }
    person = {
        "id": "17",
        "speed": 0.0,
        "direction": 0.0,
        "orientation": 0.0,
        "Person": {},
        "bbox": _bbox(10, 20, 40, 120),
        "location": {"lat": 0, "lon": 0, "alt": 0},
        "coordinate": {"x": 0.0, "y": 0.0, "z": 0.0},
        "confidence": 0.91,
    }
    forklift = {**person, "id": "18446744073709551615", "Person": None, "forklift": {}}
    msgs = [
        _full_schema("cam-7", T0, vehicle),
        _full_schema("cam-7", T0 + 0.033, vehicle),
        _full_schema("cam-7", T0 + 0.033, person),
        _full_schema("cam-7", T0 + 0.066, forklift),
    ]
    b = d.decode_many(msgs)
    assert not b.errors and len(b) == 4
    det = b.detections
    assert det.labels == ["vehicle", "vehicle", "Person", "forklift"]
    t = det.track.tolist()
    assert t[0] == t[1] and t[0] >= 0, "a text id is one stable track"
    assert t[2:] == [17, -1]
    assert det.boxes[0].tolist() == [100, 200, 300, 360]
    assert det.boxes[2].tolist() == [10, 20, 40, 120]
    assert b.values[:, 1].tolist() == [0.0, 0.0, 1.0, 0.0], "Person counts as person"
    assert abs(float(det.confidence[0]) - 0.8) < 1e-6
    assert abs(float(det.confidence[2]) - 0.91) < 1e-6


def test_tracker_ids_wrapped_and_untracked():
    """-1 and 2^64-1 are untracked; an int32-wrapped id is read back as unsigned."""
    d = DeepStreamMinimalDecoder(CameraConfig(type="deepstream_minimal"))
    objs = [
        "-1|1|1|5|5|person",
        "18446744073709551615|1|1|5|5|person",
        "-2147483000|1|1|5|5|person",
        "4294967295|1|1|5|5|person",
    ]
    b = d.decode_many([minimal("c", T0, objs)])
    assert b.detections.track.tolist() == [-1, -1, 2**32 - 2147483000, 4294967295]


def test_minimal_string_frame_id_confidence_and_empty_payloads():
    """Current DeepStream: the frame id is a string, the confidence ends the object after
    its `#` attributes, and a frame without objects may come as an empty payload."""
    d = DeepStreamMinimalDecoder(CameraConfig(type="deepstream_minimal", classes=["person"]))
    body = {
        "version": "4.0",
        "id": "1042",
        "@timestamp": iso(T0),
        "sensorId": "entrance",
        "objects": [
            "3|416.8|216.6|470.3|345.2|Person|#|male|45|black|none|formal|0.92",
            "9|20|30|60|90|Vehicle|#|sedan|Bugatti|M|blue|CA 444|California|0.8",
            "4|1|2|3|4|bag",
        ],
    }
    msgs = [Message("ds/entrance", orjson.dumps(body)), Message("ds/entrance", b"")]
    msgs.append(Message("ds/entrance", b'""'))
    b = d.decode_many(msgs)
    assert not b.errors and len(b) == 1
    assert b.seq.tolist() == [1042] and b.values.tolist() == [[3.0, 1.0]]
    assert [round(c, 3) for c in b.detections.confidence.tolist()] == [0.92, 0.8, -1.0]
    assert b.detections.boxes[0].tolist() == pytest.approx([416.8, 216.6, 470.3, 345.2])


def test_nvdsanalytics_counts_per_camera_line_and_roi():
    """nvdsanalytics frame counts become one sample per camera and ROI / line /
    overcrowding zone; flattened counters of a custom nvmsgconv too."""
    d = DeepStreamAnalyticsDecoder(AnalyticsConfig(type="deepstream_analytics"))
    msgs = [
        analytics("cam1", T0, 7, {"RF": 2, "RS": 0}, {"Entry": 41, "Exit": 39}),
        analytics("cam2", T0 + 1, 8, {"RF": 5}, {"Entry": 3}, oc=True, lc_curr_Entry=1),
    ]
    b = d.decode_many(msgs)
    assert not b.errors
    assert dict(zip(b.devices, b.values[:, 0].tolist())) == {
        "cam1/roi/RF": 2.0,
        "cam1/roi/RS": 0.0,
        "cam1/line/Entry": 41.0,
        "cam1/line/Exit": 39.0,
        "cam1/overcrowding/OC": 0.0,
        "cam2/roi/RF": 5.0,
        "cam2/line/Entry": 3.0,
        "cam2/overcrowding/OC": 1.0,
        "cam2/lc_curr_Entry": 1.0,
    }
    assert b.ts.tolist() == [T0] * 5 + [T0 + 1] * 4 and b.seq.tolist()[:1] == [7]
    bad = Message("ds/cam1", orjson.dumps({"@timestamp": iso(T0), "sensor": {"id": "c"}}))
    worse = analytics("cam1", T0, 1, {"RF": "many"}, {})
    b = d.decode_many([bad, worse, Message("ds/cam1", b"[")])
    assert b.errors == {"schema": 2, "json": 1} and len(b) == 0
