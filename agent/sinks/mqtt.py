"""MQTT sink: publishes records at QoS 1; a row leaves the spool once the broker acknowledged it."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from typing import Literal

import paho.mqtt.client as mqtt
from pydantic import Field

from agent.config import ComponentConfig
from agent.errors import NotConnectedError
from agent.protocols import SinkContext
from agent.records import EVENT, SUMMARY, Record, dumps
from agent.transport.mqtt import Connection, topic_level

# Summaries and stats in flight at once while a backlog drains; a live round goes one at a
# time, so an event published meanwhile waits behind one summary, not paho's queue of all of
# them (figures in docs/performance.md, "third pass").
ROUTINE_IN_FLIGHT = 8
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
        started = time.monotonic()
        deadline = started + self.config.ack_timeout
        backlog = started - self._routine_done < BACKLOG_GAP
        window = ROUTINE_IN_FLIGHT if backlog else 1
        routine = False
        infos: deque[mqtt.MQTTMessageInfo] = deque()
        for r in records:
            if r.kind != EVENT:
                routine = True
                if len(infos) >= window:
                    _wait(self.conn, infos.popleft(), deadline)
            info = self._publish(client, r)
            if info is not None:
                infos.append(info)
        InFlight(self.conn, list(infos), deadline).wait()
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

    def done(self) -> bool:
        """Every record acknowledged; raises NotConnectedError if that cannot happen now."""
        if all(i.is_published() for i in reversed(self.infos)):  # PUBACKs come about in order
            return True
        if not self.conn.connected.is_set() or time.monotonic() > self.deadline:
            raise NotConnectedError(f"no acknowledgement from {self.conn.name}")
        return False

    def wait(self) -> None:
        """Until every record is acknowledged, or NotConnectedError."""
        for info in reversed(self.infos):  # sleep once on the last, then check the rest
            _wait(self.conn, info, self.deadline)


def _wait(conn: Connection, info: mqtt.MQTTMessageInfo, deadline: float) -> None:
    if info.is_published():
        return
    left = deadline - time.monotonic()
    try:
        if left > 0:
            info.wait_for_publish(left)
    except (RuntimeError, ValueError):
        pass
    if not info.is_published():
        raise NotConnectedError(f"no acknowledgement from {conn.name}")
