"""``edge-agent decode``: run payloads through a pipeline's decoder and show what it makes.

A user's first tool when a payload does not decode. Inputs go through one decoder instance
in order, so stateful protocols (Sparkplug B births, aliases, ``seq``) decode as they would
live. One JSON object per input on stdout: ``samples``, ``devices``, ``ts``, ``seq``,
``values`` (one list per sample, in channel order), ``errors`` (kind -> count), ``rejects``
(reasons), and for camera decoders ``objects`` (label, track, box, confidence, frame);
``states`` and ``control`` when the decoder gave any. Samples the pipeline would drop for
their timestamp (``source.max_clock_skew``) are counted as ``ts_past`` / ``ts_future``.
Exit status: 0 every input decoded cleanly, 1 some had errors, 2 bad arguments or config.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import sys
import time
from pathlib import Path
from typing import cast

import numpy as np
import orjson

from agent.config import PipelineConfig, load_config
from agent.errors import ConfigError, PluginError
from agent.protocols import Decoder
from agent.records import Message, SampleBatch
from agent.registry import Registry
from agent.stages.processor import clock_reason


class UsageError(Exception):
    """Bad arguments or input files: reported on stderr, exit status 2."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge-agent decode",
        description="run payloads through a pipeline's decoder; one JSON object per input",
    )
    p.add_argument("-c", "--config", required=True, help="the agent's config file")
    p.add_argument("--pipeline", help="pipeline name (needed when the config has several)")
    p.add_argument("--topic", help="the topic every FILE arrives on")
    p.add_argument("--messages", help='JSON lines of {"topic", "payload_b64"}, in order')
    p.add_argument("files", nargs="*", help="payload files (with --topic)")
    return p


def read_inputs(args: argparse.Namespace) -> list[tuple[str, Message]]:
    """``(label, message)`` for each input, in order; raises UsageError."""
    if (args.topic is None) == (args.messages is None):
        raise UsageError("give either --topic TOPIC FILE... or --messages FILE.jsonl")
    now = time.time()
    if args.topic is not None:
        if not args.files:
            raise UsageError("--topic needs at least one payload FILE")
        try:
            return [(f, Message(args.topic, Path(f).read_bytes(), now)) for f in args.files]
        except OSError as e:
            raise UsageError(f"cannot read {e.filename}: {e.strerror}") from None
    if args.files:
        raise UsageError("payload FILEs go with --topic, not --messages")
    try:
        lines = Path(args.messages).read_bytes().splitlines()
    except OSError as e:
        raise UsageError(f"cannot read {args.messages}: {e.strerror}") from None
    out = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{args.messages}:{n}"
        try:
            obj = orjson.loads(line)
            topic, payload = obj["topic"], base64.b64decode(obj["payload_b64"], validate=True)
            if not isinstance(topic, str):
                raise TypeError("topic is not a string")
        except (orjson.JSONDecodeError, KeyError, TypeError, binascii.Error) as e:
            raise UsageError(
                f'{where}: expected {{"topic": str, "payload_b64": str}} ({e})'
            ) from None
        out.append((where, Message(topic, payload, now)))
    return out


def pick_pipeline(config_path: str, name: str | None) -> PipelineConfig:
    cfg = load_config(config_path)
    names = [p.name for p in cfg.pipelines]
    if name is None:
        if len(cfg.pipelines) > 1:
            raise UsageError(
                f"{config_path} has several pipelines: give --pipeline, one of {names}"
            )
        return cfg.pipelines[0]
    for p in cfg.pipelines:
        if p.name == name:
            return p
    raise UsageError(f"{config_path}: no pipeline {name!r}; expected one of {names}")


def clock_errors(batch: SampleBatch, skew: float | None, now: float) -> dict[str, int]:
    """The samples ``source.max_clock_skew`` would drop, by kind."""
    if skew is None or not len(batch):
        return {}
    counts = {
        "ts_future": int((batch.ts > now + skew).sum()),
        "ts_past": int((batch.ts < now - skew).sum()),
    }
    return {k: v for k, v in counts.items() if v}


def describe(label: str, msg: Message, batch: SampleBatch, skew: float | None) -> dict:
    """What the decoder made of one input, as a JSON-able dict."""
    clock = clock_errors(batch, skew, time.time())
    out: dict = {
        "input": label,
        "topic": msg.topic,
        "samples": len(batch),
        "devices": batch.devices,
        "ts": batch.ts.tolist(),
        "seq": batch.seq.tolist(),
        "values": batch.values.tolist(),
        "errors": {**batch.errors, **clock},
        "rejects": [f"{kind}: {reason}" for _, kind, reason in batch.rejects],
    }
    if clock:
        assert skew is not None
        now = time.time()
        first = int(np.flatnonzero(np.abs(batch.ts - now) > skew)[0])
        kind = "ts_future" if batch.ts[first] > now else "ts_past"
        reason, hint = clock_reason(batch.devices[first], float(batch.ts[first]), kind, skew, now)
        out["rejects"].append(
            f"{', '.join(clock)}: {reason}; the pipeline drops such samples"
            + (f"; {hint}" if hint else "")
        )
    det = batch.detections
    if det is not None:
        boxes = np.round(det.boxes.astype(np.float64), 3).tolist()
        out["objects"] = [
            {
                "frame": int(det.frame[i]),
                "label": det.labels[i],
                "track": int(det.track[i]),
                "box": boxes[i],
                "confidence": round(float(det.confidence[i]), 4),
            }
            for i in range(len(det))
        ]
    if batch.states:
        out["states"] = [{"device": d, "state": s, "ts": t} for d, s, t in batch.states]
    if batch.control:
        out["control"] = [topic for topic, _ in batch.control]
    return out


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        pipeline = pick_pipeline(args.config, args.pipeline)
        inputs = read_inputs(args)
        # The registry checks a class's config_model; agent.testing.conformance its Protocol.
        decoder = cast(Decoder, Registry().get("decoder", pipeline.decoder.type)(pipeline.decoder))
    except (UsageError, ConfigError, PluginError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    skew = pipeline.source.max_clock_skew
    status = 0
    for label, msg in inputs:
        result = describe(label, msg, decoder.decode_many([msg]), skew)
        status = status or int(bool(result["errors"]))
        sys.stdout.buffer.write(orjson.dumps(result, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")
    sys.stdout.flush()
    return status
