"""``edge-agent replay``: backtest a pipeline on recorded CSV rows with the code ``run`` uses.

Rows become the messages the config's JSON decoder expects (its topic filter, device, ts,
seq and value fields) and go through the same :class:`agent.stages.processor.Processor` (windows,
warm-up calibration, handler, rule, episodes), all devices merged in time order, as fast as
the machine allows, on the recorded timestamps (no clock-skew rejection). Each row gets the
score and flags of its device's latest scored window; with labels (1 = anomalous row) the
episodes are scored the way an operator sees them (see :func:`episode_metrics`).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

from agent.config import PipelineConfig
from agent.decoders.json_fields import JsonDecoderConfig
from agent.errors import AgentError
from agent.records import EVENT, Message
from agent.stages.processor import build_processor
from agent.tools.decode_tool import UsageError, pick_pipeline

BATCH = 1024
DAY = 86400.0


class ReplayError(AgentError):
    """A recording that cannot be replayed through the pipeline (named file and column)."""


@dataclass
class Recording:
    """One device's rows in time order: ``values[n, channels]``, ``ts[n]``, optional labels."""

    device: str
    ts: np.ndarray
    values: np.ndarray
    labels: np.ndarray | None = None


@dataclass
class Trace:
    """What replay gives for one device's rows: the latest scored window's score, threshold,
    anomalous flag and open-episode flag at each row (NaN / False before the first)."""

    score: np.ndarray
    threshold: np.ndarray
    anomalous: np.ndarray
    open: np.ndarray
    scored: np.ndarray  # the row ended a scored window
    details: dict[str, np.ndarray] = field(default_factory=dict)  # handler outputs by name


@dataclass
class Result:
    traces: dict[str, Trace]
    events: list[dict]
    recordings: list[Recording]
    stats: dict = field(default_factory=dict)


# -- CSV --------------------------------------------------------------------------------------
def _parse_times(raw: list[str], where: str) -> np.ndarray:
    try:
        return np.array([float(x) for x in raw], np.float64)
    except ValueError:
        pass
    try:
        stamps = np.array([x.strip().replace(" ", "T") for x in raw], dtype="datetime64[ms]")
    except ValueError as e:
        raise ReplayError(f"{where}: not unix seconds or ISO 8601 times ({e})") from None
    return stamps.astype(np.int64) / 1000.0


def read_csv(
    path: Path,
    columns: Sequence[str] | None,
    time_column: str | None,
    device_column: str | None,
    label_column: str | None,
) -> list[Recording]:
    """Rows of ``path`` (delimiter sniffed) as recordings, one per device (else per file)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise ReplayError(f"{path}: {e.strerror}") from None
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    rows = list(csv.reader(text.splitlines(), dialect))
    if len(rows) < 2:
        raise ReplayError(f"{path}: no rows after the header")
    header, body = [h.strip() for h in rows[0]], rows[1:]
    for name, col in (("--time-column", time_column), ("--device-column", device_column)):
        if col is not None and col not in header:
            raise ReplayError(f"{path}: {name} {col!r} is not a column; columns: {header}")
    if label_column is not None and label_column not in header:
        raise ReplayError(f"{path}: --label-column {label_column!r} is not a column: {header}")
    special = {time_column, device_column, label_column}
    wanted = list(columns) if columns else [h for h in header if h not in special]
    missing = [c for c in wanted if c not in header]
    if missing:
        raise ReplayError(f"{path}: no column {missing}; columns: {header}")
    idx = [header.index(c) for c in wanted]
    try:
        values = np.array([[float(r[i]) for i in idx] for r in body], np.float64)
    except (ValueError, IndexError) as e:
        raise ReplayError(f"{path}: a value column is not numeric ({e})") from None
    if time_column is None:
        ts = np.arange(len(body), dtype=np.float64)
    else:
        ts = _parse_times([r[header.index(time_column)] for r in body], f"{path}: {time_column}")
    labels = None
    if label_column is not None:
        labels = np.array([float(r[header.index(label_column)] or 0) for r in body]) > 0
    devices = (
        np.array([r[header.index(device_column)] for r in body])
        if device_column
        else np.full(len(body), path.stem)
    )
    out = []
    for d in dict.fromkeys(devices.tolist()):
        sel = np.flatnonzero(devices == d)
        sel = sel[np.argsort(ts[sel], kind="stable")]
        out.append(Recording(d, ts[sel], values[sel], labels[sel] if labels is not None else None))
    return out


# -- the replay -------------------------------------------------------------------------------
def _topic(pattern: str, device: str) -> str:
    return "/".join(device if part in ("+", "#") else part for part in pattern.split("/"))


def _json_decoder(pipe: PipelineConfig) -> JsonDecoderConfig:
    """The pipeline's decoder settings; replay writes the JSON decoder's payloads only."""
    dec = pipe.decoder
    if not isinstance(dec, JsonDecoderConfig):
        raise ReplayError(f"pipeline {pipe.name}: replay needs a `json` decoder, not {dec.type}")
    return dec


def _encoder(pipe: PipelineConfig):
    """A function (device, ts, seq, row) -> Message in the shape the JSON decoder reads."""
    dec = _json_decoder(pipe)
    topic = pipe.source.topics[0]
    if topic.startswith("$share/"):  # $share/<group>/<filter>
        topic = topic.split("/", 2)[2]
    by_topic = dec.device.startswith("topic[")
    fields = list(dec.fields or [])

    def encode(device: str, t: float, seq: int, row: np.ndarray) -> Message:
        body: dict = {dec.values: row.tolist()} if not fields else dict(zip(fields, row.tolist()))
        if dec.ts:
            body[dec.ts] = t
        if dec.seq:
            body[dec.seq] = seq
        if not by_topic:
            body[dec.device] = device
        return Message(_topic(topic, device), orjson.dumps(body), t)

    return encode


def replay(
    pipe: PipelineConfig,
    recordings: list[Recording],
    progress: bool = False,
    registry=None,
    details: Sequence[str] = (),
) -> Result:
    """Run every recording through a processor built from ``pipe`` (clock rule off); the
    handler's ``details`` outputs are traced per row too."""
    pipe = pipe.model_copy(
        update={"source": pipe.source.model_copy(update={"max_clock_skew": None})}
    )
    dec = _json_decoder(pipe)
    channels = len(dec.fields or []) or dec.channels
    for r in recordings:
        if r.values.shape[1] != channels:
            raise ReplayError(
                f"device {r.device}: {r.values.shape[1]} value columns, but the pipeline's "
                f"decoder expects {channels} (choose them with --columns)"
            )
    proc = build_processor(pipe, registry)
    encode = _encoder(pipe)
    # All devices' rows merged in time order (a stable sort keeps each device's order).
    dev = np.concatenate([np.full(len(r.ts), k) for k, r in enumerate(recordings)])
    row = np.concatenate([np.arange(len(r.ts)) for r in recordings])
    ts = np.concatenate([r.ts for r in recordings])
    order = np.argsort(ts, kind="stable")
    dev, row = dev[order], row[order]
    n = len(order)
    traces = {r.device: _empty_trace(len(r.ts), details) for r in recordings}
    names = [r.device for r in recordings]
    position = {d: k for k, d in enumerate(names)}
    events: list[dict] = []
    for lo in range(0, n, BATCH):
        k, i = dev[lo : lo + BATCH], row[lo : lo + BATCH]
        msgs = [
            encode(names[a], float(recordings[a].ts[b]), int(b), recordings[a].values[b])
            for a, b in zip(k.tolist(), i.tolist())
        ]
        records, scored = proc.process(msgs)
        events += [r.payload for r in records if r.kind == EVENT]
        if scored is not None:
            _mark(traces, [recordings[position[d]] for d in scored.devices], scored)
        if progress:
            _progress(min(lo + BATCH, n), n)
    events += [r.payload for r in proc.close_episodes("end") if r.kind == EVENT]
    stats = next((r.payload for r in proc.flush() if r.kind == "stats"), {})
    for t in traces.values():
        _forward_fill(t)
    return Result(traces, events, recordings, stats)


def _empty_trace(n: int, details: Sequence[str]) -> Trace:
    return Trace(
        np.full(n, np.nan),
        np.full(n, np.nan),
        np.zeros(n, bool),
        np.zeros(n, bool),
        np.zeros(n, bool),
        {name: np.full(n, np.nan) for name in details},
    )


def _mark(traces: dict[str, Trace], recs: list[Recording], scored) -> None:
    """Write each scored window's outputs on the row it ended on: the row number replay put
    in ``seq``, or (a decoder without seq) the device's row with that timestamp."""
    for j, rec in enumerate(recs):
        seq = int(scored.seq[j])
        r = seq if seq >= 0 else int(np.searchsorted(rec.ts, scored.ts[j], side="right")) - 1
        t = traces[rec.device]
        t.score[r] = scored.scores[j]
        if scored.thresholds is not None:
            t.threshold[r] = scored.thresholds[j]
        t.anomalous[r] = scored.anomalous[j]
        t.open[r] = scored.open[j] if scored.open is not None else scored.anomalous[j]
        t.scored[r] = True
        for name, arr in t.details.items():
            arr[r] = scored.details[name][j]


def _forward_fill(t: Trace) -> None:
    """Each row takes the outputs of its device's latest scored window."""
    idx = np.where(t.scored, np.arange(len(t.scored)), -1)
    np.maximum.accumulate(idx, out=idx)
    has = idx >= 0
    for name in ("score", "threshold", "anomalous", "open"):
        setattr(t, name, _filled(getattr(t, name), idx, has))
    t.details = {name: _filled(arr, idx, has) for name, arr in t.details.items()}


def _filled(arr: np.ndarray, idx: np.ndarray, has: np.ndarray) -> np.ndarray:
    out = arr.copy()
    out[has] = arr[idx[has]]
    return out


def _progress(done: int, total: int) -> None:
    width = 30
    filled = int(width * done / max(total, 1))
    sys.stderr.write(f"\rreplay [{'#' * filled}{'.' * (width - filled)}] {done}/{total} rows")
    if done >= total:
        sys.stderr.write("\n")
    sys.stderr.flush()


# -- scoring ----------------------------------------------------------------------------------
def runs(labels: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs of True as (first, last) row indices."""
    x = np.concatenate([[False], labels.astype(bool), [False]])
    edges = np.flatnonzero(x[1:] != x[:-1])
    return list(zip(edges[::2].tolist(), (edges[1::2] - 1).tolist()))


def episode_metrics(result: Result) -> dict:
    """Rows, devices, episodes; with labels also the operator's view of them.

    ``labelled``: maximal runs of label 1 per device. ``detected``: runs in which an episode
    opened (its `opened` event's time inside the run). ``false_episodes``: episodes opened
    outside every run; ``false_per_device_day`` over the replayed time. ``delay_*``: from a
    run's first row to the first opening in it. Point-wise ``f1``, ``far_pct``, ``mar_pct``
    over rows after each device's first scored window, each row flagged by its latest window.
    """
    opened = [e for e in result.events if e.get("event") == "opened"]
    by_device: dict[str, list[float]] = {}
    for e in opened:
        by_device.setdefault(e["device"], []).append(float(e["ts"]))
    out: dict = {
        "rows": int(sum(len(r.ts) for r in result.recordings)),
        "devices": len(result.recordings),
        "episodes": len(opened),
    }
    if all(r.labels is None for r in result.recordings):
        return out
    labelled = detected = false = 0
    delays: list[float] = []
    span = 0.0
    tp = fp = fn = tn = 0
    for rec in result.recordings:
        labels = rec.labels if rec.labels is not None else np.zeros(len(rec.ts), bool)
        span += float(rec.ts[-1] - rec.ts[0]) if len(rec.ts) else 0.0
        times = np.array(sorted(by_device.get(rec.device, [])))
        inside = np.zeros(len(times), bool)
        for a, b in runs(labels):
            labelled += 1
            hit = (times >= rec.ts[a]) & (times <= rec.ts[b])
            inside |= hit
            if hit.any():
                detected += 1
                delays.append(float(times[hit][0] - rec.ts[a]))
        false += int((~inside).sum())
        trace = result.traces[rec.device]
        seen = np.maximum.accumulate(trace.scored)
        y, p = labels[seen], trace.anomalous[seen]
        tp += int((y & p).sum())
        fp += int((~y & p).sum())
        fn += int((y & ~p).sum())
        tn += int((~y & ~p).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    out.update(
        labelled=labelled,
        detected=detected,
        false_episodes=false,
        false_per_device_day=round(false / (span / DAY), 3) if span > 0 else None,
        delay_p50_s=round(float(np.percentile(delays, 50)), 3) if delays else None,
        delay_p90_s=round(float(np.percentile(delays, 90)), 3) if delays else None,
        f1=round(2 * precision * recall / (precision + recall), 4) if precision + recall else 0.0,
        far_pct=round(100 * fp / (fp + tn), 2) if fp + tn else 0.0,
        mar_pct=round(100 * fn / (fn + tp), 2) if fn + tp else 0.0,
    )
    return out


# -- outputs ----------------------------------------------------------------------------------
def write_events(result: Result, path: Path) -> None:
    with open(path, "wb") as f:
        for e in result.events:
            f.write(orjson.dumps(e) + b"\n")


def write_scores(result: Result, path: Path) -> None:
    """One CSV line per row: device, ts, score, threshold, anomalous, open, label."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["device", "ts", "score", "threshold", "anomalous", "open", "label"])
        for rec in result.recordings:
            t = result.traces[rec.device]
            labels = rec.labels
            for k in range(len(rec.ts)):
                score = "" if np.isnan(t.score[k]) else f"{t.score[k]:.6g}"
                thr = "" if np.isnan(t.threshold[k]) else f"{t.threshold[k]:.6g}"
                label = "" if labels is None else int(labels[k])
                w.writerow(
                    [
                        rec.device,
                        f"{rec.ts[k]:.3f}",
                        score,
                        thr,
                        int(t.anomalous[k]),
                        int(t.open[k]),
                        label,
                    ]
                )


PLOT_KEYS = ("episodes", "labelled", "detected", "false_episodes", "f1", "far_pct", "mar_pct")


def pyplot():
    """matplotlib's pyplot (Agg); checked before a run so a missing one costs nothing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise AgentError("--plot needs matplotlib: pip install 'edge-stream-agent[plot]'") from e
    return plt


def plot(result: Result, out: Path, title: str, devices: int = 6) -> None:
    """Score and threshold per device (first ``devices``), labelled runs shaded, episodes
    as spans from onset to close; the legend beside the plots, not over the peaks."""
    plt = pyplot()
    recs = result.recordings[:devices]
    fig, axes = plt.subplots(len(recs), 1, figsize=(15, 2.2 * len(recs) + 0.6), squeeze=False)
    closed = {(e["device"], e["episode"]): e for e in result.events if e.get("event") == "closed"}
    for ax, rec in zip(axes[:, 0], recs):
        t = result.traces[rec.device]
        x = rec.ts - rec.ts[0]
        if rec.labels is not None:
            for a, b in runs(rec.labels):
                ax.axvspan(x[a], x[b], color="tab:red", alpha=0.15, lw=0, label="labelled")
        ax.plot(x, t.score, lw=0.6, label="score")
        ax.plot(x, t.threshold, lw=0.8, color="k", ls="--", label="threshold")
        for e in result.events:
            if e.get("event") == "opened" and e["device"] == rec.device:
                end = closed.get((rec.device, e["episode"]), {}).get("closed_at", rec.ts[-1])
                ax.axvspan(
                    e["onset"] - rec.ts[0], end - rec.ts[0], color="tab:orange", alpha=0.3,
                    label="episode (onset to close)",
                )  # fmt: skip
        ax.set_ylabel(f"{rec.device}\nscore", fontsize=8)
    handles: dict[str, object] = {}  # legend label -> artist, first one drawn
    for ax in axes[:, 0]:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    fig.legend(handles.values(), handles.keys(), loc="upper right", fontsize=8)
    axes[-1, 0].set_xlabel("seconds from each device's first row")
    fig.suptitle(title, x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    fig.savefig(out, dpi=100)
    plt.close(fig)


def print_result(result: dict, as_json: bool) -> None:
    """One JSON object, or a two-column table (the replay and evaluate commands)."""
    if as_json:
        print(json.dumps(result))
        return
    width = max(len(k) for k in result)
    for k, v in result.items():
        print(f"{k:<{width}}  {v}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="edge-agent replay", description=__doc__.splitlines()[0].split(": ", 1)[-1]
    )
    p.add_argument("-c", "--config", type=Path, required=True, help="the agent's config")
    p.add_argument("--pipeline", help="pipeline name (default: the first)")
    p.add_argument("--csv", type=Path, nargs="+", required=True, metavar="FILE")
    p.add_argument("--device-column", help="column naming the device (else one per file)")
    p.add_argument("--time-column", help="unix seconds or ISO 8601 (else the row number)")
    p.add_argument("--label-column", help="1 = anomalous row: score the episodes against it")
    p.add_argument("--columns", help="value columns in channel order, comma-separated")
    p.add_argument("--events", type=Path, help="write the events as JSON lines")
    p.add_argument("--scores", type=Path, help="write per-row scores and flags as CSV")
    p.add_argument("--plot", type=Path, help="draw scores, thresholds, labels and episodes")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    try:
        if args.plot:
            pyplot()  # before the run, not after it
        pipe = pick_pipeline(str(args.config), args.pipeline)
        columns = (
            args.columns.split(",") if args.columns else list(_json_decoder(pipe).fields or [])
        )
        recordings: list[Recording] = []
        for path in args.csv:
            recordings += read_csv(
                path, columns or None, args.time_column, args.device_column, args.label_column
            )
        result = replay(pipe, recordings, progress=not args.json)
        metrics = episode_metrics(result)
        if args.events:
            write_events(result, args.events)
        if args.scores:
            write_scores(result, args.scores)
        if args.plot:
            summary = ", ".join(f"{k} {v}" for k, v in metrics.items() if k in PLOT_KEYS)
            plot(result, args.plot, f"replay: {pipe.name}" + (f" ({summary})" if summary else ""))
            print(f"plot written to {args.plot}", file=sys.stderr)
    except (AgentError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_result(metrics, args.json)
    return 0


def recordings_of(
    items: Iterable[tuple[str, np.ndarray, np.ndarray, np.ndarray | None]],
) -> list[Recording]:
    """Recordings from (device, values, ts, labels) tuples (the evaluate presets)."""
    return [Recording(d, np.asarray(ts, np.float64), np.asarray(v), lab) for d, v, ts, lab in items]
