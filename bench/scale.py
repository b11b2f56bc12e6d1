"""Idle and scale figures of W1 (issue 21; docs/performance.md).

Idle: each processor connected to its broker (the agent to its source and sink
connections, with the collector subscribed), ready, and no traffic for ``--idle`` seconds:
CPU as % of one core and wake-ups per second per thread (a gateway at night). Scale: 1,000
msg/s spread over 100, 1,000 and 10,000 devices: CPU s per 1,000 samples and peak RSS.

    python -m bench.scale [--idle 30] [--duration 20] [--only agent] [--json-out F]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from .broker import mosquitto
from .proc import print_result, run_seconds, thread_delta, thread_stats
from .w1 import PROCESSORS, Processor, Settings, build_models, machine, run_trial, start_ready

IDLE_PROCESSORS = ("agent-int8-q0", "agent-int8-q1", "naive-fp32-q0", "counter-q0")
SCALE_PROCESSORS = ("agent-int8-q0", "naive-fp32-q0")
DEVICES = (100, 1000, 10_000)


def idle(s: Settings, proc: Processor, seconds: float) -> dict[str, Any]:
    """CPU (% of a core) and per-thread wake-ups per second of ``proc`` with no traffic."""
    log = s.workdir / f"{proc.name}-idle.log"
    collector = child = None
    try:
        child, collector = start_ready(s, proc, log)
        time.sleep(2.0)  # the probe's summary round and start-up work end
        cpu0, threads0, t0 = run_seconds(child.pid), thread_stats(child.pid), time.monotonic()
        time.sleep(seconds)
        elapsed = time.monotonic() - t0
        cpu = run_seconds(child.pid) - cpu0
        # per 1,000 "samples" of one per second: per thread, per 1,000 s
        threads = thread_delta(threads0, thread_stats(child.pid), round(elapsed))
        return {
            "name": proc.name,
            "seconds": round(elapsed, 1),
            "cpu_pct_of_core": round(100 * cpu / elapsed, 3),
            "wakeups_per_s": {k: round(v["wakeups_per_1k"] / 1000, 2) for k, v in threads.items()},
        }
    finally:
        for c in (child, collector):
            if c is not None and c.proc.poll() is None:
                c.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.splitlines()[0])
    p.add_argument("--idle", type=float, default=30.0, help="seconds without traffic")
    p.add_argument(
        "--duration", type=float, default=20.0, help="seconds per scale trial (0: idle only)"
    )
    p.add_argument("--only", action="append", metavar="NAME", help="processors containing NAME")
    p.add_argument("--max-delay", metavar="DURATION", help="agents: source.max_delay")
    p.add_argument("--json-out", type=Path)
    args = p.parse_args(argv)

    def chosen(names: tuple[str, ...]) -> list[Processor]:
        procs = [x for x in PROCESSORS if x.name in names]
        procs = [x for x in procs if not args.only or any(o in x.name for o in args.only)]
        if args.max_delay:
            procs = [
                replace(x, max_delay=args.max_delay) if x.kind == "agent" else x for x in procs
            ]
        return procs

    idle_rows, scale_rows = [], []
    with tempfile.TemporaryDirectory(prefix="w1-scale-") as tmp, mosquitto(Path(tmp)) as broker:
        s = Settings(broker.port, Path(tmp), build_models(Path(tmp)))
        for x in chosen(IDLE_PROCESSORS):
            row = idle(s, x, args.idle)
            idle_rows.append(row)
            print(f"idle {x.name}: {row['cpu_pct_of_core']} % of a core", file=sys.stderr)
        for x in chosen(SCALE_PROCESSORS) if args.duration > 0 else []:
            for n in DEVICES:
                t = run_trial(replace(s, devices=n), x, 1000.0, args.duration)
                verdict = "held" if t.held else "; ".join(t.why)
                scale_rows.append(
                    {
                        "name": x.name,
                        "devices": n,
                        "cpu_s_per_1k": t.cpu_s_per_1k,
                        "rss_mb": t.rss_mb,
                        "p50_ms": t.p50_ms,
                        "held": t.held,
                        "why": t.why,
                    }
                )
                print(
                    f"{x.name} {n:,} devices: {t.cpu_s_per_1k} CPU s/1k, {t.rss_mb} MB: {verdict}",
                    file=sys.stderr,
                )
    lines = ["idle (no traffic): % of one core"]
    lines += [f"  {r['name']:<16} {r['cpu_pct_of_core']:>7.3f}" for r in idle_rows]
    lines.append("1,000 msg/s: CPU s per 1,000 samples / peak RSS MB, by devices")
    lines.append("  " + " " * 16 + "".join(f"{n:>18,}" for n in DEVICES))
    for name in dict.fromkeys(r["name"] for r in scale_rows):
        cells = [f"{r['cpu_s_per_1k']} / {r['rss_mb']}" for r in scale_rows if r["name"] == name]
        lines.append(f"  {name:<16}" + "".join(f"{c:>18}" for c in cells))
    result = {
        "bench": "scale",
        "command": "python -m bench.scale " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
        "idle": idle_rows,
        "scale": scale_rows,
    }
    print_result("\n".join(lines), json.dumps(result), args.json_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
