"""Memory of a pipeline with warm-up on, at many devices: RSS before and after a change.

Each tree (this checkout, and ``--before REV`` checked out into a temporary git worktree)
runs in its own process: the W1 model and pipeline with ``calibration.warmup``, then
``--rounds`` rounds of one sample from each of ``--devices`` devices, in batches of
``max_batch`` through ``Processor.process`` (no broker: this measures the stages' memory).
Reported per tree: RSS after building the pipeline, after each round, and the peak
(VmHWM), in MiB. Figures go into docs/performance.md.

    python -m bench.warmup_memory --before main --devices 100000 --warmup 400
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.trees import ROOT, run_json, worktree


def child_code() -> str:
    return r"""
import json, sys, tempfile, time
from pathlib import Path
import numpy as np, orjson
from agent.config import parse_config
from agent.stages.processor import build_processor
from agent.records import Message
from agent.tools.training import w1

devices, rounds, warmup = (int(x) for x in sys.argv[1:4])

def rss():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {k: round(int(fields[k].split()[0]) / 1024, 1) for k in ("VmRSS", "VmHWM")}

model = w1.build(Path(tempfile.mkdtemp()))[0]
cfg = parse_config({
    "brokers": {"local": {}},
    "pipelines": [{
        "name": "w1",
        "source": {"broker": "local", "topics": ["plant/+/+/telemetry"]},
        "decoder": {"type": "json", "device": "topic[2]", "channels": 8},
        "window": {"size": 32, "hop": 8, "max_devices": devices},
        "calibration": {"warmup": warmup},
        "handler": {"type": "onnx_autoencoder", "model": str(model), "threshold": "auto"},
        "sinks": [{"type": "stdout"}],
    }],
}, "bench").pipelines[0]
p = build_processor(cfg)
out = {"built": rss(), "rounds": []}
rng = np.random.default_rng(1)
topics = [f"plant/line1/dev{d:06d}/telemetry" for d in range(devices)]
step = cfg.max_batch
started, now = time.perf_counter(), time.time()
for k in range(rounds):
    values = (1 + rng.normal(0, 0.05, (devices, 8))).round(4).tolist()
    for lo in range(0, devices, step):
        msgs = [
            Message(topics[d], orjson.dumps({"ts": now + k, "seq": k, "v": values[d]}))
            for d in range(lo, min(lo + step, devices))
        ]
        p.process(msgs)
        p.rejected.clear()  # what the pipeline hands to the dead-letter path
    out["rounds"].append(rss())
out["decoded"] = p.counters.decoded
out["devices"] = len(p.index)
out["errors"] = p.counters.errors
out["warmup_deferred"] = int(getattr(p.warmup, "deferred", 0))
out["seconds"] = round(time.perf_counter() - started, 1)
print(json.dumps(out))
"""


def run_tree(tree: Path, args: argparse.Namespace) -> dict:
    return run_json(tree, child_code(), [str(args.devices), str(args.rounds), str(args.warmup)])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3, help="samples per device")
    ap.add_argument("--warmup", type=int, default=400, help="calibration.warmup")
    ap.add_argument("--before", help="a git revision to measure too (e.g. main)")
    args = ap.parse_args(argv)
    results = {}
    if args.before:
        with worktree(args.before) as before:
            results[f"before ({args.before})"] = run_tree(before, args)
    results["this tree"] = run_tree(ROOT, args)
    print(json.dumps(results, indent=1))
    print(f"\n{args.devices:,} devices, warmup {args.warmup}, {args.rounds} rounds")
    print("| tree | RSS built (MiB) | RSS after each round | peak (VmHWM) | deferred |")
    print("| --- | --- | --- | --- | --- |")
    for name, r in results.items():
        after = " / ".join(f"{x['VmRSS']:.0f}" for x in r["rounds"])
        peak = max(x["VmHWM"] for x in r["rounds"])
        print(
            f"| {name} | {r['built']['VmRSS']:.0f} | {after} | {peak:.0f} | "
            f"{r['warmup_deferred']:,} |"
        )


if __name__ == "__main__":
    main()
