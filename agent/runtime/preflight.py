"""``check --connect`` / ``run --dry-run``: open what a valid config names, report each, exit.

Each line is one thing the agent would open at start-up, ``ok`` or the exact problem: the
spool folder (and whether another agent holds the spool), the metrics port, every broker
(TCP, TLS and credentials: a real CONNECT with a client id of its own, so a running agent's
session is not taken over), every pipeline's decoder and model (loaded, checked, warmed up)
and every file sink's folder. Nothing is kept: no spool is created, no message published.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from agent import log
from agent.config import Config, UsesBroker, WritesFile
from agent.errors import AgentError
from agent.protocols import model_identity
from agent.runtime.instance import holder

BROKER_TIMEOUT = 5.0  # s a broker gets to answer CONNECT
Result = str | tuple[None, str] | None  # the problem, or None / (None, detail) when ok
Check = Callable[[], Result]


def _spool(cfg: Config) -> str | None:
    folder = cfg.spool.path.resolve().parent
    probe = folder
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable by this user (spool.path)"
    pid = holder(cfg.spool.path)
    return None if pid is None else f"held by a running agent (PID {pid})"


def _metrics(cfg: Config) -> str | None:
    from agent.runtime.metrics import listen_problem

    assert cfg.metrics is not None
    with socket.socket(socket.AF_INET6 if ":" in cfg.metrics.host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as http.server does
        try:
            s.bind((cfg.metrics.host, cfg.metrics.port))
        except OSError as e:
            return listen_problem(cfg.metrics.host, cfg.metrics.port, e)
    return None


def _broker(cfg: Config, name: str) -> str | None:
    from agent.transport.mqtt import Connection

    conn = Connection(name, cfg.brokers[name], f"{cfg.agent.id}-check-{os.getpid()}")
    conn.start()
    try:
        deadline = time.monotonic() + BROKER_TIMEOUT
        while not conn.connected.is_set() and conn.last_error is None:
            if time.monotonic() > deadline:
                return f"no answer within {BROKER_TIMEOUT:g} s"
            conn.connected.wait(0.05)
        return None if conn.connected.is_set() else conn.last_error
    finally:
        conn.stop()


def _model(cfg: Config, index: int) -> Result:
    from agent.stages.processor import build_processor

    p = cfg.pipelines[index]
    processor = build_processor(p)
    handler = processor.handler
    model = model_identity(handler)[0] or p.handler.type
    return None, f"{model}, {processor.decoder.channels} channels"


def _folder(path: Path) -> str | None:
    probe = path.resolve().parent
    while not probe.exists():
        probe = probe.parent
    return None if os.access(probe, os.W_OK | os.X_OK) else f"{probe} is not writable"


def checks(cfg: Config) -> list[tuple[str, Check]]:
    """(label, check) for everything ``cfg`` opens."""
    out: list[tuple[str, Check]] = [(f"spool {cfg.spool.path}", lambda: _spool(cfg))]
    if cfg.metrics is not None:
        out.append((f"metrics {cfg.metrics.host}:{cfg.metrics.port}", lambda: _metrics(cfg)))
    used = {p.source.broker for p in cfg.pipelines}
    used |= {s.broker for p in cfg.pipelines for s in p.sinks if isinstance(s, UsesBroker)}
    for name in sorted(used):
        b = cfg.brokers[name]
        tls = ", TLS" if b.tls else ""
        out.append((f"broker {name} ({b.host}:{b.port}{tls})", partial(_broker, cfg, name)))
    for i, p in enumerate(cfg.pipelines):
        out.append((f"pipeline {p.name} model", partial(_model, cfg, i)))
        for j, s in enumerate(p.sinks):
            path = s.path if isinstance(s, WritesFile) else None
            if isinstance(path, Path):
                out.append((f"pipeline {p.name} sinks[{j}] {path}", partial(_folder, path)))
    return out


def report(source: str, cfg: Config) -> int:
    """Run every check of ``cfg``, print one line each; 0 when all are ok, else 1."""
    log.setup("critical")  # connection attempts report here, not as log lines
    failed = 0
    for label, check in checks(cfg):
        detail = ""
        try:
            result = check()
        except AgentError as e:
            result = str(e)
        except OSError as e:
            result = f"{type(e).__name__}: {e}"
        if isinstance(result, tuple):
            result, detail = result
        if result is None:
            print(f"  {label}: ok" + (f" ({detail})" if detail else ""))
        else:
            failed += 1
            print(f"  {label}: FAILED: {result}")
    print(f"{source}: {'all ok' if not failed else f'{failed} problem(s)'}")
    return 1 if failed else 0
