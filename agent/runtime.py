"""The Agent: connections, pipelines, spool and forwarders, scheduler, start and stop.

Built from the sink end (spool, sinks, forwarders, workers, then sources) and stopped from
the source end (stop intake, drain queues, flush summaries, flush the spool, disconnect).
"""

from __future__ import annotations

import os
import time

import orjson
from apscheduler.schedulers.background import BackgroundScheduler

from . import log
from .config import Config
from .delivery import Forwarder
from .intake import Intake
from .mqtt import Connection
from .pipeline import Pipeline, Processor
from .records import Message, Record
from .registry import Registry
from .source import MqttSource
from .spool import Spool


class Agent:
    """Runs every pipeline of a config until :meth:`stop`."""

    def __init__(self, config: Config, registry: Registry | None = None) -> None:
        self.config = config
        self.registry = registry or Registry()
        self.log = log.get(component="agent", agent=config.agent.id)
        self.boot = os.urandom(3).hex()
        self._connections: dict[str, Connection] = {}
        self.spool: Spool | None = None
        self.forwarders: list[Forwarder] = []
        self.pipelines: list[Pipeline] = []
        self.sources: list[MqttSource] = []
        self.scheduler = BackgroundScheduler(daemon=True)
        self.started = False

    # -- sinks' view of the runtime ------------------------------------------------------
    def connection(self, broker: str) -> Connection:
        """The shared upstream connection to ``broker`` (one per broker)."""
        if broker not in self._connections:
            cfg = self.config.brokers[broker]
            cid = cfg.client_id or f"{self.config.agent.id}-{broker}-out"
            will = None
            status = self.config.agent.status_topic
            if status and broker == self._status_broker():
                will = (status, orjson.dumps({"agent": self.config.agent.id, "state": "offline"}))
            self._connections[broker] = Connection(broker, cfg, cid, will=will)
        return self._connections[broker]

    def _status_broker(self) -> str | None:
        a = self.config.agent
        if a.status_broker:
            return a.status_broker
        for p in self.config.pipelines:
            for s in p.sinks:
                if getattr(s, "broker", None):
                    return s.broker
        return None

    # -- lifecycle -----------------------------------------------------------------------
    def build(self) -> None:
        """Create and load everything (models included) without connecting."""
        cfg = self.config
        self.spool = Spool(cfg.spool.path, int(cfg.spool.max_mb * (1 << 20)), cfg.spool.ttl)
        for p in cfg.pipelines:
            sink_names = []
            for j, s in enumerate(p.sinks):
                name = f"{p.name}.{j}"
                sink = self.registry.get("sink", s.type)(s, self)
                self.forwarders.append(
                    Forwarder(name, sink, self.spool, cfg.spool.batch, cfg.spool.replay_rate)
                )
                sink_names.append(name)
            decoder = self.registry.get("decoder", p.decoder.type)(p.decoder)
            handler = self.registry.get("handler", p.handler.type)(p.handler)
            processor = Processor(
                p, decoder, handler, id_prefix=f"{cfg.agent.id}-{self.boot}-{p.name}-"
            )
            processor.load()
            self.log.info(
                "model_loaded",
                pipeline=p.name,
                model=str(getattr(handler, "path", "")),
                sha256=getattr(handler, "sha256", ""),
            )
            intake = Intake(p.source.queue, p.source.overflow)
            source = MqttSource(
                p.source.broker,
                cfg.brokers[p.source.broker],
                p.source,
                intake,
                cfg.brokers[p.source.broker].client_id or f"{cfg.agent.id}-{p.name}-in",
            )
            pipeline = Pipeline(
                processor,
                intake,
                self._emitter(sink_names),
                self._dead_letter(source, p.source.dead_letter, p.name),
            )
            self.pipelines.append(pipeline)
            self.sources.append(source)
        if cfg.agent.status_topic and self._status_broker():
            conn = self.connection(self._status_broker())
            conn.on_connected.append(lambda client, _: self._publish_status(client, "online"))

    def _emitter(self, sinks: list[str]):
        spool = self.spool

        def emit(records: list[Record]) -> None:
            for name in sinks:
                spool.put_many(name, records)

        return emit

    def _dead_letter(self, source: MqttSource, template: str | None, pipeline: str):
        if not template:
            return None
        client = source.conn.client

        def forward(rejected: list[tuple[Message, str, str]]) -> None:
            for msg, kind, reason in rejected:
                if not msg.payload and kind == "device_limit":
                    continue
                topic = template.format(pipeline=pipeline, kind=kind)
                props = None
                if source.conn.v5:
                    from paho.mqtt.packettypes import PacketTypes
                    from paho.mqtt.properties import Properties

                    props = Properties(PacketTypes.PUBLISH)
                    props.UserProperty = [("reason", reason[:200]), ("topic", msg.topic)]
                client.publish(topic, msg.payload, qos=0, properties=props)

        return forward

    def _publish_status(self, client, state: str) -> None:
        body = {
            "agent": self.config.agent.id,
            "state": state,
            "ts": time.time(),
            "boot": self.boot,
            "pipelines": self.status(),
        }
        client.publish(self.config.agent.status_topic, orjson.dumps(body), qos=1, retain=True)

    def status(self) -> dict:
        """Counters of every pipeline (heartbeat and metrics)."""
        out = {}
        for p in self.pipelines:
            c = p.processor.counters
            out[p.processor.name] = {
                "received": p.intake.received,
                "dropped": p.intake.dropped,
                "queued": len(p.intake),
                "decoded": c.decoded,
                "windows": c.windows,
                "anomalies": c.anomalies,
                "errors": dict(c.errors),
                "devices": len(p.processor.index),
            }
        return out

    def start(self) -> None:
        if not self.pipelines:
            self.build()
        for conn in self._connections.values():
            conn.start()
        for f in self.forwarders:
            f.start()
        for p in self.pipelines:
            p.start()
            self.scheduler.add_job(
                p.request_flush,
                "interval",
                seconds=p.processor.config.summary.every,
                id=f"summary-{p.processor.name}",
                max_instances=1,
                coalesce=True,
            )
        if self.config.agent.status_topic and self._status_broker():
            conn = self.connection(self._status_broker())
            self.scheduler.add_job(
                lambda: conn.connected.is_set() and self._publish_status(conn.client, "online"),
                "interval",
                seconds=self.config.agent.heartbeat,
                id="heartbeat",
            )
        self.scheduler.start()
        for s in self.sources:
            s.start()
        self.started = True
        self.log.info("agent_started", pipelines=[p.processor.name for p in self.pipelines])

    def stop(self) -> None:
        """Stop intake, drain, flush summaries, flush the spool, disconnect."""
        if not self.started:
            return
        self.started = False
        for s in self.sources:
            s.stop()
        self.scheduler.shutdown(wait=False)
        for p in self.pipelines:
            p.stop()
        for f in self.forwarders:
            f.stop()
        if self.config.agent.status_topic and self._status_broker():
            conn = self.connection(self._status_broker())
            if conn.connected.is_set():
                self._publish_status(conn.client, "offline")
        for conn in self._connections.values():
            conn.stop()
        left = self.spool.depth() if self.spool else 0
        if self.spool:
            self.spool.close()
        self.log.info("agent_stopped", spooled=left)
