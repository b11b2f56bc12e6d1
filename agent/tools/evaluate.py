"""``edge-agent evaluate skab|ai4i``: replay a labelled dataset through the pipeline code.

Presets of ``edge-agent replay`` (:mod:`agent.tools.replay`): the rows become JSON messages and go
through the same :class:`agent.stages.processor.Processor` as ``run`` (decoder, windows, warm-up
calibration, handler, rule, episodes), then the scored windows and the episodes are compared
with the labels.

- SKAB: each of the 34 anomaly files is one device; its first 400 rows are the warm-up
  (normaliser and ``threshold: auto``), every later row is scored by the hop-1 window that
  ends on it; pointwise F1/FAR/MAR and the changepoint scores, pooled (BASELINES.json).
- AI4I: the fixed stratified 20 % test split, one row per window, through the classifier
  kind (``onnx_classifier``); binary F1, precision, recall, PR-AUC of ``1 - P(none)``,
  macro-F1 and per-mode precision/recall of the most likely class.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from agent.config import parse_config
from agent.errors import AgentError, ConfigError
from agent.handlers.onnx_model import resolve_model, sha256_of
from agent.tools import replay

DEFAULT_MODELS = {"skab": "builtin:skab_pump_ae_int8", "ai4i": "builtin:ai4i_pdm"}
AI4I_T0 = 1.6e9  # the held-out products replayed one per second from here


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


def evaluate_skab(
    model: str, root: str | None, handler: str = "onnx", rule: dict | None = None
) -> dict:
    """Replay SKAB (each file a device) through the pipeline code; a shipped model brings its
    manifest's window, calibration and rule, which ``rule`` (e.g. ``{"hold": 5}``) overrides.
    The files are separate experiments, not one line: the flood guard is off."""
    from agent.tools.training import datasets, metrics

    files = _dataset(lambda: datasets.skab_files(root))
    warm = datasets.SKAB_WARMUP
    spec = {"type": handler, "threshold": "auto"}
    size, calibration = 32, {"warmup": warm}
    if handler != "baseline":
        spec["model"] = model
        size, calibration, shipped = _manifest_settings(model, size, calibration)
        rule = {**shipped, **(rule or {})}
    rule = {"flood": None, **(rule or {})}
    cfg = parse_config(
        _pipeline({"channels": 8}, {"size": size, "hop": 1}, spec, calibration, rule), "evaluate"
    )
    recordings = replay.recordings_of(
        (f"f{i}", f.values, f.ts, f.anomaly > 0) for i, f in enumerate(files)
    )
    result = replay.replay(cfg.pipelines[0], recordings, progress=True)
    preds, scores, thresholds = [], [], []
    for rec, f in zip(recordings, files):
        trace = result.traces[rec.device]
        if not trace.scored[warm:].all() or trace.scored[:warm].any():
            raise AgentError(f"{f.name}: rows after the warm-up were not all scored")
        preds.append(trace.anomalous[warm:].astype(np.int8))
        scores.append(trace.score[warm:])
        thresholds.append(float(trace.threshold[-1]))
    out = metrics.skab_all(
        [f.ts[warm:] for f in files],
        [f.anomaly[warm:] for f in files],
        [f.changepoint[warm:] for f in files],
        preds,
    )
    plot = {
        "scores": scores,
        "thresholds": thresholds,
        "labels": [f.anomaly[warm:] for f in files],
        "detections": preds,
    }
    return {"metrics": out, "episodes": _episode_keys(result), "plot": plot, "result": result}


def _episode_keys(result: replay.Result) -> dict:
    """The replay's episode figures, with ``opened_per_labelled`` (pointwise F1, FAR and MAR
    come from the dataset's own metric definitions instead)."""
    keys = replay.episode_metrics(result)
    for k in ("f1", "far_pct", "mar_pct"):
        keys.pop(k, None)
    if keys.get("labelled"):
        keys["opened_per_labelled"] = round(keys["episodes"] / keys["labelled"], 3)
    return keys


def _manifest_settings(model: str, size: int, calibration: dict) -> tuple[int, dict, dict]:
    """A shipped model's window size, calibration parameters and rule settings (``hold`` and
    the recommended episode rule) from its manifest entry."""
    from agent.models import manifest

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
    rule.update(entry.get("threshold", {}).get("episodes", {}))
    return int(entry.get("window", {}).get("size", size)), calibration, rule


def evaluate_ai4i(model: str, root: str | None) -> dict:
    """The held-out products in order, one per second, as one machine's rows (size-1
    windows); the failure score, mode and pipeline decision against the labels."""
    from agent.tools.training import datasets, metrics

    data = _dataset(lambda: datasets.ai4i(root))
    test = data.test
    cfg = parse_config(
        _pipeline(
            {"channels": data.x.shape[1]},
            {"size": 1, "hop": 1},
            {"type": "onnx_classifier", "model": model, "threshold": 0.5},
            None,
            {"flood": None},
        ),
        "evaluate",
    )
    ts = AI4I_T0 + np.arange(len(test), dtype=np.float64)
    recordings = replay.recordings_of([("machine", data.x[test], ts, data.failure[test] > 0)])
    result = replay.replay(cfg.pipelines[0], recordings, progress=True, details=["class"])
    trace = result.traces["machine"]
    mode = trace.details["class"].astype(np.int64)  # most likely class
    modes = data.modes.shape[1]
    onehot = np.eye(modes + 1, dtype=np.int64)[mode][:, 1:]  # class 0 is "no failure"
    out = metrics.ai4i_metrics(
        data.failure[test], trace.score, data.modes[test], onehot, threshold=0.5
    ) | metrics.per_class(data.modes[test], onehot, datasets.AI4I_MODES)
    out["f1_pipeline"] = metrics.binary_f1(data.failure[test], trace.anomalous)[0]
    plot = {
        "scores": [trace.score],
        "thresholds": [0.5],
        "labels": [data.failure[test]],
        "detections": [trace.anomalous],
    }
    return {"metrics": out, "episodes": _episode_keys(result), "plot": plot, "result": result}


def _dataset(load):
    try:
        return load()
    except FileNotFoundError as e:
        raise DatasetError(str(e)) from None


TITLE_KEYS = (
    "f1",
    "macro_f1",
    "far_pct",
    "mar_pct",
    "cp_standard",
    "labelled",
    "detected",
    "false_episodes",
)


def figure(plot: dict, title: str, metrics: dict):
    """Score over threshold per row, files concatenated (boundaries dotted), labelled rows
    shaded, and the pipeline's detections as ticks under the curve: hits, false alarms and
    missed labelled rows, so each kind of error can be seen. The legend sits beside the axes
    (never over a peak); the metrics go in the title."""
    plt = replay.pyplot()
    ratio = np.concatenate([s / t for s, t in zip(plot["scores"], plot["thresholds"])])
    labels = np.concatenate(plot["labels"]).astype(bool)
    flagged = np.concatenate(plot["detections"]).astype(bool)
    fig, ax = plt.subplots(figsize=(15, 4.5))
    x = np.arange(len(ratio))
    band = ax.get_xaxis_transform()
    ax.fill_between(
        x, 0, 1, where=labels, transform=band, color="tab:red", alpha=0.12, lw=0,
        label="labelled anomaly",
    )  # fmt: skip
    ax.plot(x, ratio, lw=0.6, label="score / threshold")
    ax.axhline(1.0, color="k", lw=0.8, ls="--", label="threshold")
    for k, (mask, color, name) in enumerate(
        (
            (flagged & labels, "tab:green", "detected (labelled)"),
            (flagged & ~labels, "tab:orange", "false alarm"),
            (~flagged & labels, "tab:red", "missed (labelled, not flagged)"),
        )
    ):
        ax.vlines(
            x[mask], 0.01 + 0.03 * k, 0.03 + 0.03 * k, transform=band, color=color, lw=0.8,
            label=name,
        )  # fmt: skip
    ends = np.cumsum([len(s) for s in plot["scores"]])[:-1]
    if len(ends):
        ax.vlines(ends, 0, 1, transform=band, color="0.5", lw=0.5, ls=":", label="file boundary")
    ax.set_yscale("log")
    top = float(np.nanmax(ratio)) if np.isfinite(ratio).any() else 1.0
    ax.set_ylim(top=max(top, 1.0) * 3)  # headroom above the highest peak
    ax.set_ylabel("score / threshold (log)")
    ax.set_xlabel("scored row (files concatenated, warm-up rows left out)")
    shown = ", ".join(f"{k} {metrics[k]}" for k in TITLE_KEYS if k in metrics)
    ax.set_title(f"{title}\n{shown}" if shown else title, loc="left")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.tight_layout()
    return fig


def draw(plot: dict, out: Path, title: str, metrics: dict | None = None) -> None:
    """Write :func:`figure` to a PNG."""
    plt = replay.pyplot()
    fig = figure(plot, title, metrics or {})
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["cmapss"]:  # run-to-failure engines: remaining useful life, own module
        from agent.tools.evaluate_rul import main as cmapss_main

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
        if args.plot:
            replay.pyplot()  # before the run, not after it
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
            draw(
                out["plot"],
                args.plot,
                f"{args.dataset}: {name}",
                {**out["metrics"], **out["episodes"]},
            )
            print(f"plot written to {args.plot}", file=sys.stderr)
    except (AgentError, ConfigError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = {
        "dataset": args.dataset,
        "model": name,
        "sha256": digest,
        **out["metrics"],
        **out["episodes"],
    }
    replay.print_result(result, args.json)
    return 0
