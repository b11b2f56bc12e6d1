"""One configured pipeline while it runs: the unit the Agent keeps by name.

A :class:`RunningPipeline` owns its source and intake, its worker (and the worker's
processor), its sink forwarders, its summary job, and what it publishes back on the source
broker (dead letters, decoder control). It is built whole, started from the sink end and
stopped from the source end, and gives the one snapshot of its figures that the status
record, the stats record, the console and ``/metrics`` read.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from apscheduler.schedulers.background import BackgroundScheduler
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent import log
from agent.config import BrokerConfig, PipelineConfig
from agent.outbox import forwarding
from agent.outbox.forwarding import Forwarder
from agent.outbox.spool import Spool
from agent.outbox.ticket import Ticket
from agent.records import Message, Record
from agent.runtime.pipeline import Pipeline
from agent.runtime.redelivery import Redeliveries
from agent.stages.period import PeriodWrite
from agent.stages.processor import Processor
from agent.transport.intake import Intake
from agent.transport.mqtt import Connection
from agent.transport.source import MqttSource

# The snapshot's figures that only one of its two records carries (docs/records.md).
STATUS_ONLY = ("events", "warming_up")
STATS_ONLY = ("seq_gap", "seq_repeat", "redelivered")


class RunningPipeline:
    """A pipeline's parts, started and stopped as one."""

    def __init__(
        self,
        config: PipelineConfig,
        processor: Processor,
        forwarders: list[Forwarder],
        spool: Spool,
        broker: BrokerConfig,
        client_id: str,
        on_records: Callable[[str, list[Record]], None] | None = None,
        redeliveries: Redeliveries | None = None,
        on_failure: Callable[[], None] | None = None,
    ) -> None:
        self.name = config.name
        self.forwarders = forwarders
        self.spool = spool
        self.on_records = on_records  # sees every record going upstream (the console)
        self.log = log.get(pipeline=config.name, component="pipeline")
        self.intake = Intake(config.source.queue, config.source.overflow)
        self.source = MqttSource(
            config.source.broker, broker, config.source, self.intake, client_id
        )
        self._dead_letter_topic = config.source.dead_letter
        self.worker = Pipeline(
            processor,
            self.intake,
            self.emit,
            self.dead_letter if self._dead_letter_topic else None,
            self.control,
            ack=self.source.acknowledge if self.source.deferred else None,
            stats=self.record_stats,
            paused=lambda: spool.failing,
            # committed input recognised when the broker sends it again: persistent QoS 1 only
            redelivery=redeliveries if self.source.deferred else None,
            on_failure=on_failure,
        )

    # -- what it runs --------------------------------------------------------------------
    @property
    def processor(self) -> Processor:
        """The worker's processor now (a reload may have swapped it)."""
        return self.worker.processor

    @property
    def config(self) -> PipelineConfig:
        return self.worker.processor.config

    @property
    def error(self) -> BaseException | None:
        """What ended the worker, if anything did."""
        return self.worker.error

    @property
    def lock(self):
        """Held while the worker changes the processor's state (see :class:`Pipeline`)."""
        return self.worker.lock

    def same_wiring(self, config: PipelineConfig) -> bool:
        """Whether ``config`` keeps this unit's source and sinks (a processor swap will do)."""
        return self.config.source == config.source and self.config.sinks == config.sinks

    def connections(self) -> list[tuple[str, str, Connection]]:
        """(broker, role, connection) of this unit's source."""
        return [(self.source.conn.name, f"source:{self.name}", self.source.conn)]

    # -- lifecycle -----------------------------------------------------------------------
    def start(self, scheduler: BackgroundScheduler) -> None:
        """From the sink end: forwarders, worker, summary job, then the source."""
        for f in self.forwarders:
            f.start()
        self.worker.start()
        self.schedule(scheduler)
        self.source.start()

    def schedule(self, scheduler: BackgroundScheduler) -> None:
        """(Re)schedule the summary flush at the pipeline's period."""
        scheduler.add_job(
            self.worker.request_flush,
            "interval",
            seconds=self.config.summary.every,
            id=f"summary-{self.name}",
            executor="inline",  # sets a flag and wakes the worker: no pool thread
            max_instances=1,
            coalesce=True,
            replace_existing=True,
        )

    def swap(self, processor: Processor, scheduler: BackgroundScheduler) -> bool:
        """Hand the worker a new processor (live reload); returns whether windows were kept."""
        before = self.config.summary
        kept = self.worker.swap(processor)
        if processor.config.summary != before:
            self.schedule(scheduler)
        return kept

    def pause(self) -> None:
        """Take no more input; connected still, so the worker acknowledges what it drains."""
        self.source.pause()

    def stop(self, scheduler: BackgroundScheduler, drain_timeout: float = 2) -> None:
        """Stop this unit alone (a reload): intake, queue, summaries, its forwarders. What
        the forwarders leave stays spooled for the unit that replaces this one."""
        self.pause()
        with contextlib.suppress(Exception):  # the job is gone once the scheduler is
            scheduler.remove_job(f"summary-{self.name}")
        self.worker.stop()
        self.spool.wait()  # its records committed, its input acknowledged
        self.source.stop()
        for f in self.forwarders:
            f.stop(drain_timeout=drain_timeout)

    # -- what it publishes ---------------------------------------------------------------
    def emit(
        self, records: list[Record], ticket: Ticket | None, totals: PeriodWrite | None
    ) -> None:
        """The console sees the records; the forwarding side spools them, with the batch's
        ticket and the period's running totals in the same commit."""
        if self.on_records is not None and records:
            self.on_records(self.name, records)
        forwarding.submit(self.spool, self.forwarders, records, ticket, totals)

    def dead_letter(self, rejected: list[tuple[Message, str, str]]) -> None:
        """Publish rejected payloads on ``source.dead_letter`` (the reason as a v5 property)."""
        template = self._dead_letter_topic
        assert template is not None, "the source calls this only with source.dead_letter set"
        conn = self.source.conn
        for msg, kind, reason in rejected:
            if not msg.payload and kind == "device_limit":
                continue
            topic = template.format(pipeline=self.name, kind=kind)
            props = None
            if conn.v5:
                props = Properties(PacketTypes.PUBLISH)
                props.UserProperty = [("reason", reason[:200]), ("topic", msg.topic)]
            conn.client.publish(topic, msg.payload, qos=0, properties=props)

    def control(self, messages: list[tuple[str, bytes]]) -> None:
        """Publish what a decoder asks for (e.g. a Sparkplug rebirth) on the source broker."""
        for topic, payload in messages:
            self.source.conn.client.publish(topic, payload, qos=0)
        self.log.info("control_published", topics=sorted({t for t, _ in messages}))

    # -- figures -------------------------------------------------------------------------
    def stats(self) -> dict:
        """The pipeline's figures now: the one snapshot behind the status record, the stats
        record, the console and ``/metrics`` (episode figures only in episode mode)."""
        p, intake = self.processor, self.intake
        c = p.counters
        return {
            "received": intake.received,
            "dropped": intake.dropped,
            "queued": len(intake),
            "decoded": c.decoded,
            "windows": c.windows,
            "anomalies": c.anomalies,
            "events": c.events,
            **p.episode_stats(),
            "errors": dict(c.errors),
            "devices": len(p.index),
            "warming_up": p.warming_up(),
            "warmup_deferred": p.warmup_deferred(),
            **p.sequences.stats(),
            "redelivered": self.worker.redelivery.redelivered if self.worker.redelivery else 0,
        }

    def status(self) -> dict:
        """This pipeline's entry in the status record."""
        s = self.stats()
        for key in STATS_ONLY:
            s.pop(key, None)
        return s

    def record_stats(self) -> dict:
        """The snapshot's part of this pipeline's stats record, with the spool's figures."""
        s = self.stats()
        for key in STATUS_ONLY:
            s.pop(key, None)
        return {**s, "spool": self.spool.stats()}
