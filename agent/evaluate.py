"""``edge-agent evaluate skab|ai4i``: replay a labelled dataset through the pipeline code.

The rows become JSON messages and go through the same :class:`agent.processor.Processor` as
``run`` (decoder, windows, warm-up calibration, handler, threshold rule), then the scored
windows are compared with the labels.

- SKAB: each of the 34 anomaly files is one device; its first 400 rows are the warm-up
  (normaliser and ``threshold: auto``), every later row is scored by the hop-1 window that
  ends on it; pointwise F1/FAR/MAR and the changepoint scores, pooled (BASELINES.json).
- AI4I: the fixed stratified 20 % test split, one row per window, through the classifier
  kind (``onnx_classifier``); binary F1, precision, recall, PR-AUC of ``1 - P(none)``,
  macro-F1 and per-mode precision/recall of the most likely class.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import orjson

from .config import parse_config
from .errors import AgentError, ConfigError
from .handlers.onnx_model import resolve_model, sha256_of
from .processor import Processor, build_processor
from .records import Message

DEFAULT_MODELS = {"skab": "builtin:skab_pump_ae_int8", "ai4i": "builtin:ai4i_pdm"}
BATCH = 1024


class DatasetError(AgentError):
    """A dataset path that does not exist or does not hold the expected files."""


def _pipeline(
    decoder: dict, window: dict, handler: dict, calibration: dict | None, rule: dict | None = None
) -> dict:
    pipe = {
        "name": "evaluate",
        "source": {"broker": "none", "topics": ["eval/+"], "max_clock_skew": None},
        "decoder": {"type": "json", "device": "topic[1]", **decoder},
        "window": window,
        "handler": handler,
        "sinks": [{"type": "stdout"}],
    }
    if calibration:
        pipe["calibration"] = calibration
    if rule:
        pipe["rule"] = rule
    return {"brokers": {"none": {}}, "pipelines": [pipe]}


def _progress(done: int, total: int, what: str) -> None:
    width = 30
    filled = int(width * done / max(total, 1))
    sys.stderr.write(f"\r{what} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    if done >= total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def replay(
    proc: Processor, devices: Iterable[tuple[str, np.ndarray, np.ndarray]], total: int, what: str
) -> dict[str, dict[str, np.ndarray]]:
    """Feed each device's rows (values, ts) through ``proc``; scores by device and row."""
    out: dict[str, dict[str, list]] = {}
    for k, (device, values, ts) in enumerate(devices):
        msgs = [
            Message(
                f"eval/{device}",
                orjson.dumps({"ts": float(t), "seq": i, "v": row.tolist()}),
                0.0,
            )
            for i, (row, t) in enumerate(zip(values, ts))
        ]
        for lo in range(0, len(msgs), BATCH):
            _, scored = proc.process(msgs[lo : lo + BATCH])
            if scored is None:
                continue
            for j, d in enumerate(scored.devices):
                rec = out.setdefault(d, {"seq": [], "score": [], "anomalous": [], "details": []})
                rec["seq"].append(int(scored.seq[j]))
                rec["score"].append(float(scored.scores[j]))
                rec["anomalous"].append(bool(scored.anomalous[j]))
                rec["details"].append({n: v[j] for n, v in scored.details.items()})
        _progress(k + 1, total, what)
    return {d: {k: np.asarray(v) for k, v in rec.items()} for d, rec in out.items()}


def evaluate_skab(
    model: str, root: str | None, handler: str = "onnx", rule: dict | None = None
) -> dict:
    """Replay SKAB through a Processor; a shipped model brings its manifest's window,
    calibration and threshold rule, which ``rule`` (e.g. ``{"hold": 5}``) overrides."""
    from .training import datasets, metrics

    files = _dataset(lambda: datasets.skab_files(root))
    warm = datasets.SKAB_WARMUP
    spec = {"type": handler, "threshold": "auto"}
    size, calibration = 32, {"warmup": warm}
    if handler != "baseline":
        spec["model"] = model
        size, calibration, shipped = _manifest_settings(model, size, calibration)
        rule = {**shipped, **(rule or {})}
    cfg = parse_config(
        _pipeline({"channels": 8}, {"size": size, "hop": 1}, spec, calibration, rule), "evaluate"
    )
    proc = build_processor(cfg.pipelines[0])
    names = [f"f{i}" for i in range(len(files))]
    scored = replay(proc, ((n, f.values, f.ts) for n, f in zip(names, files)), len(files), "skab")
    preds, scores, thresholds = [], [], []
    for n, f in zip(names, files):
        rec = scored[n]
        if rec["seq"].tolist() != list(range(warm, len(f.values))):
            raise AgentError(f"{f.name}: rows after the warm-up were not all scored")
        preds.append(rec["anomalous"].astype(np.int8))
        scores.append(rec["score"])
        thresholds.append(float(proc.warmup.threshold[proc.index.slot_of[n]]))
    result = metrics.skab_all(
        [f.ts[warm:] for f in files],
        [f.anomaly[warm:] for f in files],
        [f.changepoint[warm:] for f in files],
        preds,
    )
    plot = {"scores": scores, "thresholds": thresholds, "labels": [f.anomaly[warm:] for f in files]}
    return {"metrics": result, "plot": plot}


def _manifest_settings(model: str, size: int, calibration: dict) -> tuple[int, dict, dict]:
    """A shipped model's window size, calibration parameters and threshold rule settings
    (``rule: {hold}``) from its manifest entry."""
    from .models import manifest

    entry = manifest().get(model.removeprefix("builtin:")) if model.startswith("builtin:") else None
    if not entry:
        return size, calibration, {}
    norm = entry.get("normalisation", {}).get("params", {})
    thr = entry.get("threshold", {}).get("params", {})
    calibration = {
        **calibration,
        **{k: norm[k] for k in ("rel_floor",) if k in norm},
        **{k: thr[k] for k in ("quantile", "factor") if k in thr},
    }
    hold = entry.get("threshold", {}).get("hold")
    rule = {"hold": hold} if hold else {}
    return int(entry.get("window", {}).get("size", size)), calibration, rule


def evaluate_ai4i(model: str, root: str | None) -> dict:
    from .training import datasets, metrics

    data = _dataset(lambda: datasets.ai4i(root))
    test = data.test
    cfg = parse_config(
        _pipeline(
            {"channels": data.x.shape[1]},
            {"size": 1, "hop": 1},
            {"type": "onnx_classifier", "model": model, "threshold": 0.5},
            None,
        ),
        "evaluate",
    )
    proc = build_processor(cfg.pipelines[0])
    now = np.full(len(test), time.time())
    rec = replay(proc, [("machine", data.x[test], now)], 1, "ai4i")["machine"]
    mode = np.array([d["class"] for d in rec["details"]], np.int64)  # most likely class
    modes = data.modes.shape[1]
    onehot = np.eye(modes + 1, dtype=np.int64)[mode][:, 1:]  # class 0 is "no failure"
    result = metrics.ai4i_metrics(
        data.failure[test], rec["score"], data.modes[test], onehot, threshold=0.5
    ) | metrics.per_class(data.modes[test], onehot, datasets.AI4I_MODES)
    result["f1_pipeline"] = metrics.binary_f1(data.failure[test], rec["anomalous"])[0]
    plot = {"scores": [rec["score"]], "thresholds": [0.5], "labels": [data.failure[test]]}
    return {"metrics": result, "plot": plot}


def _dataset(load):
    try:
        return load()
    except FileNotFoundError as e:
        raise DatasetError(str(e)) from None


def draw(plot: dict, out: Path, title: str) -> None:
    """Score over threshold per row, pooled, with the labelled anomalies shaded."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise AgentError("--plot needs matplotlib: pip install 'edge-stream-agent[plot]'") from e
    ratio = np.concatenate([s / t for s, t in zip(plot["scores"], plot["thresholds"])])
    labels = np.concatenate(plot["labels"]).astype(bool)
    fig, ax = plt.subplots(figsize=(14, 4))
    x = np.arange(len(ratio))
    ax.fill_between(
        x,
        0,
        1,
        where=labels,
        transform=ax.get_xaxis_transform(),
        color="tab:red",
        alpha=0.15,
        label="labelled anomaly",
    )
    ax.plot(x, ratio, lw=0.6, label="score / threshold")
    ax.axhline(1.0, color="k", lw=0.8, ls="--", label="threshold")
    ax.set_yscale("log")
    ax.set_xlabel("scored row (files concatenated)")
    ax.set_title(title)
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["cmapss"]:  # run-to-failure engines: remaining useful life, own module
        from .evaluate_rul import main as cmapss_main

        return cmapss_main(argv[1:])
    if argv[:1] == ["cwru"]:  # bearing data: evaluated by the vibration plugin's own module
        try:
            from edge_agent_vibration.evaluate import main as cwru_main
        except ImportError:
            print("error: evaluate cwru needs pip install ./plugins/vibration", file=sys.stderr)
            return 2
        return cwru_main(argv[1:])
    p = argparse.ArgumentParser(prog="edge-agent evaluate", description=__doc__.splitlines()[0])
    p.add_argument("dataset", choices=["skab", "ai4i"])
    p.add_argument("--model", help="an .onnx file or builtin:NAME (default: the shipped one)")
    p.add_argument(
        "--handler",
        choices=["onnx", "baseline"],
        default="onnx",
        help="skab only: baseline = the model-free per-device PCA handler",
    )
    p.add_argument(
        "--data", help="folder holding skab/ and ai4i2020/ (default: datasets/ of the clone)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    p.add_argument("--plot", type=Path, help="draw score, threshold and labels to a PNG")
    args = p.parse_args(argv)
    model = args.model or DEFAULT_MODELS[args.dataset]
    try:
        if args.handler == "baseline":
            name, digest = "baseline", ""
        else:
            path = resolve_model(model)
            if not path.is_file():
                raise DatasetError(f"{path}: model file not found")
            name, digest = model, sha256_of(path)
        if args.dataset == "skab":
            out = evaluate_skab(model, args.data, args.handler)
        else:
            out = evaluate_ai4i(model, args.data)
        if args.plot:
            draw(out["plot"], args.plot, f"{args.dataset}: {name}")
    except (AgentError, ConfigError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = {"dataset": args.dataset, "model": name, "sha256": digest, **out["metrics"]}
    if args.json:
        print(json.dumps(result))
    else:
        width = max(len(k) for k in result)
        for k, v in result.items():
            print(f"{k:<{width}}  {v}")
    return 0
