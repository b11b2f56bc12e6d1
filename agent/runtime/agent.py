"""The Agent: connections, pipelines, spool and forwarders, scheduler, start and stop.

Built from the sink end (spool, sinks, forwarders, workers, then sources) and stopped from
the source end (stop intake, drain queues, flush summaries, flush the spool, disconnect).
"""

from __future__ import annotations

import gc
import itertools
import os
import threading
import time
from collections.abc import Callable

import orjson
from apscheduler.schedulers.background import BackgroundScheduler

from agent import log
from agent.config import Config, PipelineConfig, UsesBroker
from agent.outbox.delivery import Forwarder
from agent.outbox.spool import Spool
from agent.protocols import SharesConnection, WatchesFile, model_identity
from agent.records import EVENT, Message, Record
from agent.registry import Registry
from agent.runtime.pipeline import Pipeline
from agent.sinks.context import Upstream
from agent.stages import period
from agent.stages.period import PeriodWrite
from agent.stages.processor import Processor, build_processor
from agent.transport.intake import Intake
from agent.transport.mqtt import Connection, client_id
from agent.transport.source import MqttSource


def settle_heap() -> None:
    """Collect start-up garbage once, then keep what is left out of later collections.

    An agent process holds ~50,000 tracked objects once started (modules, pydantic schemas,
    the onnxruntime binding); a full collection scans them all, 45-65 ms on a 2-core
    gateway, and stops every thread meanwhile: the first one came a few seconds into the
    load and held 50 messages back by 44 ms. After ``gc.freeze()`` a collection scans only
    what was allocated since. Called by the processes that run an agent (not by library
    users, whose heap is theirs), after start-up and after a reload: the first unfreeze lets
    that collection free what the reload let go (an old pipeline's windows are in cycles).
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class Agent:
    """Runs every pipeline of a config until :meth:`stop`."""

    def __init__(self, config: Config, registry: Registry | None = None) -> None:
        self.config = config
        self.registry = registry or Registry()
        self.log = log.get(component="agent", agent=config.agent.id)
        self.boot = os.urandom(3).hex()  # "<spool incarnation>.<random>" once built
        self._ids: dict[str, itertools.count] = {}  # per pipeline name, across rebuilds
        self._connections: dict[str, Connection] = {}
        self.spool: Spool | None = None
        self.forwarders: list[Forwarder] = []
        self.pipelines: list[Pipeline] = []
        self.sources: list[MqttSource] = []
        self.scheduler = BackgroundScheduler(daemon=True)
        self.started = False
        self.metrics = None
        self.console = self._new_console()
        self.config_path: str | None = None
        self.fleet = None  # agent.fleet.manager.FleetManager when the config has `fleet:`
        self.reload_lock = threading.RLock()  # one reload at a time: SIGHUP or the fleet
        self._model_problems: dict[str, str | None] = {}
        self._record_ids: dict[str, itertools.count] = {}

    def _new_console(self):
        """The web console's state when the metrics server will serve it, else None."""
        from agent.runtime.metrics import console_refusal

        m = self.config.metrics
        if m is None or console_refusal(m) is not None:
            return None
        from agent.console import Console

        return Console(self, m)

    # -- sinks' view of the runtime ------------------------------------------------------
    def connection(self, broker: str) -> Connection:
        """The shared upstream connection to ``broker`` (one per broker)."""
        if broker not in self._connections:
            cfg = self.config.brokers[broker]
            cid = client_id(cfg.client_id, f"{self.config.agent.id}-{broker}", "out")
            will = None
            status = self.config.agent.status_topic
            if status and broker == self._status_broker():
                will = (status, orjson.dumps({"agent": self.config.agent.id, "state": "offline"}))
            self._connections[broker] = Connection(broker, cfg, cid, will=will)
            if self.started:  # a sink added by a reload
                self._connections[broker].start()
        return self._connections[broker]

    def release_connections(self) -> None:
        """Stop upstream connections no sink uses any more (a reload removed their sinks)."""
        used = {id(f.sink.conn) for f in self.forwarders if isinstance(f.sink, SharesConnection)}
        status = self._status_broker() if self.config.agent.status_topic else None
        for name, conn in list(self._connections.items()):
            if id(conn) not in used and name != status:
                conn.stop()
                del self._connections[name]

    def _status_broker(self) -> str | None:
        a = self.config.agent
        if a.status_broker:
            return a.status_broker
        for p in self.config.pipelines:
            for s in p.sinks:
                if isinstance(s, UsesBroker):
                    return s.broker
        return None

    # -- lifecycle -----------------------------------------------------------------------
    def build(self) -> None:
        """Create and load everything (models included) without connecting."""
        cfg = self.config
        if cfg.metrics is not None:  # bound first: a port in use stops start-up at once
            from agent.runtime.metrics import MetricsServer

            self.metrics = MetricsServer(self, cfg.metrics, self.console)
        self.spool = Spool(
            cfg.spool.path, int(cfg.spool.max_mb * (1 << 20)), cfg.spool.ttl, cfg.spool.sync
        )
        # The spool counts its opens durably: ids of this run cannot repeat an earlier one's
        # while the file lives; the random part covers a spool deleted or moved aside.
        self.boot = f"{self.spool.incarnation}.{os.urandom(2).hex()}"
        for p in cfg.pipelines:
            pipeline, source, forwarders = self.build_pipeline(p)
            self.forwarders += forwarders
            self.pipelines.append(pipeline)
            self.sources.append(source)
        self._recover_periods()
        if cfg.agent.status_topic and self._status_broker():
            conn = self.connection(self._status_broker())
            conn.on_connected.append(lambda client, _: self._publish_status(client, "online"))

    def _recover_periods(self) -> None:
        """Summaries of what the last run counted after its last flush (a crash), spooled
        with the clearing of those totals."""
        left: dict[str, list] = {}
        for pipeline, device, body, updated in self.spool.period_rows():
            left.setdefault(pipeline, []).append((device, body, updated))
        for pl in self.pipelines:
            rows = left.pop(pl.processor.name, None)
            if rows:
                records = period.recover(pl.processor.name, rows, pl.processor._next_id)
                pl.emit(records, None, period.cleared(pl.processor.name))
                self.log.warning(
                    "period_recovered",
                    pipeline=pl.processor.name,
                    devices=len(records),
                    samples=sum(r.payload["count"] for r in records),
                )
        for name, rows in left.items():  # kept on disk: the pipeline may come back
            self.log.error("period_orphaned", pipeline=name, devices=len(rows))

    def make_processor(self, p: PipelineConfig) -> Processor:
        """A pipeline's decoder, handler and processor, its model loaded, checked, warmed up.

        Ids go on from the last processor of the same name (a rebuild restarts no count)."""
        processor = build_processor(
            p,
            self.registry,
            id_prefix=f"{self.config.agent.id}-{self.boot}-{p.name}-",
            ids=self._ids.setdefault(p.name, itertools.count(1)),
        )
        # One id counter per pipeline name for the whole boot: a pipeline restarted by a
        # reload must not number its records from 1 again (ids are unique per message).
        processor._ids = self._record_ids.setdefault(p.name, processor._ids)
        path, sha256 = model_identity(processor.handler)
        self.log.info("model_loaded", pipeline=p.name, model=path, sha256=sha256)
        return processor

    def build_pipeline(self, p: PipelineConfig) -> tuple[Pipeline, MqttSource, list[Forwarder]]:
        """One pipeline with its source and sink forwarders, not started."""
        cfg = self.config
        forwarders = []
        context = Upstream(cfg.agent.id, cfg.brokers, self.connection)
        for j, s in enumerate(p.sinks):
            name = f"{p.name}.{j}"
            sink = self.registry.get("sink", s.type)(s, context)
            forwarders.append(
                Forwarder(name, sink, self.spool, cfg.spool.batch, cfg.spool.replay_rate)
            )
        processor = self.make_processor(p)
        intake = Intake(p.source.queue, p.source.overflow)
        source = MqttSource(
            p.source.broker,
            cfg.brokers[p.source.broker],
            p.source,
            intake,
            client_id(cfg.brokers[p.source.broker].client_id, cfg.agent.id, f"{p.name}-in"),
        )
        pipeline = Pipeline(
            processor,
            intake,
            self._emitter(forwarders, p.name),
            self._dead_letter(source, p.source.dead_letter, p.name),
            self._control(source),
            ack=source.acknowledge if source.deferred else None,
            stats=self.spool_stats,
            paused=lambda: self.spool.failing,
        )
        return pipeline, source, forwarders

    def check_models(self) -> None:
        """Log (once per change) a model file that no longer matches its loaded model."""
        for p in self.pipelines:
            handler = p.processor.handler
            problem = handler.check_file() if isinstance(handler, WatchesFile) else None
            if problem and problem != self._model_problems.get(p.processor.name):
                self.log.error("model_file_changed", pipeline=p.processor.name, error=problem)
            self._model_problems[p.processor.name] = problem

    def spool_stats(self) -> dict:
        """Spool depth and drops, for stats records and the status heartbeat."""
        return {"spool": self.spool.stats()} if self.spool else {}

    def _emitter(self, forwarders: list[Forwarder], pipeline: str):
        spool, console = self.spool, self.console

        def emit(
            records: list[Record], then: Callable[[], None] | None, totals: PeriodWrite | None
        ) -> None:
            """Queue records (and the period's running totals) for the spool's writer;
            ``then`` runs once they are committed. Fresh events go out at once where an
            event lane is caught up."""
            if console is not None and records:
                console.take(pipeline, records)
            if records and forwarders:
                *others, last = forwarders
                for f in others:
                    spool.submit(f.name, records)
                # runs after all (commits are in order); the totals join the same commit
                spool.submit(last.name, records, then, totals)
                if any(r.kind == EVENT for r in records):
                    for f in forwarders:
                        f.kick()
            elif then is not None or totals is not None:
                spool.after(then, totals)

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

    def _control(self, source: MqttSource):
        """Publish what a decoder asks for (e.g. a Sparkplug rebirth) on the source broker."""

        def publish(messages: list[tuple[str, bytes]]) -> None:
            for topic, payload in messages:
                source.conn.client.publish(topic, payload, qos=0)
            self.log.info("control_published", topics=sorted({t for t, _ in messages}))

        return publish

    def status_record(self, state: str) -> dict:
        """The retained status record (docs/records.md)."""
        return {
            "agent": self.config.agent.id,
            "state": state,
            "ts": time.time(),
            "boot": self.boot,
            "pipelines": self.status(),
            **self.spool_stats(),
        }

    def _publish_status(self, client, state: str) -> None:
        body = self.status_record(state)
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
                "events": c.events,
                **p.processor.episode_stats(),
                "errors": dict(c.errors),
                "devices": len(p.processor.index),
                "warming_up": p.processor.warming_up(),
            }
        return out

    def connection_states(self) -> list[tuple[str, str, bool]]:
        """(broker, role, connected) of every MQTT connection: sources and upstream."""
        return [(b, role, conn.connected.is_set()) for b, role, conn in self.connections()]

    def connections(self) -> list[tuple[str, str, Connection]]:
        """(broker, role, connection) of every MQTT connection: sources and upstream."""
        out = [
            (s.conn.name, f"source:{n}", s.conn)
            for n, s in zip([p.processor.name for p in self.pipelines], self.sources)
        ]
        out += [(name, "upstream", c) for name, c in self._connections.items()]
        return out

    def schedule_summaries(self, p: Pipeline) -> None:
        """(Re)schedule ``p``'s summary flush at its period."""
        self.scheduler.add_job(
            p.request_flush,
            "interval",
            seconds=p.processor.config.summary.every,
            id=f"summary-{p.processor.name}",
            max_instances=1,
            coalesce=True,
            replace_existing=True,
        )

    def reload(self, path: str | None = None) -> bool:
        """Re-read the config and apply it pipeline by pipeline; keep it running if invalid."""
        from agent.runtime.reload import reload_from

        with self.reload_lock:
            return reload_from(self, path or self.config_path)

    def start(self) -> None:
        if not self.pipelines:
            self.build()
        for conn in self._connections.values():
            conn.start()
        for f in self.forwarders:
            f.start()
        for p in self.pipelines:
            p.start()
            self.schedule_summaries(p)
        if self.config.agent.status_topic and self._status_broker():
            conn = self.connection(self._status_broker())
            self.scheduler.add_job(
                lambda: conn.connected.is_set() and self._publish_status(conn.client, "online"),
                "interval",
                seconds=self.config.agent.heartbeat,
                id="heartbeat",
            )
        self.scheduler.add_job(
            self.check_models, "interval", seconds=self.config.agent.model_check, id="models"
        )
        if self.console is not None:
            from agent.console import TICK

            self.scheduler.add_job(self.console.tick, "interval", seconds=TICK, id="console")
        self.scheduler.start()
        for s in self.sources:
            s.start()
        self.started = True
        if self.metrics is not None:
            self.metrics.start()
        self.log.info("agent_started", pipelines=[p.processor.name for p in self.pipelines])

    def stop(self) -> None:
        """Stop intake, drain, flush summaries, flush the spool, disconnect."""
        if not self.started:
            return
        self.started = False
        if self.metrics is not None:
            self.metrics.stop()
        for s in self.sources:
            s.pause()  # connected still: the worker acknowledges what it drains
        self.scheduler.shutdown(wait=False)
        for p in self.pipelines:
            p.stop()
        if self.spool:
            self.spool.wait()  # committed, and QoS 1 input acknowledged, before disconnecting
        for s in self.sources:
            s.stop()
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
