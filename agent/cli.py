"""edge-agent command line: run | reload | check | schema | components | demo | ..."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from pathlib import Path

from . import __version__, log, workers
from .errors import AgentError, ConfigError, ModelError, PluginError


def _run(args: argparse.Namespace) -> int:
    from .config import load_config
    from .runtime import Agent, settle_heap

    log.setup(args.log_level, args.pretty)
    full = load_config(args.config)
    _files_readable(full, args.config)
    cfg, children = workers.split(full)
    pool = workers.WorkerPool(children, args.log_level, args.pretty)
    if cfg is None:
        return _run_pool(pool)
    agent = Agent(cfg)
    agent.config_path = args.config
    agent.build()
    stop, hup = threading.Event(), threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: hup.set())
    pid_file = Path(args.pid_file or default_pid_file(cfg.agent.id))
    pool.start()
    agent.start()
    settle_heap()
    _write_pid(pid_file)
    try:
        while not stop.wait(0.2):
            if pool.failed():
                log.get(component="cli").error("worker_failed", workers=pool.failed())
                stop.set()
            if hup.is_set():
                hup.clear()
                agent.reload()
                settle_heap()
            failed = [p for p in agent.pipelines if p.error is not None]
            if failed:
                pool.stop()
                agent.stop()
                return 1
        pool.stop()
        agent.stop()
    finally:
        with contextlib.suppress(OSError):
            if pid_file.read_text().strip() == str(os.getpid()):
                pid_file.unlink()
    return 0


def _run_pool(pool: workers.WorkerPool) -> int:
    """Every pipeline runs in worker processes: supervise them until a signal."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    pool.start()
    while not stop.wait(0.2) and not pool.failed():
        pass
    failed = pool.failed()
    pool.stop()
    return 1 if failed else 0


def default_pid_file(agent_id: str) -> Path:
    """Where ``run`` records its PID for ``reload``: $RUNTIME_DIRECTORY, XDG or /tmp."""
    base = os.environ.get("RUNTIME_DIRECTORY") or os.environ.get("XDG_RUNTIME_DIR") or "/tmp"
    return Path(base) / f"edge-agent-{agent_id}.pid"


def _write_pid(path: Path) -> None:
    try:
        path.write_text(f"{os.getpid()}\n")
    except OSError as e:
        log.get(component="cli").warning("pid_file_failed", path=str(path), error=str(e))


def _reload(args: argparse.Namespace) -> int:
    from .config import load_config

    pid_file = args.pid_file
    if args.config:
        cfg = load_config(args.config)  # an invalid file is reported here, nothing signalled
        pid_file = pid_file or default_pid_file(cfg.agent.id)
    if args.pid is None and pid_file is None:
        print("error: give -c CONFIG, --pid-file or --pid", file=sys.stderr)
        return 2
    try:
        pid = args.pid if args.pid is not None else int(Path(pid_file).read_text().split()[0])
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError, IndexError) as e:
        print(f"error: cannot signal the agent ({pid_file or args.pid}): {e}", file=sys.stderr)
        return 1
    print(f"reload requested from PID {pid}; the agent logs reload_applied or reload_rejected")
    return 0


def _files_readable(cfg, path: str) -> None:
    """Raise ConfigError naming each TLS or model file ``run`` could not open."""
    from .config import file_problems

    problems = file_problems(cfg)
    if problems:
        raise ConfigError(str(path), problems)


def _check(args: argparse.Namespace) -> int:
    from .config import load_config

    status = 0
    for path in args.configs:
        try:
            cfg = load_config(path)
            if not args.offline:
                _files_readable(cfg, path)
        except ConfigError as e:
            print(e, file=sys.stderr)
            status = 2
        else:
            print(f"{path}: ok")
    return status


def _schema(args: argparse.Namespace) -> int:
    if args.markdown:
        from .docs import config_markdown

        sys.stdout.write(config_markdown())
        return 0
    from .schema import config_schema

    print(json.dumps(config_schema(), indent=2))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args)


def _components(args: argparse.Namespace) -> int:
    from .registry import KINDS, Registry

    reg = Registry()
    for kind in KINDS:
        for name in reg.names(kind):
            print(f"{kind:8} {name:24} {reg.origin(kind, name)}")
    return 0


TOOLS = (
    ("evaluate", "agent.evaluate:main", "replay SKAB or AI4I through the pipeline and score it"),
    ("quantize", "agent.quantize:main", "quantize an ONNX model to int8 and compare it"),
    ("bench", "bench.w1:main", "the benchmarks: bench w1 | bench floor [options]"),
)
BENCHES = {"w1": "bench.w1", "floor": "bench.floor"}  # bench alone: w1


def _tool(target: str, argv: list[str]) -> int:
    """Run a tool that parses its own arguments (``bench floor ...`` runs bench.floor)."""
    import importlib

    module, _, attr = target.partition(":")
    if module == "bench.w1" and argv[:1] and argv[0] in BENCHES:
        module, argv = BENCHES[argv[0]], argv[1:]
    return getattr(importlib.import_module(module), attr)(argv)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-agent", description=__doc__)
    p.add_argument("--version", action="version", version=__version__)
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the pipelines of a config")
    run.add_argument("-c", "--config", required=True)
    run.add_argument("--pretty", action="store_true", help="console logs instead of JSON")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.add_argument("--pid-file", help="PID file for `reload` (default: per agent id)")
    run.set_defaults(func=_run)

    rel = sub.add_parser("reload", help="ask a running agent to re-read its config (SIGHUP)")
    rel.add_argument("-c", "--config", help="validate this config first, find the agent by its id")
    rel.add_argument("--pid-file", help="the running agent's PID file")
    rel.add_argument("--pid", type=int, help="the running agent's PID")
    rel.set_defaults(func=_reload)

    check = sub.add_parser("check", help="validate config files; exit 2 on any error")
    check.add_argument("configs", nargs="+")
    check.add_argument(
        "--offline",
        action="store_true",
        help="skip the files run would open (TLS material, models): a config checked away "
        "from its gateway",
    )
    check.set_defaults(func=_check)

    schema = sub.add_parser("schema", help="print the JSON Schema of the config")
    schema.add_argument(
        "--markdown", action="store_true", help="the config reference (docs/configuration.md)"
    )
    schema.set_defaults(func=_schema)

    from .demo import add_arguments

    demo = sub.add_parser("demo", help="the whole job on this machine: broker, data, live view")
    add_arguments(demo)
    demo.set_defaults(func=_demo)

    comps = sub.add_parser("components", help="list every component and where it comes from")
    comps.set_defaults(func=_components)

    for name, _, text in TOOLS:  # dispatched by main(): their own parsers take the rest
        sub.add_parser(name, help=text, add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    tools = {name: target for name, target, _ in TOOLS}
    if argv and argv[0] in tools:
        return _tool(tools[argv[0]], argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, ModelError, PluginError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except AgentError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
