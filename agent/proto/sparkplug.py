"""Sparkplug B codec: the namespace, datatypes and metric encoding that both the Sparkplug
decoder (:mod:`agent.decoders.sparkplug`) and sink (:mod:`agent.sinks.sparkplug`) speak.

Topics are ``spBv1.0/<group>/<TYPE>/<edge node>[/<device>]``; payloads are the Eclipse Tahu
protobuf (:mod:`agent.proto.sparkplug_b_pb2`).
"""

from __future__ import annotations

import time

from agent.proto.sparkplug_b_pb2 import Payload

NAMESPACE = "spBv1.0"
REBIRTH = "Node Control/Rebirth"
# Sparkplug B datatypes (the specification's numbering)
INT8, INT16, INT32, INT64 = 1, 2, 3, 4
UINT8, UINT16, UINT32, UINT64 = 5, 6, 7, 8
FLOAT, DOUBLE, BOOLEAN, STRING, DATETIME = 9, 10, 11, 12, 13
_SIGNED_BITS = {INT8: 8, INT16: 16, INT32: 32, INT64: 64}


def signed(v: int, bits: int) -> int:
    """A two's-complement ``bits``-wide integer from its unsigned field: stored at its own
    width (253 for Int8 -3), sign-extended to 32 bits (4294967293) or to 64."""
    if v >= 1 << 63:
        return v - (1 << 64)
    if bits <= 32 and v >= 1 << 31:
        return v - (1 << 32)
    if 1 << (bits - 1) <= v < 1 << bits:
        return v - (1 << bits)
    return v


def metric_value(m: Payload.Metric, datatype: int = 0) -> float | None:
    """A metric's value as a float (booleans 0/1); None for null, text or bytes.
    ``datatype`` is used when the metric has none (data after a birth)."""
    if m.is_null:
        return None
    kind = m.WhichOneof("value")
    if kind in ("int_value", "long_value"):
        v = getattr(m, kind)
        bits = _SIGNED_BITS.get(m.datatype or datatype)
        return float(signed(v, bits) if bits else v)
    if kind in ("float_value", "double_value"):
        return float(getattr(m, kind))
    if kind == "boolean_value":
        return 1.0 if m.boolean_value else 0.0
    return None


def rebirth_request(group: str, node: str, now: float | None = None) -> tuple[str, bytes]:
    """The ``NCMD`` topic and payload asking edge node ``node`` to rebirth."""
    ms = int((time.time() if now is None else now) * 1000)
    p = Payload(timestamp=ms)
    p.metrics.add(name=REBIRTH, timestamp=ms, datatype=BOOLEAN, boolean_value=True)
    return f"{NAMESPACE}/{group}/NCMD/{node}", p.SerializeToString()
