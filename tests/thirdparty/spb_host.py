"""A Sparkplug B host application written with pysparkplug: decodes what it receives.

Run in pysparkplug's own environment: ``python spb_host.py PORT GROUP``. It subscribes to
``spBv1.0/GROUP/#``, prints ``{"subscribed": true}``, then one JSON line per message as
pysparkplug decodes it (aliases resolved from the births): topic, type, retain flag, seq
and metrics. It exits after the first NCMD, which the test sends as an end marker.
"""

from __future__ import annotations

import json
import sys
import threading

import pysparkplug as spb


def describe(message: spb.Message) -> dict:
    payload = message.payload
    metrics = [
        {"name": m.name, "alias": m.alias, "datatype": m.datatype.name, "value": m.value}
        for m in getattr(payload, "metrics", ())
    ]
    if isinstance(payload, spb.NDeath):
        metrics = [{"name": "bdSeq", "value": payload.bd_seq_metric.value}]
    return {
        "topic": str(message.topic),
        "type": message.topic.message_type.name,
        "retain": message.retain,
        "seq": getattr(payload, "seq", None),
        "metrics": metrics,
    }


def main(port: int, group: str) -> None:
    client = spb.Client(client_id=f"spb-host-{group}-{threading.get_ident()}")
    end = threading.Event()
    lock = threading.Lock()

    def on_message(_client, message: spb.Message) -> None:
        with lock:
            print(json.dumps(describe(message), default=str), flush=True)
        if message.topic.message_type == spb.MessageType.NCMD:
            end.set()

    subscribed = threading.Event()
    client._client.on_subscribe = lambda *_: subscribed.set()  # pysparkplug has no SUBACK hook
    client.subscribe(
        spb.Topic(group_id=group, message_type=spb.MULTI_LEVEL_WILDCARD),
        spb.QoS.AT_LEAST_ONCE,
        on_message,
    )
    client.connect("127.0.0.1", port=port, blocking=False)
    if not subscribed.wait(20):
        raise SystemExit("not subscribed")
    print(json.dumps({"subscribed": True}), flush=True)
    end.wait()
    client.disconnect()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
