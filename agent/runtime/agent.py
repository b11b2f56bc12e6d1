"""The Agent: connections, spool, scheduler and its running pipelines, kept by name.

Built from the sink end (spool, then each pipeline's sinks, forwarders, worker and source)
and stopped from the source end (stop intake, drain queues, flush summaries, flush the
spool, disconnect). A reload is the Agent diffing its pipelines against the new config.
"""

from __future__ import annotations

import gc
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import cast

import orjson
from apscheduler.executors.debug import DebugExecutor
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from agent import log
from agent.config import Config, PipelineConfig, UsesBroker, load_config
from agent.console import TICK, Console
from agent.errors import AgentError, ConfigError
from agent.outbox.forwarding import Forwarder
from agent.outbox.spool import Spool
from agent.protocols import SharesConnection, Sink, WatchesFile, model_identity
from agent.registry import Registry
from agent.runtime.metrics import MetricsServer, console_refusal
from agent.runtime.redelivery import Redeliveries
from agent.runtime.reload import (
    ReloadReport,
    check_brokers,
    kept_sections,
    model_changed,
    restart_sections,
)
from agent.runtime.unit import RunningPipeline
from agent.runtime.view import ConfigSource
from agent.sinks.context import Upstream
from agent.stages import period
from agent.stages.processor import Processor, build_processor
from agent.transport.mqtt import Connection, client_id


def settle_heap() -> None:
    """Collect start-up garbage once, then keep what is left out of later collections.

    A full collection over the start-up heap stops every thread for tens of milliseconds
    (docs/performance.md); after ``gc.freeze()`` one scans only what was allocated since.
    Called by the processes that run an agent (not by library users, whose heap is theirs),
    after start-up and after a reload: the first unfreeze lets that collection free what
    the reload let go (an old pipeline's windows are in cycles).
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class Agent:
    """Runs every pipeline of a config until :meth:`stop`."""

    def __init__(
        self,
        config: Config,
        registry: Registry | None = None,
        on_failure: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.on_failure = on_failure  # told when a pipeline's worker ends on an error
        self.registry = registry or Registry()
        self.log = log.get(component="agent", agent=config.agent.id)
        self.boot = os.urandom(3).hex()  # "<spool incarnation>.<random>" once built
        self._ids: dict[str, itertools.count] = {}  # per pipeline name, across rebuilds
        self._connections: dict[str, Connection] = {}
        self.spool: Spool | None = None
        # Replaced, never changed in place (see _set_units); in config order.
        self.units: dict[str, RunningPipeline] = {}
        # "inline" runs a job in the scheduler's own thread: for jobs that only raise a flag
        # (a flush request), a wake-up of a pool thread each time is the whole cost
        self.scheduler = BackgroundScheduler(
            daemon=True, executors={"default": ThreadPoolExecutor(), "inline": DebugExecutor()}
        )
        self.started = False
        self.metrics: MetricsServer | None = None
        self.console = self._new_console()
        self.config_path: str | None = None
        # agent.fleet.manager.FleetManager when the config has `fleet:`
        self.fleet: ConfigSource | None = None
        self.reload_lock = threading.RLock()  # one reload at a time: SIGHUP or the fleet
        self._model_problems: dict[str, str | None] = {}
        self._record_ids: dict[str, Iterator[int]] = {}
        self._inputs: dict[str, Redeliveries] = {}  # per pipeline name (runtime/redelivery.py)

    def _new_console(self) -> Console | None:
        """The web console's state when the metrics server will serve it, else None."""
        m = self.config.metrics
        if m is None or console_refusal(m) is not None:
            return None
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
        forwarders = [f for unit in self.units.values() for f in unit.forwarders]
        used = {id(f.sink.conn) for f in forwarders if isinstance(f.sink, SharesConnection)}
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
            self.metrics = MetricsServer(self, cfg.metrics, self.console)
        self.spool = spool = Spool(
            cfg.spool.path, int(cfg.spool.max_mb * (1 << 20)), cfg.spool.ttl, cfg.spool.sync
        )
        # The spool counts its opens durably: ids of this run cannot repeat an earlier one's
        # while the file lives; the random part covers a spool deleted or moved aside.
        self.boot = f"{spool.incarnation}.{os.urandom(2).hex()}"
        self._set_units({p.name: self.build_unit(p) for p in cfg.pipelines})
        self._recover_periods()
        if cfg.agent.status_topic and (status := self._status_broker()):
            conn = self.connection(status)
            conn.on_connected.append(lambda client, _: self._publish_status(client, "online"))

    def opened_spool(self) -> Spool:
        """The spool, which :meth:`build` opens before anything else uses it."""
        if self.spool is None:
            raise RuntimeError("the agent is not built yet: it has no spool")
        return self.spool

    def _recover_periods(self) -> None:
        """Summaries of what the last run counted after its last flush (a crash), spooled
        with the clearing of those totals."""
        left: dict[str, list] = {}
        for pipeline, device, body, updated in self.opened_spool().period_rows():
            left.setdefault(pipeline, []).append((device, body, updated))
        for name, unit in self.units.items():
            rows = left.pop(name, None)
            if rows:
                records = period.recover(name, rows, unit.processor._next_id)
                unit.emit(records, None, period.cleared(name))
                self.log.warning(
                    "period_recovered",
                    pipeline=name,
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

    def build_unit(self, p: PipelineConfig) -> RunningPipeline:
        """One pipeline with its source and sink forwarders, not started."""
        cfg = self.config
        spool = self.opened_spool()
        forwarders = []
        context = Upstream(cfg.agent.id, cfg.brokers, self.connection)
        for j, s in enumerate(p.sinks):
            name = f"{p.name}.{j}"
            # The registry checks a class's config_model; agent.testing.conformance its Protocol.
            sink = cast(Sink, self.registry.get("sink", s.type)(s, context))
            forwarders.append(Forwarder(name, sink, spool, cfg.spool.batch, cfg.spool.replay_rate))
        processor = self.make_processor(p)
        broker = cfg.brokers[p.source.broker]
        return RunningPipeline(
            p,
            processor,
            forwarders,
            spool,
            broker,
            client_id(broker.client_id, cfg.agent.id, f"{p.name}-in"),
            on_records=self.console.take if self.console is not None else None,
            redeliveries=self._redeliveries(p.name),
            on_failure=self.on_failure,
        )

    def _redeliveries(self, pipeline: str) -> Redeliveries:
        """The committed input identities of ``pipeline``: one object for the whole boot (a
        rebuilt pipeline goes on with its predecessor's), read from the spool at first."""
        known = self._inputs.get(pipeline)
        if known is None:
            known = self._inputs[pipeline] = Redeliveries(self.opened_spool().input_rows(pipeline))
        return known

    def check_models(self) -> None:
        """Log (once per change) a model file that no longer matches its loaded model."""
        for unit in self.units.values():
            name, handler = unit.name, unit.processor.handler
            problem = handler.check_file() if isinstance(handler, WatchesFile) else None
            if problem and problem != self._model_problems.get(name):
                self.log.error("model_file_changed", pipeline=name, error=problem)
            self._model_problems[name] = problem

    def status_record(self, state: str) -> dict:
        """The retained status record (docs/records.md)."""
        return {
            "agent": self.config.agent.id,
            "state": state,
            "ts": time.time(),
            "boot": self.boot,
            "pipelines": self.status(),
            **({"spool": self.spool.stats()} if self.spool else {}),
        }

    def _publish_status(self, client, state: str) -> None:
        body = self.status_record(state)
        client.publish(self.config.agent.status_topic, orjson.dumps(body), qos=1, retain=True)

    def status(self) -> dict:
        """Figures of every pipeline, by name (heartbeat and metrics)."""
        return {name: unit.status() for name, unit in self.units.items()}

    def failed(self) -> list[str]:
        """Pipelines whose worker ended on an error."""
        return [name for name, unit in self.units.items() if unit.error is not None]

    def connection_states(self) -> list[tuple[str, str, bool]]:
        """(broker, role, connected) of every MQTT connection: sources and upstream."""
        return [(b, role, conn.connected.is_set()) for b, role, conn in self.connections()]

    def connections(self) -> list[tuple[str, str, Connection]]:
        """(broker, role, connection) of every MQTT connection: sources and upstream."""
        out = [c for unit in self.units.values() for c in unit.connections()]
        out += [(name, "upstream", c) for name, c in self._connections.items()]
        return out

    # -- reload: the Agent diffs its units -----------------------------------------------
    def reload(self, path: str | None = None) -> bool:
        """Re-read the config and apply it pipeline by pipeline; keep it running if invalid."""
        path = path or self.config_path
        logger = log.get(component="reload", agent=self.config.agent.id)
        if path is None:
            logger.error("reload_rejected", error="the agent was not started from a config file")
            return False
        with self.reload_lock:
            try:  # the applied fleet pipelines over the local file, if any
                fleet = self.fleet
                new = fleet.load(path) if fleet is not None else load_config(path, self.registry)
                report = self.apply(new)
            except (ConfigError, AgentError) as e:
                logger.error("reload_rejected", config=str(path), error=str(e))
                return False
            logger.info("reload_applied", config=str(path), **report.__dict__)
            self.config_path = str(path)  # later reloads re-read the file now applied
            return True

    def apply(self, new: Config) -> ReloadReport:
        """Apply ``new`` to the running agent (see :mod:`agent.runtime.reload`); raise before
        changing anything if a model fails. The caller holds :attr:`reload_lock`."""
        old = self.config
        report = ReloadReport(needs_restart=restart_sections(old, new))
        check_brokers(old, new)
        running, wanted = self.units, {p.name: p for p in new.pipelines}

        # Load every new or changed model first: a failure leaves the agent untouched.
        swaps: dict[str, Processor] = {}
        rebuilds: list[PipelineConfig] = []
        for name, p in wanted.items():
            unit = running.get(name)
            if unit is None or not unit.same_wiring(p):
                rebuilds.append(p)
            elif unit.config != p or model_changed(unit.processor.handler):
                swaps[name] = self.make_processor(p)
            else:
                report.unchanged.append(name)
        built = {p.name: self.build_unit(p) for p in rebuilds}

        self.config = kept_sections(old, new)
        for name, processor in swaps.items():
            report.swapped[name] = running[name].swap(processor, self.scheduler)
        for name, unit in running.items():
            if name in wanted and name not in built:
                continue
            unit.stop(self.scheduler)
            self._set_units({n: u for n, u in self.units.items() if n != name})
            (report.restarted if name in built else report.removed).append(name)
        for name, unit in built.items():
            self._set_units({**self.units, name: unit})
            unit.start(self.scheduler)
            if name not in report.restarted:
                report.added.append(name)
        self.release_connections()
        return report

    def _set_units(self, units: dict[str, RunningPipeline]) -> None:
        """Replace the units: readers on other threads (scrapes, the console) iterate the
        dict they got, which is never changed in place."""
        self.units = units

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        if self.spool is None:
            self.build()
        for conn in self._connections.values():
            conn.start()
        for unit in self.units.values():
            unit.start(self.scheduler)
        if self.config.agent.status_topic and (status := self._status_broker()):
            conn = self.connection(status)

            def heartbeat() -> None:
                if conn.connected.is_set():
                    self._publish_status(conn.client, "online")

            self.scheduler.add_job(
                heartbeat,
                "interval",
                seconds=self.config.agent.heartbeat,
                id="heartbeat",
            )
        self.scheduler.add_job(
            self.check_models, "interval", seconds=self.config.agent.model_check, id="models"
        )
        if self.console is not None:
            self.scheduler.add_job(self.console.tick, "interval", seconds=TICK, id="console")
        self.scheduler.start()
        self.started = True
        if self.metrics is not None:
            self.metrics.start()
        self.log.info("agent_started", pipelines=list(self.units))

    def stop(self) -> None:
        """Stop intake, drain, flush summaries, flush the spool, disconnect."""
        if not self.started:
            return
        self.started = False
        if self.metrics is not None:
            self.metrics.stop()
        units = list(self.units.values())
        for unit in units:
            unit.pause()
        self.scheduler.shutdown(wait=False)
        for unit in units:
            unit.worker.stop()
        if self.spool:
            self.spool.wait()  # committed, and QoS 1 input acknowledged, before disconnecting
        for unit in units:
            unit.source.stop()
        for unit in units:
            for f in unit.forwarders:
                f.stop()
        if self.config.agent.status_topic and (status := self._status_broker()):
            conn = self.connection(status)
            if conn.connected.is_set():
                self._publish_status(conn.client, "offline")
        for conn in self._connections.values():
            conn.stop()
        left = self.spool.depth() if self.spool else 0
        if self.spool:
            self.spool.close()
        self.log.info("agent_stopped", spooled=left)
