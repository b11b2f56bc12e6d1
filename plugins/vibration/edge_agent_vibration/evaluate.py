"""``edge-agent evaluate cwru [--data DIR] [--json]``: replay CWRU bearing recordings as block
payloads through ``vibration_block`` and ``bearing_condition`` in an agent Processor.

Each recording is one device; each payload is one block at the recording's own rate
(``fs``: 12 kHz fault files, 48 kHz normal baselines, decimated by the decoder) with the
``rpm`` from the file name. A window's predicted class is the most probable one; an event
is what the pipeline raises (``1 - P(normal)`` over the threshold). Without ``--data`` the
held-out part (last 30 % in time) of ``datasets/cwru`` is replayed; with ``--data`` every
block of every recording found (``--part heldout`` to keep only the held-out part).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
import orjson

from agent.config import parse_config
from agent.errors import AgentError
from agent.records import Message
from agent.stages.processor import Processor, build_processor
from agent.tools.replay import print_result

from . import MODEL, cwru
from .handler import model_metadata

BATCH = 64


def _meta(model: Path) -> dict:
    import onnxruntime as ort

    if not model.is_file():
        raise AgentError(f"{model}: model file not found")
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return model_metadata(sess)


def payloads(
    rec: cwru.Recording, block: int, part: str, topic: str = "eval/{device}", t0: float = 0.0
) -> list[Message]:
    """The recording's ``part`` in ``block``-sample blocks at its own rate, as
    ``vibration_block`` messages on ``topic``, the first block stamped ``t0``."""
    raw = rec.split(block)[1] if part == "heldout" else rec.split(block, 1.0)[0]
    return [
        Message(
            topic.format(device=rec.name),
            orjson.dumps(
                {"ts": t0 + i * block / rec.fs, "fs": rec.fs, "rpm": rec.rpm, "v": v},
                option=orjson.OPT_SERIALIZE_NUMPY,
            ),
        )
        for i, v in enumerate(raw.astype(np.float32))
    ]


def processor(model: Path, meta: dict) -> Processor:
    pipe = {
        "name": "evaluate-cwru",
        "source": {
            "broker": "none",
            "topics": ["eval/+"],
            "max_clock_skew": None,
            "max_payload": 1 << 20,
        },
        "decoder": {
            "type": "vibration_block",
            "device": "topic[1]",
            "sample_rate": meta["sample_rate"],
            "shaft_speed": True,
        },
        "window": {"size": meta["window_size"], "hop": meta["window_size"]},
        "handler": {"type": "bearing_condition", "model": str(model)},
        "sinks": [{"type": "stdout"}],
    }
    cfg = parse_config({"brokers": {"none": {}}, "pipelines": [pipe]}, "evaluate cwru")
    return build_processor(cfg.pipelines[0])


def evaluate(root: Path, part: str, model: Path = MODEL) -> dict:
    """Replay, then accuracy, balanced accuracy (mean recall of the classes present),
    confusion (true -> predicted -> blocks) and how many blocks raised events."""
    meta = _meta(model)
    classes, rate, size = meta["classes"], meta["sample_rate"], meta["window_size"]
    recs = cwru.find(root)
    proc = processor(model, meta)
    truth, pred, events, rows = [], [], [], {}
    for rec in recs:
        block = size * rec.fs // rate if rec.fs % rate == 0 else size
        msgs = payloads(rec, block, part)
        hits = np.zeros(0, bool)
        probs = np.zeros((0, len(classes)))
        for lo in range(0, len(msgs), BATCH):
            _, scored = proc.process(msgs[lo : lo + BATCH])
            if scored is None:
                continue
            p = np.stack([scored.details[f"p_{c}"] for c in classes], axis=1)
            probs, hits = np.concatenate([probs, p]), np.concatenate([hits, scored.anomalous])
        got = probs.argmax(axis=1)
        truth += [rec.label] * len(got)
        pred += [classes[k] for k in got]
        events += hits.tolist()
        rows[rec.name] = {
            "label": rec.label,
            "blocks": len(got),
            "accuracy": round(float(np.mean([classes[k] == rec.label for k in got])), 4)
            if len(got)
            else None,
            "events": int(hits.sum()),
        }
    return _summary(np.asarray(truth), np.asarray(pred), np.asarray(events, bool), classes) | {
        "part": part,
        "rejected": dict(proc.counters.errors),
        "recordings": rows,
    }


def _summary(truth: np.ndarray, pred: np.ndarray, events: np.ndarray, classes: list) -> dict:
    present = [c for c in classes if (truth == c).any()]
    normal = truth == "normal"
    return {
        "blocks": len(truth),
        "classes": present,
        "accuracy": round(float((truth == pred).mean()), 4) if len(truth) else None,
        "balanced_accuracy": round(
            float(np.mean([(pred[truth == c] == c).mean() for c in present])), 4
        )
        if present
        else None,
        "confusion": {
            c: {p: int(((truth == c) & (pred == p)).sum()) for p in classes} for c in present
        },
        "normal_blocks_with_event": int(events[normal].sum()),
        "fault_blocks_with_event": int(events[~normal].sum()),
        "fault_blocks": int((~normal).sum()),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="edge-agent evaluate cwru", description=__doc__.splitlines()[0]
    )
    p.add_argument("--data", type=Path, help="folder searched for CWRU .npz recordings")
    p.add_argument("--part", choices=["heldout", "all"], help="default: heldout without --data")
    p.add_argument("--model", type=Path, default=MODEL, help="default: the shipped model")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    part = args.part or ("all" if args.data else "heldout")
    try:
        out = evaluate(args.data or cwru.shipped_root(), part, args.model)
    except (AgentError, FileNotFoundError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    digest = hashlib.sha256(args.model.read_bytes()).hexdigest()
    result = {"dataset": "cwru", "model": str(args.model), "sha256": digest, **out}
    print_result(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
