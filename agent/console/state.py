"""What the console shows, as one JSON document: ``/api/state``.

Built on request from state the agent keeps anyway (counters, the device index, warm-up,
episodes, the per-period summaries' last scores), copied under each pipeline's lock; the
only state of its own is the history ring (:mod:`agent.console.history`), sampled by the
scheduler every 2 s, a ring of recent events fed by the emitter (events only, which are
rare), and message/record totals for the rates. A built document is reused for a second, so
several open browsers cost what one does.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from agent import __version__
from agent.console.history import TICK, History
from agent.protocols import Thresholded
from agent.records import EVENT, Record

if TYPE_CHECKING:
    from agent.config import MetricsConfig
    from agent.runtime.unit import RunningPipeline
    from agent.runtime.view import RunningAgent
    from agent.stages.processor import Processor

EVENTS_KEPT = 500  # recent events across pipelines (about 0.5 KB each)
DEVICE_EVENTS = 30  # recent events shown on a device page
CACHE_SECONDS = 1.0
# A pipeline's figures on the overview, from its one stats snapshot.
OVERVIEW = ("received", "dropped", "queued", "decoded", "windows", "anomalies", "errors", "devices")


@dataclass
class Totals:
    """A pipeline's messages in and records out at the last tick, and the rates since."""

    received: int = 0
    records_out: int = 0
    at: float = 0.0
    rate_in: float = 0.0
    rate_out: float = 0.0


class Console:
    """The console's view of one agent: samples history, keeps recent events, builds state."""

    def __init__(self, agent: RunningAgent, config: MetricsConfig) -> None:
        self.agent = agent
        pipelines = max(1, len(agent.config.pipelines))
        self._budget = config.history_mb * (1 << 20) / pipelines
        self._span = config.history
        self.histories: dict[str, History] = {}
        self.events: deque[tuple[str, dict]] = deque(maxlen=EVENTS_KEPT)
        self.records_out: dict[str, int] = {}
        self.totals: dict[str, Totals] = {}
        self._cache: dict[str, tuple[float, bytes]] = {}
        self._cache_lock = threading.Lock()

    # -- fed by the runtime ----------------------------------------------------------------
    def take(self, pipeline: str, records: list[Record]) -> None:
        """Count a pipeline's records going upstream and keep its events (the emitter)."""
        self.records_out[pipeline] = self.records_out.get(pipeline, 0) + len(records)
        for r in records:
            if r.kind == EVENT:
                self.events.append((pipeline, r.payload))

    def tick(self) -> None:
        """Sample every pipeline's scores into its history and update the rates (every
        :data:`TICK` s, from the scheduler)."""
        now, mono = time.time(), time.monotonic()
        for name, p in self.agent.units.items():
            history = self.histories.get(name)
            if history is None:
                history = self.histories[name] = History(self._span, self._budget)
            with p.lock:
                proc = p.processor
                history.sample(proc.index, proc.summaries.take_recent(), _thresholds(proc), now)
            t = self.totals.setdefault(name, Totals(at=mono))
            received, out = p.intake.received, self.records_out.get(name, 0)
            if mono > t.at:
                t.rate_in = (received - t.received) / (mono - t.at)
                t.rate_out = (out - t.records_out) / (mono - t.at)
            t.received, t.records_out, t.at = received, out, mono

    # -- served ----------------------------------------------------------------------------
    def state_json(self, query: dict[str, str]) -> bytes:
        """``state(query)`` as JSON, reused for :data:`CACHE_SECONDS` per query."""
        key = orjson.dumps(sorted(query.items())).decode()
        now = time.monotonic()
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit is not None and now - hit[0] < CACHE_SECONDS:
                return hit[1]
        body = orjson.dumps(self.state(query), option=orjson.OPT_SERIALIZE_NUMPY)
        with self._cache_lock:
            if len(self._cache) > 32:
                self._cache.clear()
            self._cache[key] = (now, body)
        return body

    def state(self, query: dict[str, str]) -> dict[str, Any]:
        """The document: overview always; device tables unless ``devices=0``; a device's
        page with ``pipeline`` and ``device``; the last ``events`` events (default 50)."""
        agent = self.agent
        with_tables = query.get("devices", "1") != "0"
        spool, units = agent.spool, agent.units
        doc: dict[str, Any] = {
            "agent": {"id": agent.config.agent.id, "boot": agent.boot, "version": __version__},
            "time": time.time(),
            "tick": TICK,
            "brokers": [
                {"broker": b, "role": r, "connected": up} for b, r, up in agent.connection_states()
            ],
            "spool": {**spool.stats(), "oldest_age": spool.oldest_age()} if spool else None,
            "sinks": [
                {"name": f.name, "delivered": f.delivered, "failures": f.failures}
                for unit in units.values()
                for f in unit.forwarders
            ],
            "pipelines": [self._pipeline(u, with_tables) for u in units.values()],
        }
        try:
            limit = min(max(int(query.get("events", 50)), 0), EVENTS_KEPT)
        except ValueError:
            limit = 50
        events = list(self.events)
        doc["events"] = [{"pipeline": n, **e} for n, e in events[::-1][:limit]]
        if "device" in query:
            doc["device"] = self._device(query.get("pipeline", ""), query["device"], events)
        return doc

    def _pipeline(self, p: RunningPipeline, with_table: bool) -> dict[str, Any]:
        with p.lock:
            proc = p.processor
            s = p.stats()
            out: dict[str, Any] = {
                "name": p.name,
                **{k: s[k] for k in OVERVIEW},
                "episodes_open": s.get("episodes_open"),
                "warmup": proc.warmup.n if proc.warmup else None,
                "failed": None if p.error is None else repr(p.error),
            }
            table = _table(proc) if with_table else None
        t = self.totals.get(p.name, Totals())
        records = self.records_out.get(p.name, 0)
        out.update(
            rate_in=round(t.rate_in, 1),
            rate_out=round(t.rate_out, 2),
            records_out=records,
            reduction=round(out["received"] / records, 1) if records else None,
        )
        if table is not None:
            out["table"] = table
        return out

    def _device(self, pipeline: str, device: str, events: list) -> dict[str, Any] | None:
        p = self.agent.units.get(pipeline)
        if p is None:
            return None
        history = self.histories.get(pipeline)
        with p.lock:
            proc = p.processor
            slot = proc.index.slot_of.get(device)
            if slot is None:
                return None
            row = {k: v[0] for k, v in _table(proc, np.array([slot], np.int64)).items()}
            sampled = history is not None and history.index is proc.index
            series = (
                history.series(slot)
                if sampled and history is not None
                else {"t": [], "score": [], "threshold": []}
            )
        mine = [e for n, e in events if n == pipeline and e.get("device") == device]
        return {
            "pipeline": pipeline,
            **row,
            "history": series,
            "events": mine[::-1][:DEVICE_EVENTS],
        }


def _thresholds(proc: Processor) -> np.ndarray:
    """Each slot's threshold now: its calibrated one, else the handler's (NaN: none)."""
    if proc.warmup is not None:
        thr = proc.warmup.threshold.copy()
        thr[proc.warmup.count < proc.warmup.n] = np.nan
        return thr
    try:
        value = float(proc.handler.threshold) if isinstance(proc.handler, Thresholded) else np.nan
    except (TypeError, ValueError):
        value = np.nan
    return np.full(proc.index.capacity, value)


def _table(proc: Processor, slots: np.ndarray | None = None) -> dict[str, list]:
    """The device table of one pipeline, by column (compact JSON for thousands of rows).
    The caller holds the pipeline lock."""
    index = proc.index
    if slots is None:
        names = list(index.slot_of)
        slots = np.fromiter(index.slot_of.values(), np.int64, len(names))
    else:
        names = [index.names[s] for s in slots.tolist()]
    table: dict[str, list] = {
        "device": names,
        "seen": np.round(proc.clock() - index.last_seen[slots], 1).tolist(),
        "score": np.round(proc.summaries.last[slots], 4).tolist(),
        "threshold": np.round(_thresholds(proc)[slots], 4).tolist(),
    }
    if proc.warmup is not None:
        done = np.minimum(proc.warmup.count[slots] / proc.warmup.n, 1.0)
        table["warmup"] = np.round(done, 3).tolist()
    e = proc.episodes
    if e is not None:
        is_open = e.open[slots]
        table["episode"] = [e.ids.get(s) if o else None for s, o in zip(slots.tolist(), is_open)]
        levels = e.level[slots].tolist()
        table["severity"] = [
            ("critical" if lv else "warning") if o else None for lv, o in zip(levels, is_open)
        ]
        table["since"] = np.where(is_open, e.onset[slots], np.nan).round(2).tolist()
        table["peak"] = np.where(is_open, e.peak[slots], np.nan).round(4).tolist()
    return table
