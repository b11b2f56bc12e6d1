"""paho's client with a network thread that sleeps longer between its own looks."""

from __future__ import annotations

import paho.mqtt.client as mqtt

# paho's network thread wakes from select() every second to look at its keepalive; a
# quarter of the keepalive is soon enough (a PINGREQ goes out by 1.25 x keepalive, before
# the broker's 1.5 x limit) and an idle gateway wakes less (docs/performance.md).
KEEPALIVE_LOOKS = 4


class Client(mqtt.Client):
    """``loop_start``'s thread waits ``keepalive / KEEPALIVE_LOOKS`` in select() (paho: 1 s).

    Traffic, a publish from another thread (paho's socket pair) and ``disconnect`` still
    wake it at once. paho has no public setting for it: this overrides
    ``Client._thread_main``, the thread's body; if a paho release renames it, the thread
    keeps paho's 1 s.
    """

    def _thread_main(self) -> None:
        try:
            self.loop_forever(
                timeout=max(1.0, self.keepalive / KEEPALIVE_LOOKS), retry_first_connection=True
            )
        finally:
            self._thread = None
