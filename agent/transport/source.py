"""The MQTT source: subscribes (again after every reconnect) and only enqueues."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as mqtt

from agent.config import BrokerConfig, SourceConfig
from agent.records import Message
from agent.transport.intake import Intake
from agent.transport.mqtt import Connection


class MqttSource:
    """Feeds one pipeline's intake from a broker; no decoding in the network thread.

    With QoS 1 and a persistent session (``clean_start: false``) a message is acknowledged
    to the broker only after the worker processed it (its sample counted, its events in
    the spool): the worker calls :meth:`acknowledge`. Until then the broker keeps it in
    the session and redelivers it after a crash, so a SIGKILL loses nothing accepted.
    Such a source's full intake blocks (``overflow`` is ``block`` for it): the network
    thread stops reading and the broker holds the backlog.
    """

    def __init__(
        self, name: str, broker: BrokerConfig, config: SourceConfig, intake: Intake, client_id: str
    ) -> None:
        self.config = config
        self.intake = intake
        fast = self._on_publish_batch if config.fast_path else None
        self.conn = Connection(name, broker, client_id, on_publish=fast, budget=config.max_delay)
        self.subscribed = threading.Event()  # the broker granted the subscriptions (SUBACK)
        self.conn.on_connected.append(self._subscribe)
        self.conn.client.on_message = self._on_message
        self.conn.client.on_subscribe = self._on_subscribe
        self.deferred = config.qos == 1 and not broker.clean_start
        if self.deferred:
            self.conn.client.manual_ack_set(True)
            # A full intake pushes back whatever the configured policy: dropping would
            # mean acknowledging what was never processed, and the broker would forget it.
            intake.policy = "block"
        self.paused = False
        self.error: str | None = None  # the last subscribe failed: the agent is not ready

    def _subscribe(self, client: mqtt.Client, session_present: bool) -> None:
        self.subscribed.clear()
        try:
            client.subscribe([(t, self.config.qos) for t in self.config.topics])
        except Exception as e:  # in paho's network thread: it would end the thread
            self.error = f"{type(e).__name__}: {e}"
            self.conn.log.error("subscribe_failed", topics=self.config.topics, error=self.error)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        failed = [str(r) for r in reason_codes if r.is_failure]
        if failed:
            self.error = f"subscription refused: {', '.join(failed)}"
            self.conn.log.error("subscribe_refused", topics=self.config.topics, reasons=failed)
        else:
            self.error = None
            self.conn.log.info("source_subscribed", topics=self.config.topics)
            self.subscribed.set()

    def _on_message(self, client, userdata, msg) -> None:
        if self.paused:  # not acknowledged: the broker redelivers it to the next session
            return
        token = (self.conn.connects, (msg.mid,)) if self.deferred and msg.qos == 1 else None
        mid = msg.mid if msg.qos == 1 else -1
        self.intake.put(Message(msg.topic, msg.payload, time.time(), token, mid, bool(msg.dup)))

    def _on_publish_batch(self, msgs: list[Message], acks: list[int], waited: bool) -> None:
        """Fast path: a chunk of PUBLISHes split from the socket (network thread); a chunk
        the reader ``waited`` the budget for is due at once."""
        if self.paused:
            return
        if self.deferred:  # the chunk's last message carries its acks: FIFO does the rest
            if acks:
                msgs[-1].ack = (self._connection_number(), tuple(acks))
            self.intake.put_many(msgs, due=waited)
            return
        self.intake.put_many(msgs, due=waited)
        ack = self.conn.client.ack
        for mid in acks:
            ack(mid, 1)

    def _connection_number(self) -> int:
        """The connection PUBLISHes split from the socket now came on (network thread).

        A resumed session's redelivered messages can share a socket read with the CONNACK
        and be split before paho handles it: they belong to the connection about to be
        counted. Numbered with the last one, they were never acknowledged and came back
        at every later reconnect or pipeline restart.
        """
        return self.conn.connects + (0 if self.conn.connected.is_set() else 1)

    def acknowledge(self, msgs: list[Message]) -> None:
        """Send the PUBACKs of processed messages (worker thread).

        Packet ids belong to one connection: after a reconnect the broker redelivers what
        was not acknowledged, so tokens of an earlier connection are skipped.
        """
        client, current = self.conn.client, self.conn.connects
        for m in msgs:
            if m.ack is not None and m.ack[0] == current:
                for mid in m.ack[1]:
                    client.ack(mid, 1)

    def start(self) -> None:
        self.conn.start()

    def pause(self) -> None:
        """Stop taking messages; stay connected so the worker can still acknowledge."""
        self.paused = True
        self.intake.close()

    def stop(self) -> None:
        """Stop intake and disconnect; queued messages stay for the worker.

        With deferred acknowledgements the broker must have read the last PUBACKs before
        the connection closes, or a successor with the same client id gets those messages
        again (:meth:`Connection.flush`).
        """
        self.pause()
        if self.deferred:
            self.conn.flush()
        self.conn.stop()
