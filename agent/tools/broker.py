"""An embedded MQTT 3.1.1 broker (amqtt) on a loopback port, run in its own thread.

For the demo and for trying the agent on a machine without mosquitto; a gateway runs a real
broker. amqtt speaks MQTT 3.1.1 only, so clients of it use ``protocol: "3.1.1"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class EmbeddedBroker:
    """amqtt in a daemon thread with its own event loop; ``start`` returns once it listens."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self._loop = asyncio.new_event_loop()
        self._broker = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="amqtt-broker", daemon=True)

    def _run(self) -> None:
        from amqtt.broker import Broker

        asyncio.set_event_loop(self._loop)

        async def boot() -> None:
            broker = self._broker = Broker(
                {
                    "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
                    "plugins": {
                        "amqtt.plugins.authentication.AnonymousAuthPlugin": {
                            "allow_anonymous": True
                        }
                    },
                }
            )
            await broker.start()

        try:
            self._loop.run_until_complete(boot())
        except BaseException as e:  # reported by start()
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()

    def start(self, timeout: float = 15) -> EmbeddedBroker:
        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
        self._thread.start()
        if not self._ready.wait(timeout) or self._error:
            raise RuntimeError(f"embedded broker did not start: {self._error}")
        return self

    def stop(self, timeout: float = 10) -> None:
        if self._broker is not None and self._loop.is_running():
            fut = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop)
            with contextlib.suppress(Exception):  # best effort: the process is ending anyway
                fut.result(timeout)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
