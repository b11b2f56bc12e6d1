"""Live reload: apply a re-read config to a running agent, pipeline by pipeline.

An invalid config (or a model that fails its checks) is rejected with the error logged and
the running config kept. A pipeline whose source and sinks are unchanged gets a new
processor (decoder, model, rule, window, summary period) swapped in between two batches of
its worker; its queue is kept, so nothing accepted is lost, and its windows are kept when
the window and the channel count are unchanged. A model file whose content changed counts as
a change. A pipeline whose source or sinks changed is restarted (its queue processed first);
new pipelines start, removed ones stop the same way. ``agent``, ``brokers``, ``spool``,
``metrics`` and ``fleet`` apply at the next restart only.
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from agent import log
from agent.config import Config, PipelineConfig, load_config
from agent.errors import AgentError, ConfigError
from agent.protocols import model_identity

if TYPE_CHECKING:
    from agent.runtime.agent import Agent
    from agent.runtime.pipeline import Pipeline
    from agent.stages.processor import Processor

RESTART_SECTIONS = ("agent", "brokers", "spool", "metrics", "fleet")


@dataclass
class ReloadReport:
    """What one reload did, by pipeline name."""

    swapped: dict[str, bool] = field(default_factory=dict)  # name -> windows kept
    restarted: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    needs_restart: list[str] = field(default_factory=list)


def _model_changed(processor: Processor) -> bool:
    """Whether the handler's model file now holds other bytes than the ones loaded."""
    path, sha = model_identity(processor.handler)
    if not path or not sha:
        return False
    from agent.handlers.onnx_model import sha256_of

    try:
        return sha256_of(Path(path)) != sha
    except OSError:
        return True  # gone: let the new processor's load report it


def request_path(pid_file: Path) -> Path:
    """Where ``reload -c FILE`` leaves FILE's path for the agent that owns ``pid_file``."""
    return pid_file.with_name(pid_file.name + ".reload")


def write_request(pid_file: Path, pid: int, config: Path) -> Path:
    """Ask agent ``pid`` to apply ``config`` at its next SIGHUP (instead of its own file)."""
    path = request_path(pid_file)
    tmp = path.with_name(path.name + f".{os.getpid()}")
    tmp.write_text(f"{pid}\n{config.resolve()}\n")
    tmp.replace(path)
    return path


def take_request(pid_file: Path | None) -> str | None:
    """The config path a ``reload -c`` left for this process, removed once read.

    Only a request written by this user, for this PID, counts: anyone else who can write
    to the PID file's folder (``/tmp``) must not choose the agent's config.
    """
    if pid_file is None:
        return None
    path = request_path(pid_file)
    try:
        st = path.lstat()
        lines = path.read_text().splitlines()
        path.unlink()
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o002:
        return None
    if len(lines) < 2 or lines[0].strip() != str(os.getpid()):
        return None
    return lines[1]


def reload_from(agent: Agent, path: str | Path | None) -> bool:
    """Read ``path`` and apply it; log and return False when it is rejected."""
    logger = log.get(component="reload", agent=agent.config.agent.id)
    if path is None:
        logger.error("reload_rejected", error="the agent was not started from a config file")
        return False
    try:
        fleet = agent.fleet  # the applied fleet pipelines over the local file, if any
        new = fleet.load(path) if fleet is not None else load_config(path, agent.registry)
        report = apply(agent, new)
    except (ConfigError, AgentError) as e:
        logger.error("reload_rejected", config=str(path), error=str(e))
        return False
    logger.info("reload_applied", config=str(path), **report.__dict__)
    agent.config_path = str(path)  # later reloads re-read the file now applied
    return True


def apply(agent: Agent, new: Config) -> ReloadReport:
    """Apply ``new`` to the running ``agent``; raise before changing anything if a model fails."""
    old = agent.config
    report = ReloadReport()
    report.needs_restart = [s for s in RESTART_SECTIONS if getattr(old, s) != getattr(new, s)]
    for i, p in enumerate(new.pipelines):
        if p.source.broker not in old.brokers:
            raise ConfigError(
                "reload", [f"pipelines[{i}].source.broker: {p.source.broker!r} is new (restart)"]
            )
    running = {pl.processor.name: pl for pl in agent.pipelines}
    wanted = {p.name: p for p in new.pipelines}

    # Load every new or changed model first: a failure leaves the agent untouched.
    swaps: dict[str, Processor] = {}
    rebuilds: list[PipelineConfig] = []
    for name, p in wanted.items():
        current = running.get(name)
        if current is None:
            rebuilds.append(p)
            continue
        cfg = current.processor.config
        if cfg.source != p.source or cfg.sinks != p.sinks:
            rebuilds.append(p)
        elif cfg != p or _model_changed(current.processor):
            swaps[name] = agent.make_processor(p)
        else:
            report.unchanged.append(name)
    built = {p.name: agent.build_pipeline(p) for p in rebuilds}

    keep_sections = {s: getattr(old, s) for s in RESTART_SECTIONS}
    agent.config = new.model_copy(update=keep_sections)
    for name, processor in swaps.items():
        pipeline = running[name]
        before = pipeline.processor.config.summary
        report.swapped[name] = pipeline.swap(processor)
        if processor.config.summary != before:
            agent.schedule_summaries(pipeline)
    for name in [n for n in running if n not in wanted or n in built]:
        _stop(agent, running[name])
        (report.restarted if name in built else report.removed).append(name)
    for name, (pipeline, source, forwarders) in built.items():
        agent.forwarders = [*agent.forwarders, *forwarders]
        agent.pipelines = [*agent.pipelines, pipeline]
        agent.sources = [*agent.sources, source]
        for f in forwarders:
            f.start()
        pipeline.start()
        agent.schedule_summaries(pipeline)
        source.start()
        if name not in report.restarted:
            report.added.append(name)
    agent.release_connections()
    return report


def _stop(agent: Agent, pipeline: Pipeline) -> None:
    """Stop one pipeline from the source end: intake, queue, summaries, its forwarders."""
    i = agent.pipelines.index(pipeline)
    source = agent.sources[i]
    source.pause()  # connected still: the worker acknowledges what it drains
    with contextlib.suppress(Exception):
        agent.scheduler.remove_job(f"summary-{pipeline.processor.name}")
    pipeline.stop()
    if agent.spool:
        agent.spool.wait()  # its records committed, its input acknowledged
    source.stop()
    prefix = f"{pipeline.processor.name}."
    mine = [f for f in agent.forwarders if f.name.startswith(prefix)]
    for f in mine:
        f.stop(drain_timeout=2)  # what is left stays spooled for the new forwarder
    agent.pipelines = [p for p in agent.pipelines if p is not pipeline]
    agent.sources = [s for s in agent.sources if s is not source]
    agent.forwarders = [f for f in agent.forwarders if f not in mine]
