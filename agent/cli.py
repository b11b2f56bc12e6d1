"""edge-agent command line: run | check | schema | components | quantize | evaluate | bench."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from . import __version__, log
from .errors import AgentError, ConfigError, ModelError, PluginError


def _run(args: argparse.Namespace) -> int:
    from .config import load_config
    from .runtime import Agent

    log.setup(args.log_level, args.pretty)
    cfg = load_config(args.config)
    agent = Agent(cfg)
    agent.build()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    agent.start()
    while not stop.wait(0.5):
        failed = [p for p in agent.pipelines if p.error is not None]
        if failed:
            agent.stop()
            return 1
    agent.stop()
    return 0


def _check(args: argparse.Namespace) -> int:
    from .config import load_config

    status = 0
    for path in args.configs:
        try:
            load_config(path)
        except ConfigError as e:
            print(e, file=sys.stderr)
            status = 2
        else:
            print(f"{path}: ok")
    return status


def _schema(args: argparse.Namespace) -> int:
    from .schema import config_schema

    print(json.dumps(config_schema(), indent=2))
    return 0


def _components(args: argparse.Namespace) -> int:
    from .registry import KINDS, Registry

    reg = Registry()
    for kind in KINDS:
        for name in reg.names(kind):
            print(f"{kind:8} {name:24} {reg.origin(kind, name)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-agent", description=__doc__)
    p.add_argument("--version", action="version", version=__version__)
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the pipelines of a config")
    run.add_argument("-c", "--config", required=True)
    run.add_argument("--pretty", action="store_true", help="console logs instead of JSON")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.set_defaults(func=_run)

    check = sub.add_parser("check", help="validate config files; exit 2 on any error")
    check.add_argument("configs", nargs="+")
    check.set_defaults(func=_check)

    schema = sub.add_parser("schema", help="print the JSON Schema of the config")
    schema.set_defaults(func=_schema)

    comps = sub.add_parser("components", help="list every component and where it comes from")
    comps.set_defaults(func=_components)
    return p


def main(argv: list[str] | None = None) -> int:
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
