"""MQTT sink: publishes records at QoS 1; a row leaves the spool once the broker acknowledged it."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Literal

import paho.mqtt.client as mqtt
from pydantic import Field

from agent.config import ComponentConfig
from agent.errors import NotConnectedError
from agent.protocols import SinkContext
from agent.records import EVENT, SUMMARY, Record, dumps
from agent.transport.mqtt import Connection, Watch, topic_level

# Summaries and stats in flight at most: a round waits once for the older half's
# acknowledgements, then sends that many more (a wake-up of the lane per 6 summaries, not per
# summary); an event published meanwhile waits behind at most 12 summaries in the broker, and
# the round stays below paho's 20 in flight, beyond which paho queues an event behind all of
# it. A live round sends a half at most every ROUTINE_PACE (~50 ms per 100 summaries):
# unpaced bursts raised the event p99 at 1,000 msg/s in 4 of 4 pairs (docs/performance.md,
# "Summaries and lanes"). A backlog goes unpaced.
ROUTINE_IN_FLIGHT = 12
ROUTINE_PACE = 0.003  # s
BACKLOG_GAP = 0.1  # s: a routine round starting sooner after the last one is a backlog


class MqttSinkConfig(ComponentConfig):
    type: Literal["mqtt"]
    broker: str = Field(description="name of a broker in `brokers`")
    events: str = Field("events/{device}", description="event topic ({device}, {pipeline})")
    summaries: str = Field("summary/{device}", description="summary topic template")
    stats: str | None = Field("stats/{pipeline}", description="pipeline stats topic; none: off")
    qos: Literal[1] = Field(1, description="publish QoS (1: a row leaves the spool on PUBACK)")
    ack_timeout: float = Field(10, gt=0, description="seconds to wait for acknowledgements")


class MqttSink:
    """Publishes to a broker connection shared through the runtime."""

    config_model = MqttSinkConfig
    concurrent = True  # write_many may run in two forwarder lanes (events, the rest) at once

    def __init__(self, config: MqttSinkConfig, context: SinkContext) -> None:
        self.config = config
        self.conn = context.connection(config.broker)
        self._topics = {EVENT: config.events, SUMMARY: config.summaries}
        self._routine_done = 0.0  # when the last round with routine records ended

    def start(self) -> None:
        """The shared connection is started by the runtime."""

    def topic(self, r: Record) -> str | None:
        template = self._topics.get(r.kind, self.config.stats)
        if not template:
            return None
        return template.format(device=topic_level(r.device), pipeline=r.pipeline)

    def write_many(self, records: Sequence[Record]) -> None:
        client = self._client()
        sent = time.monotonic()  # when the last half-window went out
        deadline = sent + self.config.ack_timeout
        pace = 0.0 if sent - self._routine_done < BACKLOG_GAP else ROUTINE_PACE
        half = ROUTINE_IN_FLIGHT // 2
        routine = False
        infos: list[mqtt.MQTTMessageInfo] = []
        for r in records:
            if r.kind != EVENT:
                routine = True
                if len(infos) >= ROUTINE_IN_FLIGHT:
                    if pace:
                        time.sleep(max(0.0, sent + pace - time.monotonic()))
                    InFlight(self.conn, infos[:half], deadline).wait()
                    del infos[:half]
                    sent = time.monotonic()
            info = self._publish(client, r)
            if info is not None:
                infos.append(info)
        InFlight(self.conn, infos, deadline).wait()
        if routine:
            self._routine_done = time.monotonic()

    def publish_many(self, records: Sequence[Record]) -> InFlight:
        """Publish without waiting (the event lane): the next events need not wait for the
        acknowledgements of these (figures in docs/performance.md)."""
        client = self._client()
        infos = [i for r in records if (i := self._publish(client, r)) is not None]
        return InFlight(self.conn, infos, time.monotonic() + self.config.ack_timeout)

    def _client(self) -> mqtt.Client:
        if not self.conn.connected.is_set():
            raise NotConnectedError(f"broker {self.conn.name} not connected")
        return self.conn.client

    def _publish(self, client: mqtt.Client, r: Record) -> mqtt.MQTTMessageInfo | None:
        topic = self.topic(r)
        if topic is None:
            return None
        info = client.publish(topic, dumps({**r.payload, "id": r.id}), qos=self.config.qos)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise NotConnectedError(f"publish to {self.conn.name} failed: rc={info.rc}")
        return info

    def close(self) -> None:
        """The shared connection is stopped by the runtime."""


class InFlight:
    """Records published and not yet known to be acknowledged."""

    def __init__(self, conn: Connection, infos: list[mqtt.MQTTMessageInfo], deadline: float):
        self.conn, self.infos, self.deadline = conn, infos, deadline
        self._last: Watch | None = None  # the last record's acknowledgement, once watched

    def notify(self, event: threading.Event) -> float:
        """Set ``event`` once :meth:`done` may say more: the last record acknowledged (PUBACKs
        come in order) or the connection lost. Returns when to look anyway (the deadline)."""
        if self.infos:
            self._last = self.conn.watch(self.infos[-1], event)
        return self.deadline

    def done(self) -> bool:
        """Every record acknowledged; raises NotConnectedError if that cannot happen now."""
        if (self._last is not None and self._last.acked) or all(
            i.is_published() for i in reversed(self.infos)
        ):
            return True
        if not self.conn.connected.is_set() or time.monotonic() > self.deadline:
            raise NotConnectedError(f"no acknowledgement from {self.conn.name}")
        return False

    def wait(self) -> None:
        """Until every record is acknowledged, or NotConnectedError."""
        if all(i.is_published() for i in reversed(self.infos)):
            return
        acked = threading.Event()
        self.notify(acked)
        while not self.done():
            acked.wait(max(0.0, self.deadline - time.monotonic()))
