"""The stages of one pipeline: decode -> window -> model -> rule -> aggregate.

:class:`Processor` is single-threaded and I/O-free, so ``run`` (through
:class:`agent.pipeline.Pipeline`), ``evaluate`` and the tests share it.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from . import log
from .aggregate import Summaries
from .config import PipelineConfig
from .isolate import decode_isolated
from .metrics import BatchStats
from .protocols import Decoder, ModelHandler, StreamHandler
from .records import EVENT, STATS, SUMMARY, Message, Record, SampleBatch
from .registry import Registry
from .rule import Hold
from .sequence import Sequences
from .warmup import Warmup
from .windows import CountWindows, DeviceIndex, Groups


@dataclass
class Counters:
    """Pipeline totals since start; ``errors`` by kind."""

    decoded: int = 0
    windows: int = 0
    anomalies: int = 0
    batches: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def add_errors(self, errors: dict[str, int]) -> None:
        for k, v in errors.items():
            self.errors[k] = self.errors.get(k, 0) + v


@dataclass(slots=True)
class Scored:
    """What one :meth:`Processor.process` call scored (for replay and evaluation)."""

    devices: list[str]
    ts: np.ndarray
    seq: np.ndarray
    scores: np.ndarray
    anomalous: np.ndarray
    details: dict[str, np.ndarray] = field(default_factory=dict)


class Processor:
    """The stages of one pipeline over batches of messages; no threads, no I/O."""

    def __init__(
        self,
        config: PipelineConfig,
        decoder: Decoder,
        handler: ModelHandler | StreamHandler,
        *,
        id_prefix: str = "",
        ids: Iterator[int] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = config.name
        self.config = config
        self.decoder = decoder
        self.handler = handler
        self.clock = clock
        w = config.window
        self.index = DeviceIndex(w.max_devices)
        self.windows = CountWindows(self.index, w.size, w.hop, decoder.channels)
        self.summaries = Summaries(self.index)
        self.sequences = Sequences(self.index)
        self.counters = Counters()
        self.batch_stats = BatchStats()
        self.period_errors: dict[str, int] = {}
        self.period_start = time.time()
        self._ids = ids or itertools.count(1)  # shared across rebuilds by the runtime
        self._id_prefix = id_prefix or f"{config.name}-{os.urandom(4).hex()}-"
        self.log = log.get(pipeline=config.name, component="processor")
        self._limit = log.RateLimit(1.0)
        self.rejected: list[tuple[Message, str, str]] = []
        self.control: list[tuple[str, bytes]] = []  # decoder requests, published by the runtime
        self.stateful = bool(getattr(handler, "stateful", False))
        self.hold = Hold(self.index, config.rule.hold) if config.rule.hold else None
        self.warmup = self._new_warmup() if config.calibration is not None else None

    def load(self) -> None:
        """Load the model against this pipeline's window (raises ModelError)."""
        self.handler.load(self.config.window.size, self.decoder.channels)

    def _next_id(self) -> str:
        return f"{self._id_prefix}{next(self._ids)}"

    def _count_errors(self, errors: dict[str, int], rejects: list) -> None:
        self.counters.add_errors(errors)
        for k, v in errors.items():
            self.period_errors[k] = self.period_errors.get(k, 0) + v
        for msg, kind, reason in rejects:
            if self._limit.allow(kind):
                self.log.warning("payload_rejected", kind=kind, topic=msg.topic, reason=reason)
        self.rejected += rejects

    def process(self, messages: Sequence[Message]) -> tuple[list[Record], Scored | None]:
        """Run one batch through every stage; return the events and what was scored."""
        limit = self.config.source.max_payload
        if any(len(m.payload) > limit for m in messages):
            big = [m for m in messages if len(m.payload) > limit]
            messages = [m for m in messages if len(m.payload) <= limit]
            self._count_errors(
                {"too_large": len(big)},
                [(m, "too_large", f"{len(m.payload)} bytes > {limit}") for m in big],
            )
        batch = decode_isolated(self.decoder, messages)
        if batch.errors:
            self._count_errors(batch.errors, batch.rejects)
        self.control += batch.control
        events = [self._record(EVENT, {**st, "pipeline": self.name}) for st in _states(batch)]
        if len(batch) and self.config.source.max_clock_skew is not None:
            self._check_clock(batch)
        if not len(batch):
            return events, None
        slots = self.index.slots(batch.devices)
        if (slots < 0).any():
            full = np.flatnonzero(slots < 0)
            self._count_errors(
                {"device_limit": len(full)},
                [
                    (Message(batch.devices[i], b""), "device_limit", "max_devices reached")
                    for i in full[:1].tolist()
                ],
            )
            keep = np.flatnonzero(slots >= 0)
            slots = slots[keep]
            batch.values, batch.ts, batch.seq = batch.values[keep], batch.ts[keep], batch.seq[keep]
            batch.devices = [batch.devices[i] for i in keep.tolist()]
            if batch.detections is not None:
                batch.detections = batch.detections.take_frames(keep, len(full) + len(keep))
            if not len(slots):  # every sample over the cap: counted above, nothing to add
                return events, None
        self.counters.decoded += len(slots)
        self.counters.batches += 1
        self.index.last_seen[slots] = self.clock()
        groups = Groups.of(slots)
        self.sequences.observe(slots, batch.seq)
        self.summaries.add_samples(groups)
        if self.stateful:  # a StreamHandler keeps its own per-device state: no windows
            found = self.handler.update(batch)
            self.counters.anomalies += len(found)
            for payload in found:
                events.append(self._record(EVENT, {**payload, "pipeline": self.name}))
            return events, None
        calibrated = (
            self.warmup.push(slots, batch.values, groups, self.handler) if self.warmup else None
        )
        due, windows = self.windows.push(slots, batch.values, groups)
        if calibrated is not None:  # windows ending inside a device's warm-up are not scored
            keep = calibrated[due]
            due, windows = due[keep], windows[keep]
        if not len(due):
            return events, None
        started = time.perf_counter()
        if self.warmup:
            scores = np.asarray(self.warmup.score(self.handler, slots[due], windows), np.float64)
            threshold = self.warmup.threshold[slots[due]]
        else:
            scores = np.asarray(self.handler.infer(windows), np.float64)
            threshold = np.full(len(due), self.handler.threshold)
        self.batch_stats.observe(len(due), time.perf_counter() - started)
        anomalous = scores > threshold
        if self.hold:
            anomalous = self.hold.apply(slots[due], anomalous)
        self.summaries.add_scores(slots[due], scores, anomalous)
        self.counters.windows += len(due)
        scored = Scored(
            [batch.devices[i] for i in due.tolist()],
            batch.ts[due],
            batch.seq[due],
            scores,
            anomalous,
            dict(getattr(self.handler, "last_details", {})),
        )
        hits = np.flatnonzero(anomalous)
        if len(hits):
            self.counters.anomalies += len(hits)
            describe = getattr(self.handler, "describe", None)
            extra = describe(hits) if describe else [{}] * len(hits)
            for i, more in zip(hits.tolist(), extra):
                device = scored.devices[i]
                payload = {
                    "device": device,
                    "ts": float(scored.ts[i]),
                    "seq": int(scored.seq[i]),
                    "score": float(scores[i]),
                    "threshold": float(threshold[i]),
                    "pipeline": self.name,
                    **more,
                }
                events.append(Record(EVENT, self.name, device, payload, self._next_id()))
        return events, scored

    def _check_clock(self, batch: SampleBatch) -> None:
        """Drop samples stamped more than ``max_clock_skew`` from now (counted, logged)."""
        skew, now = self.config.source.max_clock_skew, time.time()
        if now - skew <= batch.ts.min() and batch.ts.max() <= now + skew:
            return  # the common case: two reductions instead of five array operations
        future, past = batch.ts > now + skew, batch.ts < now - skew
        bad = future | past
        errors = {k: int(m.sum()) for k, m in (("ts_future", future), ("ts_past", past))}
        first = int(np.flatnonzero(bad)[0])
        kind = "ts_future" if future[first] else "ts_past"
        reason = f"device {batch.devices[first]}: ts {batch.ts[first]:.3f} is {kind[3:]}"
        self._count_errors({k: v for k, v in errors.items() if v}, [])
        if self._limit.allow(kind):
            self.log.warning("sample_rejected", kind=kind, reason=reason, skew=skew)
        keep = np.flatnonzero(~bad)
        batch.values, batch.ts, batch.seq = batch.values[keep], batch.ts[keep], batch.seq[keep]
        batch.devices = [batch.devices[i] for i in keep.tolist()]
        if batch.detections is not None:
            batch.detections = batch.detections.take_frames(keep, len(bad))

    def _record(self, kind: str, payload: dict) -> Record:
        return Record(kind, self.name, str(payload.get("device", "")), payload, self._next_id())

    def keeps_windows_of(self, old: Processor) -> bool:
        """Whether ``old``'s windows fit this processor (same window, channels, kind)."""
        return (
            old.config.window == self.config.window
            and old.decoder.channels == self.decoder.channels
            and not (self.stateful or old.stateful)
        )

    def adopt(self, old: Processor) -> bool:
        """Take over ``old``'s totals, and its windows when window and channels are unchanged.

        Returns whether the windows (and the period's per-device summaries) were kept.
        """
        self.counters, self.batch_stats = old.counters, old.batch_stats
        self.period_errors, self.period_start = old.period_errors, old.period_start
        self._ids, self._id_prefix = old._ids, old._id_prefix
        same = self.keeps_windows_of(old)
        self.sequences.gap, self.sequences.repeat = old.sequences.gap, old.sequences.repeat
        if same:
            self.index, self.windows, self.summaries = old.index, old.windows, old.summaries
            self.sequences = old.sequences
            if self.hold:  # open anomalies are not carried over; the state follows the index
                self.hold = Hold(self.index, self.hold.hold)
            if self.warmup is not None:  # state indexed by the adopted index's slots
                self.warmup = old.warmup if self._keeps_warmup_of(old) else self._new_warmup()
        return same

    def _new_warmup(self) -> Warmup:
        config, handler = self.config, self.handler
        auto = getattr(getattr(handler, "config", None), "threshold", None) == "auto"
        assert config.calibration is not None
        return Warmup(
            self.index,
            config.calibration,
            config.window.size,
            self.decoder.channels,
            auto,
            float(handler.threshold),
        )

    def _keeps_warmup_of(self, old: Processor) -> bool:
        """Learned normalisers and thresholds still hold: same calibration, handler, model."""
        return (
            old.warmup is not None
            and old.config.calibration == self.config.calibration
            and old.config.handler == self.config.handler
            and getattr(old.handler, "sha256", None) == getattr(self.handler, "sha256", None)
        )

    def flush(self, extra_stats: dict | None = None) -> list[Record]:
        """Per-device summaries of the period just ended, then one stats record."""
        now = time.time()
        start, self.period_start = self.period_start, now
        records = []
        extra = {}
        if self.stateful:  # the handler's own per-device summaries join the core ones
            extra = {str(x["device"]): x for x in self.handler.flush()}
        core = self.summaries.flush()
        seen = {s["device"] for s in core}
        for s in [*core, *[{"device": d} for d in extra if d not in seen]]:
            s.update(extra.pop(s["device"], {}))
            s.update(pipeline=self.name, period_start=start, period_end=now)
            records.append(Record(SUMMARY, self.name, s["device"], s, self._next_id()))
        stats = {
            "pipeline": self.name,
            "period_start": start,
            "period_end": now,
            "devices": len(self.index),
            "decoded": self.counters.decoded,
            "windows": self.counters.windows,
            "anomalies": self.counters.anomalies,
            "errors": dict(self.counters.errors),
            "period_errors": self.period_errors,
            **(extra_stats or {}),
        }
        self.period_errors = {}
        records.append(Record(STATS, self.name, "", stats, self._next_id()))
        evicted = self.index.evict_idle(self.clock() - self.config.window.ttl)
        if evicted:
            self.log.info("devices_evicted", count=evicted, devices=len(self.index))
        return records


def _states(batch) -> list[dict]:
    return [{"device": d, "state": st, "ts": ts} for d, st, ts in batch.states]


def build_processor(
    config: PipelineConfig,
    registry: Registry | None = None,
    id_prefix: str = "",
    ids: Iterator[int] | None = None,
) -> Processor:
    """A pipeline's decoder, handler and processor, its model loaded, checked and warmed up."""
    registry = registry or Registry()
    decoder = registry.get("decoder", config.decoder.type)(config.decoder)
    handler = registry.get("handler", config.handler.type)(config.handler)
    processor = Processor(config, decoder, handler, id_prefix=id_prefix, ids=ids)
    processor.load()
    return processor
