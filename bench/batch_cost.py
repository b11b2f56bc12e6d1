"""The worker's cost per batch: µs per batch and per message of ``Processor.process`` (through
``process_isolated``, as the worker calls it) plus ``period.snapshot``, by batch size.

W1 (``configs/w1.yaml``, the int8 model, 100 devices, the load generator's payloads) with
no broker: each tree runs in its own process, its pipeline warmed up with 4,000 messages
(every window full) before each batch size is timed. With ``--before REV`` that revision,
checked out into a temporary git worktree, is measured too, alternating with this tree
round by round so both see the same machine; the median round is reported. ``--evict MiB``
writes that much memory before each batch (untimed), as the other threads and processes
do while the worker sleeps between batches at low rates. Figures go into docs/performance.md.

    python -m bench.batch_cost --before main
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from contextlib import nullcontext
from pathlib import Path

from bench.trees import ROOT, run_json, worktree


def child_code() -> str:
    return r"""
import json, sys, time
import numpy as np
from agent.config import load_config
from agent.records import Message
from agent.stages import period
from agent.stages.isolate import process_isolated
from agent.stages.processor import build_processor
from bench.loadgen import ROWS, _offset, device_names, value_rows

sizes = [int(x) for x in sys.argv[1].split(",")]
messages, evict = int(sys.argv[2]), int(sys.argv[3])
config = load_config("configs/w1.yaml").pipelines[0]
rows = [r.encode() for r in value_rows()]
devices = 100
topics = [f"plant/line1/{d}/telemetry" for d in device_names(devices)]
scratch = np.zeros(evict << 17, np.float64)  # evict MiB

def batches(p, k, n):
    out = []
    for _ in range(k):
        batch = []
        for _ in range(n):
            i = p.sent % devices
            s = p.seq[i]
            p.seq[i] = s + 1
            p.sent += 1
            body = b'{"ts":%r,"seq":%d,"v":%b}' % (time.time(), s, rows[(s + _offset(i)) % ROWS])
            batch.append(Message(topics[i], body))
        out.append(batch)
    return out

result = {}
for n in sizes:
    p = build_processor(config)
    p.sent, p.seq = 0, [0] * devices
    for batch in batches(p, 4000 // n, n):
        process_isolated(p, batch)
        period.snapshot(p.name, p.summaries, p.period_start)
    todo = batches(p, max(messages // n, 200), n)
    spent = [0.0, 0.0]
    for batch in todo:
        if evict:
            scratch += 1.0
        t0 = time.perf_counter()
        process_isolated(p, batch)
        t1 = time.perf_counter()
        period.snapshot(p.name, p.summaries, p.period_start)
        spent[0] += t1 - t0
        spent[1] += time.perf_counter() - t1
    assert not p.counters.errors, p.counters.errors
    k = len(todo)
    result[n] = {"process": spent[0] / k * 1e6, "snapshot": spent[1] / k * 1e6,
                 "batches": k, "windows": p.counters.windows, "anomalies": p.counters.anomalies}
print(json.dumps(result))
"""


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,4,16,128", help="batch sizes (messages)")
    ap.add_argument("--messages", type=int, default=20_000, help="timed messages per size")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--evict", type=int, default=0, help="MiB written before each batch")
    ap.add_argument("--before", help="a git revision to measure too (e.g. main)")
    args = ap.parse_args(argv)
    from bench.w1 import build_models

    load = os.getloadavg()
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        env = {"W1_MODEL": str(build_models(Path(tmp))["int8"])}
        argv_ = [args.sizes, str(args.messages), str(args.evict)]
        trees = [("this tree", ROOT)]
        with worktree(args.before) if args.before else nullcontext() as before:
            if before is not None:
                trees.insert(0, (f"before ({args.before})", before))
            for _ in range(args.rounds):  # alternating, so both trees see the same machine
                for name, tree in trees:
                    runs.setdefault(name, []).append(run_json(tree, child_code(), argv_, env))
    load = (*load, *os.getloadavg())
    print(json.dumps(runs))
    print(
        f"\nload average {load[0]:.2f} at the start, {load[3]:.2f} at the end; median of "
        f"{args.rounds} rounds; {args.messages:,} messages per size; evict {args.evict} MiB"
    )
    names = list(runs)
    head = " | ".join(f"{n} µs/batch (process + snapshot) | µs/msg" for n in names)
    print(f"| batch | {head} |{' ratio |' if len(names) == 2 else ''}")
    print("|---" * (1 + 2 * len(names) + (len(names) == 2)) + "|")
    for size in args.sizes.split(","):
        cells, totals = [], []
        for n in names:
            proc = statistics.median(r[size]["process"] for r in runs[n])
            snap = statistics.median(r[size]["snapshot"] for r in runs[n])
            totals.append(proc + snap)
            cells.append(
                f"{proc + snap:.1f} ({proc:.1f} + {snap:.1f}) | {totals[-1] / int(size):.1f}"
            )
        ratio = f" {totals[1] / totals[0]:.2f} |" if len(names) == 2 else ""
        print(f"| {size} | {' | '.join(cells)} |{ratio}")


if __name__ == "__main__":
    main()
