"""Blocks per second per core of the bearing pipeline: decode (JSON, decimation), windows,
features and the ONNX call, in one thread, on real CWRU blocks.

    OMP_NUM_THREADS=1 python -m edge_agent_vibration.bench [--seconds 5] [--batch 64]

Prints one JSON object: per input rate (12 kHz blocks of 1,024 samples; 48 kHz blocks of
4,096 decimated to 1,024) the blocks/s of the whole ``Processor.process`` call, and for the
12 kHz case the stages alone (decode; features; ONNX).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import numpy as np

from . import MODEL, cwru
from .build_model import BLOCK, SAMPLE_RATE
from .evaluate import _meta, payloads, processor
from .features import features


def rate(fn: Callable[[], int], seconds: float) -> float:
    """Items per second of ``fn`` (returns the items it did) over ``seconds``."""
    fn()  # warm
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        done += fn()
    return round(done / (time.perf_counter() - start), 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--batch", type=int, default=64, help="messages per process() call")
    args = ap.parse_args(argv)
    recs = {r.name: r for r in cwru.find(cwru.shipped_root())}
    meta = _meta(MODEL)
    out: dict = {"model": MODEL.name, "batch": args.batch, "threads": 1}
    for name, block in (("1797_IR_7_DE12", BLOCK), ("1797_Normal", 4 * BLOCK)):
        rec = recs[name]
        msgs = payloads(rec, block, "all")[: args.batch]
        proc = processor(MODEL, meta)

        def whole(msgs=msgs, proc=proc) -> int:
            _, scored = proc.process(msgs)
            return len(scored.devices)

        out[f"pipeline_blocks_per_s_{rec.fs // 1000}khz"] = rate(whole, args.seconds)
    msgs = payloads(recs["1797_IR_7_DE12"], BLOCK, "all")[: args.batch]
    proc = processor(MODEL, meta)
    x = proc.decoder.decode_many(msgs).values.reshape(len(msgs), BLOCK, 2)
    shaft = np.full(len(msgs), 29.95)
    f = features(x[:, :, :1], SAMPLE_RATE, shaft)
    session = proc.handler._session
    out["decode_blocks_per_s"] = rate(lambda: len(proc.decoder.decode_many(msgs)) // BLOCK, 2)
    out["features_blocks_per_s"] = rate(
        lambda: len(features(x[:, :, :1], SAMPLE_RATE, shaft)), args.seconds / 2
    )
    out["onnx_blocks_per_s"] = rate(
        lambda: len(session.run(None, {"features": f})[0]), args.seconds / 2
    )
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
