"""Real payloads for tests: Sparkplug B (encoded with protobuf), DeepStream, detections."""

from __future__ import annotations

import time

import orjson

from agent.proto.sparkplug import BOOLEAN, DOUBLE, INT32, INT64
from agent.proto.sparkplug_b_pb2 import Payload
from agent.records import Message

# the last full hour: recent (the pipeline rejects samples a day off) and hour-aligned
T0 = float(int(time.time()) // 3600 * 3600)


def spb(topic: str, seq: int | None, metrics: list[dict], ts: float = T0) -> Message:
    """A Sparkplug B message; metrics are Metric fields (name/alias/datatype/value)."""
    p = Payload(timestamp=int(ts * 1000))
    if seq is not None:
        p.seq = seq
    for m in metrics:
        p.metrics.add(**m)
    return Message(topic, p.SerializeToString(), ts)


def births(group="g1", node="n1", device="pump1", seq0=0, bd=0) -> list[Message]:
    base = f"spBv1.0/{group}"
    return [
        spb(
            f"{base}/NBIRTH/{node}",
            seq0,
            [
                {"name": "bdSeq", "datatype": INT64, "long_value": bd},
                {"name": "Node Control/Rebirth", "datatype": BOOLEAN, "boolean_value": False},
            ],
        ),
        spb(
            f"{base}/DBIRTH/{node}/{device}",
            (seq0 + 1) % 256,
            [
                {"name": "Pressure", "alias": 1, "datatype": DOUBLE, "double_value": 1.0},
                {"name": "Temp", "alias": 2, "datatype": INT32, "int_value": (-5) & 0xFFFFFFFF},
                {"name": "Running", "alias": 3, "datatype": BOOLEAN, "boolean_value": True},
            ],
        ),
    ]


def ddata(seq: int, pressure: float, group="g1", node="n1", device="pump1", ts=T0) -> Message:
    return spb(
        f"spBv1.0/{group}/DDATA/{node}/{device}",
        seq,
        [{"alias": 1, "datatype": DOUBLE, "double_value": pressure}],
        ts,
    )


def minimal(camera: str, ts: float, objects: list[str], frame: int = 0) -> Message:
    from datetime import datetime, timezone

    iso = datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")
    body = {"version": "4.0", "id": frame, "@timestamp": iso, "sensorId": camera}
    return Message(f"ds/{camera}", orjson.dumps({**body, "objects": objects}), ts)


def full(camera: str, ts: float, track: int, box, label="person", conf=0.9) -> Message:
    from datetime import datetime, timezone

    iso = datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")
    left, top, right, bottom = box
    obj = {
        "id": str(track),
        "speed": 0.0,
        label: {"confidence": conf},
        "bbox": {"topleftx": left, "toplefty": top, "bottomrightx": right, "bottomrighty": bottom},
    }
    body = {"messageid": "x", "mdsversion": "1.0", "@timestamp": iso, "sensor": {"id": camera}}
    return Message(f"ds/{camera}", orjson.dumps({**body, "object": obj}), ts)


def iso(ts: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds")[:-6] + "Z"


def analytics(
    camera: str, ts: float, frame: int, roi: dict, lines: dict, oc: bool = False, **flat
) -> Message:
    """A DeepStream full-schema message with nvdsanalytics frame counts in
    ``analyticsModule`` (maps named after NvDsAnalyticsFrameMeta's fields), plus any
    flattened counters a custom nvmsgconv adds."""
    body = {
        "messageid": f"m-{frame}",
        "mdsversion": "1.0",
        "@timestamp": iso(ts),
        "id": str(frame),
        "sensor": {"id": camera, "type": "Camera", "description": "", "location": {}},
        "analyticsModule": {
            "id": "",
            "description": "nvdsanalytics",
            "source": "",
            "version": "1.0",
            "objInROIcnt": roi,
            "objLCCumCnt": lines,
            "ocStatus": {"OC": oc},
            **flat,
        },
    }
    return Message(f"ds/{camera}", orjson.dumps(body), ts)
