"""A stock paho-mqtt subscriber that only counts W1 telemetry: the floor of per-message cost.

Prints ``{"ready": true}`` after its SUBACK, answers ``count`` on stdin with ``{"count": n}``
and stops at EOF.

    python -m bench.paho_counter --port 1883 --qos 0
"""

from __future__ import annotations

import argparse
import os
import threading
from typing import Any

from . import TELEMETRY, connect, mqtt_client
from .proc import reply, serve


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--qos", type=int, choices=(0, 1), default=0)
    args = p.parse_args(argv)

    count = [0]
    subscribed = threading.Event()
    client = mqtt_client(f"w1-counter-{os.getpid()}")

    def on_message(*_: Any) -> None:
        count[0] += 1

    client.on_message = on_message
    client.on_subscribe = lambda *_: subscribed.set()
    connect(client, args.port)
    client.subscribe(TELEMETRY, args.qos)
    client.loop_start()
    if not subscribed.wait(10):
        return 1
    reply({"ready": True})
    serve({"count": lambda: {"count": count[0]}})
    client.disconnect()
    client.loop_stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
