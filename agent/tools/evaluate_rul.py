"""``edge-agent evaluate cmapss [--data DIR] [--json]``: replay turbofan engines through the
pipeline of ``configs/turbofan-rul.yaml`` and score the remaining-useful-life estimate.

Each engine is a device publishing one JSON reading per cycle (``cycle`` is its sequence
number); the estimate at each engine's last cycle is scored against the true RUL: RMSE and
the PHM08 score (late estimates cost more), and how often the conformal interval holds the
(capped) truth.

- Without ``--data``: the held-out engines of the shipped split (never used in training or
  calibration). Each is cut at the seeded points of
  :func:`agent.tools.training.cmapss.validation_cuts` and every cut replayed as its own engine
  (``"split": "validation"``); each is also replayed
  whole, run to failure, for the warning figures: the share of engines whose episode opened
  at least ``--lead`` cycles before failure, and the lead times.
- With ``--data DIR`` holding NASA's ``test_FD001.txt`` and ``RUL_FD001.txt``: the standard
  test protocol (``"split": "test"``); the warning figure is then the share of engines due
  (true RUL under the limit) that are in an open episode at their last cycle, and of those
  not due.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import orjson

from agent.config import parse_config
from agent.errors import AgentError, ConfigError
from agent.handlers.onnx_model import resolve_model, sha256_of
from agent.records import Message
from agent.stages.processor import Processor, build_processor
from agent.tools.training import cmapss, datasets, metrics

DEFAULT_MODEL = "builtin:cmapss_rul"
LIMIT = 30.0
BATCH = 2048


def pipeline(model: str = DEFAULT_MODEL, limit: float = LIMIT) -> dict:
    """The turbofan pipeline of ``configs/turbofan-rul.yaml`` (without its broker and sinks,
    and without the flood guard)."""
    return {
        "name": "turbofan",
        "source": {"broker": "none", "topics": ["turbofan/+/cycle"], "max_clock_skew": None},
        "decoder": {
            "type": "json",
            "device": "topic[1]",
            "ts": "ts",
            "seq": "cycle",
            "fields": list(cmapss.SENSORS),
        },
        "window": {"size": cmapss.WINDOW, "hop": 1},
        "handler": {"type": "onnx_regression", "model": model, "limit": limit},
        # engines are replayed one after another on one clock of cycles: the flood guard
        # (openings per period of sample time) would count a fleet's lifetimes as a burst
        "rule": {"reset_on_restart": True, "flood": None},
        "sinks": [{"type": "stdout"}],
    }


def messages(device: str, rows: np.ndarray, columns: tuple[str, ...], t0: float = 0.0):
    """One JSON reading per cycle (cycle 1 first), as an engine would publish them."""
    names = list(columns)
    return [
        Message(
            f"turbofan/{device}/cycle",
            orjson.dumps(
                {"ts": t0 + c, "cycle": c + 1, **dict(zip(names, row))},
                option=orjson.OPT_SERIALIZE_NUMPY,
            ),
        )
        for c, row in enumerate(rows)
    ]


def replay(proc: Processor, engines: list[tuple[str, list[Message]]]) -> dict[str, dict]:
    """Feed each engine's readings; per device: the last estimate, its interval and cycle,
    and the cycle at which its first episode opened (None if none)."""
    out: dict[str, dict] = {}
    for _, msgs in engines:
        for lo in range(0, len(msgs), BATCH):
            events, scored = proc.process(msgs[lo : lo + BATCH])
            for e in events:
                p = e.payload
                if p.get("event") == "opened":
                    out.setdefault(p["device"], {}).setdefault("opened", p["seq"])
            if scored is None:
                continue
            d = scored.details
            for j, dev in enumerate(scored.devices):
                rec = out.setdefault(dev, {})
                rec.update(
                    cycle=int(scored.seq[j]),
                    rul=float(d["rul"][j]),
                    low=float(d["low"][j]),
                    high=float(d["high"][j]),
                    open=bool(scored.open[j]) if scored.open is not None else False,
                )
    return out


def _scores(truth: dict[str, int], got: dict[str, dict]) -> dict:
    scored = [k for k in truth if "rul" in got.get(k, {})]
    true = np.array([truth[k] for k in scored], np.float64)
    est = np.array([got[k]["rul"] for k in scored])
    capped = np.minimum(true, cmapss.CAP)
    low = np.array([got[k]["low"] for k in scored])
    high = np.array([got[k]["high"] for k in scored])
    return {
        "engines": len(scored),
        "unscored": sorted(set(truth) - set(scored)),
        **metrics.rul_scores(true, est),
        "rmse_vs_capped": round(float(np.sqrt(np.mean((est - capped) ** 2))), 3),
        "interval_coverage": round(float(np.mean((low <= capped) & (capped <= high))), 3),
    }


def evaluate_validation(model: str, limit: float, lead: int, root: str | None) -> dict:
    data = datasets.cmapss_train(root)
    held = cmapss.split(data.engines())["held_out"]
    cuts = cmapss.validation_cuts(data, held)
    proc = _processor(model, limit)
    engines, truth = [], {}
    for k, (unit, seen, rul) in enumerate(cuts):
        name = f"e{unit}-cut{k}"
        engines.append((name, messages(name, data.engine(unit)[:seen], data.columns)))
        truth[name] = rul
    whole = {f"e{u}": len(data.engine(u)) for u in held}
    engines += [(n, messages(n, data.engine(int(n[1:])), data.columns)) for n in whole]
    got = replay(proc, engines)
    leads = [whole[n] - got[n]["opened"] if "opened" in got.get(n, {}) else None for n in whole]
    warned = [x for x in leads if x is not None]
    return {
        "split": "validation",
        **_scores(truth, got),
        "held_out_engines": held,
        "lead": lead,
        "warned": round(sum(x >= lead for x in warned) / len(whole), 3),
        "never_warned": len(whole) - len(warned),
        "lead_median": float(np.median(warned)) if warned else None,
        "lead_min": min(warned) if warned else None,
        "lead_max": max(warned) if warned else None,
    }


def evaluate_test(model: str, limit: float, folder: str) -> dict:
    data = datasets.cmapss_test(folder)
    proc = _processor(model, limit)
    names = {f"t{u}": u for u in data.engines()}
    got = replay(proc, [(n, messages(n, data.engine(u), data.columns)) for n, u in names.items()])
    truth = {n: data.rul[u] for n, u in names.items()}
    due = [n for n in names if truth[n] < limit]
    fine = [n for n in names if truth[n] >= limit]
    flagged = {n for n in names if got.get(n, {}).get("open")}
    return {
        "split": "test",
        **_scores(truth, got),
        "due_flagged": round(len(flagged & set(due)) / len(due), 3) if due else None,
        "not_due_flagged": round(len(flagged & set(fine)) / len(fine), 3) if fine else None,
    }


def _processor(model: str, limit: float) -> Processor:
    cfg = parse_config({"brokers": {"none": {}}, "pipelines": [pipeline(model, limit)]}, "cmapss")
    return build_processor(cfg.pipelines[0])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="edge-agent evaluate cmapss", description=__doc__.splitlines()[0]
    )
    p.add_argument("--data", help="folder with test_FD001.txt and RUL_FD001.txt (NASA test)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="an .onnx file or builtin:NAME")
    p.add_argument("--limit", type=float, default=LIMIT, help="due limit (cycles)")
    p.add_argument("--lead", type=int, default=10, help="warned at least this many cycles ahead")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    try:
        path = resolve_model(args.model)
        if not path.is_file():
            raise AgentError(f"{path}: model file not found")
        if args.data:
            out = evaluate_test(args.model, args.limit, args.data)
        else:
            out = evaluate_validation(args.model, args.limit, args.lead, None)
    except (AgentError, ConfigError, KeyError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = {"dataset": "cmapss", "model": args.model, "sha256": sha256_of(Path(path)), **out}
    if args.json:
        print(json.dumps(result))
    else:
        width = max(len(k) for k in result)
        for k, v in result.items():
            print(f"{k:<{width}}  {v}")
    return 0
