"""A Sparkplug B edge node written with pysparkplug, as a third party would send.

Run in pysparkplug's own environment: ``python spb_edge_node.py PORT GROUP``. It connects
with an NDEATH will, publishes NBIRTH and a DBIRTH (names, aliases, datatypes), then DDATA
with aliases only and no datatypes (pysparkplug's default for data, as the specification
recommends), negative Int8/Int16/Int32/Int64 among them, and skips two sequence numbers
once. Each DDATA's values go to stdout as a JSON line ``{"sent": [...]}``. A line on stdin
makes it send a DDEATH and print ``{"done": true}``; it then waits to be killed (the
broker publishes its will).
"""

from __future__ import annotations

import json
import sys
import threading

import pysparkplug as spb

NODE, DEVICE = "node1", "pump1"
METRICS = [  # name, datatype, value of DDATA k
    ("i8", spb.DataType.INT8, lambda k: -(k + 1)),
    ("i16", spb.DataType.INT16, lambda k: -300 * (k + 1)),
    ("i32", spb.DataType.INT32, lambda k: -70000 * (k + 1)),
    ("i64", spb.DataType.INT64, lambda k: -(2**33) * (k + 1)),
    ("u8", spb.DataType.UINT8, lambda k: 200 + k),
    ("d", spb.DataType.DOUBLE, lambda k: -1.5 * (k + 1)),
    ("f", spb.DataType.FLOAT, lambda k: 0.25 * k),
    ("b", spb.DataType.BOOLEAN, lambda k: k % 2 == 0),
]
SAMPLES, GAP_AT = 24, 12


def topic(kind: spb.MessageType, group: str, device: str | None = None) -> spb.Topic:
    return spb.Topic(message_type=kind, group_id=group, edge_node_id=NODE, device_id=device)


def main(port: int, group: str) -> None:
    now = spb.get_current_timestamp
    client = spb.Client(client_id=f"spb-node-{group}")
    bd_seq = spb.Metric(timestamp=now(), name="bdSeq", datatype=spb.DataType.INT64, value=0)
    will = spb.NDeath(timestamp=now(), bd_seq_metric=bd_seq)
    client.set_will(
        spb.Message(topic(spb.MessageType.NDEATH, group), will, spb.QoS.AT_MOST_ONCE, False)
    )
    connected = threading.Event()
    client.connect("127.0.0.1", port=port, blocking=False, callback=lambda _: connected.set())
    if not connected.wait(20):
        raise SystemExit("not connected")

    def send(kind, payload, device=None) -> None:
        message = spb.Message(topic(kind, group, device), payload, spb.QoS.AT_MOST_ONCE, False)
        client.publish(
            message, include_dtypes=kind in (spb.MessageType.NBIRTH, spb.MessageType.DBIRTH)
        )

    seq = 0
    rebirth = spb.Metric(now(), "Node Control/Rebirth", spb.DataType.BOOLEAN, value=False)
    send(spb.MessageType.NBIRTH, spb.NBirth(now(), seq, (bd_seq, rebirth)))
    seq += 1
    born = tuple(
        spb.Metric(now(), name, datatype, value=make(0), alias=i + 1)
        for i, (name, datatype, make) in enumerate(METRICS)
    )
    send(spb.MessageType.DBIRTH, spb.DBirth(now(), seq, born), DEVICE)
    for k in range(SAMPLES):
        seq += 3 if k == GAP_AT else 1  # two messages "lost"
        values = [make(k) for _, _, make in METRICS]
        data = tuple(
            spb.Metric(now(), None, datatype, value=v, alias=i + 1)
            for i, ((_, datatype, _), v) in enumerate(zip(METRICS, values))
        )
        send(spb.MessageType.DDATA, spb.DData(now(), seq % 256, data), DEVICE)
        print(json.dumps({"sent": values, "seq": seq % 256}), flush=True)
    sys.stdin.readline()
    seq += 1
    send(spb.MessageType.DDEATH, spb.DDeath(now(), seq % 256), DEVICE)
    print(json.dumps({"done": True}), flush=True)
    sys.stdin.read()  # until killed: the broker then publishes the will


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
