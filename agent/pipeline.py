"""One pipeline: decode -> window -> model -> rule -> aggregate, and its worker thread.

:class:`Processor` holds the stages and is single-threaded and I/O-free, so ``run``,
``replay`` and ``evaluate`` share it. :class:`Pipeline` drives a processor from an intake in
a worker thread and writes its records to the spool.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from . import log
from .aggregate import Summaries
from .config import PipelineConfig
from .intake import Intake
from .protocols import Decoder, ModelHandler
from .records import EVENT, STATS, SUMMARY, Message, Record
from .windows import CountWindows, DeviceIndex


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


class Processor:
    """The stages of one pipeline over batches of messages; no threads, no I/O."""

    def __init__(
        self,
        config: PipelineConfig,
        decoder: Decoder,
        handler: ModelHandler,
        *,
        id_prefix: str = "",
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
        self.counters = Counters()
        self.period_errors: dict[str, int] = {}
        self.period_start = time.time()
        self._ids = itertools.count(1)
        self._id_prefix = id_prefix or f"{config.name}-{os.urandom(4).hex()}-"
        self.log = log.get(pipeline=config.name, component="processor")
        self._limit = log.RateLimit(1.0)
        self.rejected: list[tuple[Message, str, str]] = []

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
        batch = self.decoder.decode_many(messages)
        if batch.errors:
            self._count_errors(batch.errors, batch.rejects)
        if not len(batch):
            return [], None
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
        self.counters.decoded += len(slots)
        self.counters.batches += 1
        self.index.last_seen[slots] = self.clock()
        self.summaries.add_samples(slots)
        due, windows = self.windows.push(slots, batch.values)
        if not len(due):
            return [], None
        scores = np.asarray(self.handler.infer(windows), np.float64)
        anomalous = scores > self.handler.threshold
        self.summaries.add_scores(slots[due], scores, anomalous)
        self.counters.windows += len(due)
        scored = Scored(
            [batch.devices[i] for i in due.tolist()],
            batch.ts[due],
            batch.seq[due],
            scores,
            anomalous,
        )
        events = []
        hits = np.flatnonzero(anomalous)
        if len(hits):
            self.counters.anomalies += len(hits)
            threshold = float(self.handler.threshold)
            for i in hits.tolist():
                device = scored.devices[i]
                payload = {
                    "device": device,
                    "ts": float(scored.ts[i]),
                    "seq": int(scored.seq[i]),
                    "score": float(scores[i]),
                    "threshold": threshold,
                    "pipeline": self.name,
                }
                events.append(Record(EVENT, self.name, device, payload, self._next_id()))
        return events, scored

    def flush(self, extra_stats: dict | None = None) -> list[Record]:
        """Per-device summaries of the period just ended, then one stats record."""
        now = time.time()
        start, self.period_start = self.period_start, now
        records = []
        for s in self.summaries.flush():
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


class Pipeline:
    """Runs a processor in a worker thread, fed by an intake; records go to ``emit``."""

    def __init__(
        self,
        processor: Processor,
        intake: Intake,
        emit: Callable[[list[Record]], None],
        dead_letter: Callable[[list[tuple[Message, str, str]]], None] | None = None,
    ) -> None:
        self.processor = processor
        self.intake = intake
        self.emit = emit
        self.dead_letter = dead_letter
        self.log = log.get(pipeline=processor.name, component="worker")
        self._flush = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"pipeline-{processor.name}", daemon=True
        )
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def request_flush(self) -> None:
        """Ask the worker to publish the period's summaries (called by the scheduler)."""
        self._flush.set()
        self.intake.wake()

    def stop(self, timeout: float = 30) -> None:
        """Process what is queued, publish the last summaries, and end the worker."""
        self._stop.set()
        self.intake.wake()
        self._thread.join(timeout)

    def _stats(self) -> dict:
        return {
            "received": self.intake.received,
            "dropped": self.intake.dropped,
            "queued": len(self.intake),
        }

    def _run(self) -> None:
        p, intake, limit = self.processor, self.intake, self.processor.config.max_batch
        try:
            while True:
                msgs = intake.drain(limit)
                if msgs:
                    try:
                        events, _ = p.process(msgs)
                    except Exception:  # a defect, not bad input: count, log, keep going
                        p.counters.add_errors({"internal": len(msgs)})
                        if p._limit.allow("internal"):
                            self.log.exception("batch_failed", messages=len(msgs))
                        continue
                    if events:
                        self.emit(events)
                    if p.rejected:
                        rejected, p.rejected = p.rejected, []
                        if self.dead_letter:
                            self.dead_letter(rejected)
                if self._flush.is_set():
                    self._flush.clear()
                    self.emit(p.flush(self._stats()))
                if not msgs:
                    if self._stop.is_set() and not len(intake):
                        break
                    intake.wait(0.1)
        except BaseException as e:  # a bug: log it, keep what we have, let the runtime see it
            self.error = e
            self.log.exception("worker_failed")
        finally:
            self.emit(p.flush(self._stats()))
