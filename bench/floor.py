"""Latency floor at 1,000 msg/s: the agent beside two relays that do no W1 work.

Issue 4's latency targets (p50 <= 2 ms, p99 <= 5 ms at 1,000 msg/s) are absolute, and on a
shared VM what the machine allows moves from minute to minute. This runs, in turns so the
noise falls on each alike, ``--rounds`` trials of: ``relay-1`` (one thread, paho's, decodes
and publishes: the p50 floor of any design), ``relay-2`` (the agent's thread structure without
windows or model: paho's network thread enqueues, a worker publishes through a second
connection) and the agent (int8, QoS 0). Every trial is checked like a W1 trial (nothing
lost, events equal anomalies). Prints one table and one JSON line.

    python -m bench.floor [--rounds 3] [--duration 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from .broker import mosquitto
from .proc import print_result
from .w1 import PROCESSORS, Processor, Settings, Trial, build_models, machine, run_trial

FLOORS = (
    Processor("relay-1", "relay", 0, threads=1),
    Processor("relay-2", "relay", 0, threads=2),
)
AGENT = next(p for p in PROCESSORS if p.name == "agent-int8-q0")


def _cells(trials: list[Trial]) -> tuple[str, str, str]:
    p50 = [t.p50_ms for t in trials if t.p50_ms is not None]
    p99 = [t.p99_ms for t in trials if t.p99_ms is not None]
    each = "  ".join(f"{t.p50_ms}/{t.p99_ms} ({t.steal_pct} %)" for t in trials)
    med = "-" if not p50 else f"{statistics.median(p50):.2f} / {statistics.median(p99):.2f}"
    return each, med, f"{sum(t.held for t in trials)}/{len(trials)}"


def table(results: dict[str, list[Trial]]) -> str:
    """One line per processor: each round's p50/p99 ms (steal), their medians, trials held."""
    lines = [("processor", "p50/p99 ms (steal) per round", "median p50 / p99", "held")]
    lines += [(name, *_cells(trials)) for name, trials in results.items()]
    widths = [max(len(ln[i]) for ln in lines) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(ln, widths)) for ln in lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=30.0, help="seconds per trial")
    p.add_argument("--devices", type=int, default=100)
    p.add_argument("--json-out", type=Path, help="also write the JSON result here")
    args = p.parse_args(argv)

    procs = (*FLOORS, AGENT)
    results: dict[str, list[Trial]] = {x.name: [] for x in procs}
    with tempfile.TemporaryDirectory(prefix="w1-floor-") as tmp, mosquitto(Path(tmp)) as broker:
        s = Settings(broker.port, Path(tmp), build_models(Path(tmp)), devices=args.devices)
        for r in range(args.rounds):
            for x in procs:
                t = run_trial(s, x, 1000.0, args.duration)
                results[x.name].append(t)
                verdict = "held" if t.held else "; ".join(t.why)
                print(
                    f"round {r + 1} {x.name}: p50/p99 {t.p50_ms}/{t.p99_ms} ms, "
                    f"{t.events} events, steal {t.steal_pct} %: {verdict}",
                    file=sys.stderr,
                )
    line = json.dumps(
        {
            "bench": "floor",
            "command": "python -m bench.floor " + " ".join(argv or sys.argv[1:]),
            "rate": 1000,
            "duration_s": args.duration,
            "machine": machine(),
            "results": {
                name: [
                    {k: getattr(t, k) for k in ("p50_ms", "p99_ms", "events", "steal_pct")}
                    | {"held": t.held}
                    for t in trials
                ]
                for name, trials in results.items()
            },
        }
    )
    print_result(table(results), line, args.json_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
