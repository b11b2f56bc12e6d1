"""Worker processes: a pipeline with ``workers: N`` runs as N processes split by topic filter.

Each worker process is a full agent for that one pipeline with its own MQTT connection,
its share of the pipeline's topic filters (filter k goes to worker k mod N), its own spool
file and client ids. A device's topic matches one filter, so a device is never split across
processes and its windows stay whole. Configs travel to the children by pipe, not disk,
so secrets from the environment are never written out.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import sys

from agent.config import Config
from agent.runtime.signals import Signals


def split(cfg: Config) -> tuple[Config | None, list[Config]]:
    """The parent's config (single-worker pipelines) and one config per worker process."""
    local = [p for p in cfg.pipelines if p.workers == 1]
    children = []
    for p in cfg.pipelines:
        if p.workers == 1:
            continue
        for k in range(p.workers):
            topics = p.source.topics[k :: p.workers]
            pipe = p.model_copy(
                update={"source": p.source.model_copy(update={"topics": topics}), "workers": 1}
            )
            agent = cfg.agent.model_copy(
                update={"id": f"{cfg.agent.id}-{p.name}-w{k}", "status_topic": None}
            )
            spool_path = cfg.spool.path.with_name(f"{cfg.spool.path.name}.{p.name}-w{k}")
            brokers = {  # a configured client id, too, must differ from process to process
                name: b.model_copy(update={"client_id": f"{b.client_id}-{p.name}-w{k}"})
                if b.client_id
                else b
                for name, b in cfg.brokers.items()
            }
            children.append(
                cfg.model_copy(
                    update={
                        "agent": agent,
                        "brokers": brokers,
                        "pipelines": [pipe],
                        "spool": cfg.spool.model_copy(update={"path": spool_path}),
                        "metrics": None,
                    }
                )
            )
    parent = cfg.model_copy(update={"pipelines": local}) if local else None
    return parent, children


def _child(cfg: Config, level: str, pretty: bool) -> None:
    from agent import log
    from agent.runtime.agent import Agent, settle_heap

    log.setup(level, pretty)
    signals = Signals()
    signal.signal(signal.SIGTERM, signals.on_stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    agent = Agent(cfg, on_failure=signals.wake)  # a failed pipeline ends the process: exit 1
    agent.build()
    agent.start()
    settle_heap()
    while not signals.wait() and not agent.failed():
        pass
    agent.stop()
    if agent.failed():
        sys.exit(1)  # the parent sees it (WorkerPool.failed) and stops the agent


class WorkerPool:
    """Starts worker processes and stops them with SIGTERM (each drains and flushes)."""

    def __init__(self, configs: list[Config], level: str = "info", pretty: bool = False) -> None:
        ctx = mp.get_context("spawn")
        self.procs = [
            ctx.Process(target=_child, args=(c, level, pretty), name=c.agent.id, daemon=False)
            for c in configs
        ]

    def start(self) -> None:
        for p in self.procs:
            p.start()

    def failed(self) -> list[str]:
        """Names of workers that exited on their own."""
        return [p.name for p in self.procs if p.exitcode not in (None, 0)]

    def stop(self, timeout: float = 60) -> None:
        for p in self.procs:
            if p.is_alive():
                p.terminate()  # SIGTERM: the child drains, flushes and exits 0
        for p in self.procs:
            p.join(timeout)
            if p.is_alive():
                p.kill()
                p.join()
