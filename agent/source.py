"""The MQTT source: subscribes (again after every reconnect) and only enqueues."""

from __future__ import annotations

import time

import paho.mqtt.client as mqtt

from .config import BrokerConfig, SourceConfig
from .intake import Intake
from .mqtt import Connection
from .records import Message


class MqttSource:
    """Feeds one pipeline's intake from a broker; no decoding in the network thread."""

    def __init__(
        self, name: str, broker: BrokerConfig, config: SourceConfig, intake: Intake, client_id: str
    ) -> None:
        self.config = config
        self.intake = intake
        fast = self._on_publish_batch if config.fast_path else None
        self.conn = Connection(name, broker, client_id, on_publish=fast)
        self.conn.on_connected.append(self._subscribe)
        self.conn.client.on_message = self._on_message
        self.conn.client.on_subscribe = self._on_subscribe

    def _subscribe(self, client: mqtt.Client, session_present: bool) -> None:
        client.subscribe([(t, self.config.qos) for t in self.config.topics])

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        failed = [str(r) for r in reason_codes if r.is_failure]
        if failed:
            self.conn.log.error("subscribe_refused", topics=self.config.topics, reasons=failed)
        else:
            self.conn.log.info("source_subscribed", topics=self.config.topics)

    def _on_message(self, client, userdata, msg) -> None:
        self.intake.put(Message(msg.topic, msg.payload, time.time()))

    def _on_publish_batch(self, msgs: list[Message], acks: list[int]) -> None:
        """Fast path: a chunk of PUBLISHes split from the socket (network thread)."""
        self.intake.put_many(msgs)
        ack = self.conn.client.ack
        for mid in acks:
            ack(mid, 1)

    def start(self) -> None:
        self.conn.start()

    def stop(self) -> None:
        """Stop intake: unsubscribe-free disconnect; queued messages stay for the worker."""
        self.intake.close()
        self.conn.stop()
