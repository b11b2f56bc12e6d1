"""edge-agent command line: run | reload | check | schema | components | demo | ..."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from agent import __version__, log
from agent.errors import AgentError, ConfigError, ModelError, PluginError, SettingError
from agent.runtime import workers
from agent.runtime.signals import Signals

if TYPE_CHECKING:
    from agent.config import Config


def _run(args: argparse.Namespace) -> int:
    from agent.config import load_config
    from agent.runtime.instance import InstanceGuard

    if args.dry_run:
        from agent.runtime.preflight import report

        cfg = load_config(args.config)
        print(f"{args.config}: ok")
        return report(args.config, cfg)
    log.setup(args.log_level, log.console_wanted(args.log_format))
    full = load_config(args.config)
    _files_readable(full, args.config)
    signals = Signals()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signals.on_stop)
    signal.signal(signal.SIGHUP, signals.on_hup)  # before the PID file names us
    pid_file = Path(args.pid_file or default_pid_file(full.agent.id))
    # One agent per spool, decided before any broker, port or model is opened.
    try:
        guard = InstanceGuard(full.agent.id, full.spool.path, pid_file).acquire()
    except SettingError as e:
        raise ConfigError(args.config, [str(e)]) from None
    except OSError as e:  # the PID file's folder is not writable: run without one
        log.get(component="cli").warning("pid_file_failed", path=str(pid_file), error=str(e))
        guard = InstanceGuard(full.agent.id, full.spool.path, None).acquire()
    try:
        return _serve(args, full, signals, pid_file)
    except SettingError as e:
        raise ConfigError(args.config, [str(e)]) from None
    finally:
        guard.release()


def _serve(
    args: argparse.Namespace,
    full: Config,
    signals: Signals,
    pid_file: Path,
) -> int:
    """Build, start and supervise the agent (and worker processes) until a stop signal; a
    SIGHUP reloads (the file a ``reload -c`` asked for, else the agent's own)."""
    from agent.runtime.agent import Agent, settle_heap
    from agent.runtime.notify import notify, reloading
    from agent.runtime.reload import take_request

    fleet = None
    if full.fleet is not None:  # the last good fleet version, or the local file (docs/fleet.md)
        from agent.fleet.manager import FleetManager

        fleet = FleetManager(args.config, full)
        full = fleet.startup_config()
    cfg, children = workers.split(full)
    pool = workers.WorkerPool(children, args.log_level, log.console_wanted(args.log_format))
    if children:  # a worker process that ends wakes the main thread
        signal.signal(signal.SIGCHLD, signals.wake)
    if cfg is None:
        return _run_pool(pool, signals)
    agent = Agent(cfg, on_failure=signals.wake)
    agent.config_path = args.config
    agent.build()
    pool.start()
    try:
        agent.start()
    except BaseException:
        pool.stop()
        raise
    if fleet is not None:
        fleet.start(agent)
    settle_heap()
    notify("READY=1")
    while not signals.wait():
        if pool.failed():
            log.get(component="cli").error("worker_failed", workers=pool.failed())
            break
        if signals.take_hup():
            reloading()
            agent.reload(take_request(pid_file))
            settle_heap()
            notify("READY=1")
        if agent.failed():
            break
    notify("STOPPING=1")
    if fleet is not None:
        fleet.stop()  # a version mid-gate stays `trying`: marked failed at the next start
    pool.stop()
    agent.stop()
    return 1 if agent.failed() else 0


def _run_pool(pool: workers.WorkerPool, signals: Signals) -> int:
    """Every pipeline runs in worker processes: supervise them until a signal."""
    from agent.runtime.notify import notify

    pool.start()
    notify("READY=1")
    while not signals.wait() and not pool.failed():
        pass
    failed = pool.failed()
    if failed:
        log.get(component="cli").error("worker_failed", workers=failed)
    pool.stop()
    return 1 if failed else 0


SYSTEM_RUN_DIR = Path("/run/edge-agent")  # the systemd unit's RuntimeDirectory


def _pid_dirs() -> list[Path]:
    """Where PID files go, in order: $RUNTIME_DIRECTORY (set by systemd for the unit), the
    unit's runtime directory (seen from an admin's shell, where that variable is unset),
    $XDG_RUNTIME_DIR, /tmp."""
    dirs = [os.environ.get("RUNTIME_DIRECTORY"), SYSTEM_RUN_DIR, os.environ.get("XDG_RUNTIME_DIR")]
    return [Path(d) for d in dirs if d] + [Path("/tmp")]


def default_pid_file(agent_id: str) -> Path:
    """Where ``run`` records its PID for ``reload``: ``edge-agent-<id>.pid`` in the first
    of :func:`_pid_dirs` that exists and can be written to."""
    name = f"edge-agent-{agent_id}.pid"
    for d in _pid_dirs():
        if d.is_dir() and os.access(d, os.W_OK):
            return d / name
    return Path("/tmp") / name


def find_pid_file(agent_id: str) -> Path:
    """The PID file of the running agent ``agent_id``: the first that exists among
    :func:`_pid_dirs` (the directory ``run`` chose may not be the first one here)."""
    name = f"edge-agent-{agent_id}.pid"
    for d in _pid_dirs():
        if (d / name).is_file():
            return d / name
    return default_pid_file(agent_id)


def _reload(args: argparse.Namespace) -> int:
    from agent.config import load_config
    from agent.runtime.reload import write_request

    pid_file = args.pid_file
    if args.config:
        cfg = load_config(args.config)  # an invalid file is reported here, nothing signalled
        pid_file = pid_file or find_pid_file(cfg.agent.id)
    if args.pid is None and pid_file is None:
        print("error: give -c CONFIG, --pid-file or --pid", file=sys.stderr)
        return 2
    try:
        pid = args.pid if args.pid is not None else int(Path(pid_file).read_text().split()[0])
        if args.config:  # the agent applies this file, not the one it started from
            write_request(Path(pid_file), pid, Path(args.config))
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError, IndexError) as e:
        print(f"error: cannot signal the agent ({pid_file or args.pid}): {e}", file=sys.stderr)
        return 1
    what = f"reload of {args.config}" if args.config else "reload of its config"
    print(f"{what} requested from PID {pid}; the agent logs reload_applied or reload_rejected")
    return 0


def _files_readable(cfg, path: str) -> None:
    """Raise ConfigError naming each TLS or model file ``run`` could not open."""
    from agent.config import file_problems

    problems = file_problems(cfg)
    if problems:
        raise ConfigError(str(path), problems)


def _check(args: argparse.Namespace) -> int:
    from agent.config import load_config

    status = 0
    for path in args.configs:
        try:
            cfg = load_config(path)
            if not (args.offline or args.connect):  # --connect reports them one by one
                _files_readable(cfg, path)
        except ConfigError as e:
            print(e, file=sys.stderr)
            status = 2
        else:
            print(f"{path}: ok")
            if args.connect:
                from agent.runtime.preflight import report

                status = max(status, report(path, cfg))
    return status


def _health(args: argparse.Namespace) -> int:
    from agent.config import load_config
    from agent.runtime.health import check

    ok, why = check(load_config(args.config))
    print(why)
    return 0 if ok else 1


def _schema(args: argparse.Namespace) -> int:
    if args.markdown:
        from agent.tools.docs import config_markdown

        sys.stdout.write(config_markdown())
        return 0
    from agent.tools.schema import config_schema

    print(json.dumps(config_schema(), indent=2))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from agent.tools.demo import run_demo

    return run_demo(args)


def _components(args: argparse.Namespace) -> int:
    from agent.models import PREFIX, manifest
    from agent.registry import KINDS, Registry

    reg = Registry()
    for kind in KINDS:
        for name in reg.names(kind):
            print(f"{kind:8} {name:24} {reg.origin(kind, name)}")
    for name, entry in manifest().items():
        task = entry.get("task", "")
        print(f"{'model':8} {PREFIX + name:24} built-in: {task}")
    return 0


TOOLS = (
    (
        "evaluate",
        "agent.tools.evaluate:main",
        "replay SKAB or AI4I through the pipeline and score it",
    ),
    (
        "replay",
        "agent.tools.replay:main",
        "backtest a pipeline on recorded CSV rows: events, scores",
    ),
    ("quantize", "agent.tools.quantize:main", "quantize an ONNX model to int8 and compare it"),
    (
        "decode",
        "agent.tools.decode_tool:main",
        "run payloads through a pipeline's decoder, show it",
    ),
    ("fleet", "agent.fleet.cli:main", "fleet rollout: keygen | sign | publish | status"),
)


def _tool(target: str, argv: list[str]) -> int:
    """Run a tool that parses its own arguments."""
    import importlib

    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)(argv)


LOG_FORMATS = ("auto", "console", "json")


def _add_run_options(run: argparse.ArgumentParser) -> None:
    run.add_argument(
        "-c", "--config", required=True, metavar="FILE", help="the agent's YAML config"
    )
    run.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="auto",
        help="console: readable lines (coloured on a terminal); json: one object per line; "
        "auto (default): console on a terminal, json otherwise (journald, pipes)",
    )
    run.add_argument(
        "--pretty",
        dest="log_format",
        action="store_const",
        const="console",
        help="same as --log-format console",
    )
    run.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="lowest level logged (default: info)",
    )
    run.add_argument(
        "--pid-file",
        metavar="FILE",
        help="PID file for `reload`, locked while the agent runs (default: "
        "$RUNTIME_DIRECTORY, $XDG_RUNTIME_DIR or /tmp, edge-agent-<agent.id>.pid)",
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="open the brokers, files, models and port the config names, report each, exit "
        "(same as `check --connect`)",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-agent", description=__doc__)
    p.add_argument("--version", action="version", version=__version__)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run the pipelines of a config",
        description="Run the pipelines of a config until SIGTERM or SIGINT (drains, flushes "
        "the last summaries, leaves undelivered records in the spool). SIGHUP or `edge-agent "
        "reload` applies a changed config. One agent per spool: a second one exits at once.",
    )
    _add_run_options(run)
    run.set_defaults(func=_run)

    rel = sub.add_parser(
        "reload",
        help="apply a config to a running agent (SIGHUP)",
        description="Validate FILE, then make the running agent apply it (it becomes the "
        "agent's config file for later reloads). Without -c the agent re-reads its own file. "
        "The agent logs reload_applied or reload_rejected.",
    )
    rel.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help="the config to apply; the agent is found by its agent.id (PID file)",
    )
    rel.add_argument("--pid-file", metavar="FILE", help="the running agent's PID file")
    rel.add_argument("--pid", type=int, help="the running agent's PID")
    rel.set_defaults(func=_reload)

    check = sub.add_parser(
        "check",
        help="validate config files; exit 2 on any error",
        description="Validate config files: every problem on one line, with the file and the "
        "key path. Exit 0 when all are valid, 2 otherwise.",
    )
    check.add_argument("configs", nargs="+", metavar="FILE", help="config files to validate")
    check.add_argument(
        "--connect",
        action="store_true",
        help="also open what each config names (brokers, TLS files, models, spool folder, "
        "metrics port) and report each as ok or its problem; exit 1 if any fails",
    )
    check.add_argument(
        "--offline",
        action="store_true",
        help="skip the files run would open (TLS material, models): a config checked away "
        "from its gateway",
    )
    check.set_defaults(func=_check)

    health = sub.add_parser(
        "health",
        help="whether the agent run from a config is healthy (container HEALTHCHECK)",
        description="Exit 0 when the agent run from FILE is healthy: /readyz answers 200 on "
        "its metrics port, or, without a `metrics:` section, an agent holds its spool. Exit 1 "
        "otherwise, with one line saying why.",
    )
    health.add_argument("-c", "--config", required=True, metavar="FILE", help="its config")
    health.set_defaults(func=_health)

    schema = sub.add_parser(
        "schema",
        help="print the JSON Schema of the config",
        description="Print the config's JSON Schema (for editors), or the config reference.",
    )
    schema.add_argument(
        "--markdown", action="store_true", help="the config reference (docs/configuration.md)"
    )
    schema.set_defaults(func=_schema)

    from agent.tools.demo import add_arguments

    demo = sub.add_parser(
        "demo",
        help="the whole job on this machine: broker, data, live view",
        description="An embedded broker, SKAB pump recordings as 8 pumps, the shipped model "
        "with online calibration, a live view and a final table with the data reduction.",
    )
    add_arguments(demo)
    demo.set_defaults(func=_demo)

    comps = sub.add_parser(
        "components",
        help="list the components and shipped models, and where each comes from",
        description="List every decoder, handler and sink (built in, or the plugin that "
        "provides it) and the shipped models a handler's `model:` can name as builtin:NAME.",
    )
    comps.set_defaults(func=_components)

    for name, _, text in TOOLS:  # dispatched by main(): their own parsers take the rest
        sub.add_parser(name, help=f"{text} (edge-agent {name} --help)", add_help=False)
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
