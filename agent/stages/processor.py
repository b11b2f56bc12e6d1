"""The stages of one pipeline: admit -> decode -> route -> observe -> window -> score ->
decide -> aggregate -> emit, one method each, run in that order by :meth:`Processor.process`.

:class:`Processor` is single-threaded and I/O-free, so ``run`` (through
:class:`agent.runtime.pipeline.Pipeline`), ``evaluate`` and the tests share it.
"""

from __future__ import annotations

import itertools
import os
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeGuard, cast

import numpy as np

from agent import log
from agent.config import PipelineConfig
from agent.errors import ModelError
from agent.protocols import (
    Attributing,
    Binds,
    DeclaresOutput,
    Decoder,
    Describes,
    Details,
    ModelHandler,
    NamedChannels,
    OutputKind,
    StreamHandler,
    Thresholded,
    model_identity,
    output_kind,
)
from agent.records import EVENT, STATS, SUMMARY, Message, Record, SampleBatch
from agent.registry import Registry
from agent.stages.aggregate import Summaries
from agent.stages.batch_stats import BatchStats
from agent.stages.calibration import MIN_BUDGET_WINDOWS
from agent.stages.episodes import CLOSED, FLOOD, OPENED, Episodes, Transition
from agent.stages.isolate import decode_isolated
from agent.stages.outputs import Decided, Decision, decision_for
from agent.stages.restarts import Restarts
from agent.stages.rule import Hold, over
from agent.stages.sequence import Sequences
from agent.stages.undo import Saves, Undo
from agent.stages.warmup import Warmup
from agent.stages.windows import CountWindows, DeviceIndex, Groups

UNSET_CLOCK = 1e9  # s: before 2001-09-09, a clock never set (a camera without NTP: 1970)


def clock_reason(device: str, ts: float, kind: str, skew: float, now: float) -> tuple[str, str]:
    """Why a timestamp was rejected, and what probably went wrong (a hint, or "")."""
    where = "ahead of" if kind == "ts_future" else "behind"
    reason = (
        f"device {device}: ts {ts:.3f} is {where} this agent's clock ({now:.0f}) by more "
        f"than source.max_clock_skew ({skew:g} s)"
    )
    for unit, scale in (("milliseconds", 1e3), ("microseconds", 1e6), ("nanoseconds", 1e9)):
        if abs(ts / scale - now) <= skew:
            return reason, f"ts looks like {unit} since 1970: send unix seconds (ts / {int(scale)})"
    if ts < UNSET_CLOCK:
        return reason, "the source's clock is not set: fix it, or source.max_clock_skew: none"
    return reason, ""


@dataclass
class Counters:
    """Pipeline totals since start; ``errors`` by kind."""

    decoded: int = 0
    windows: int = 0
    anomalies: int = 0
    batches: int = 0
    events: int = 0  # event records handed to the spool
    errors: dict[str, int] = field(default_factory=dict)

    def add_errors(self, errors: dict[str, int]) -> None:
        for k, v in errors.items():
            self.errors[k] = self.errors.get(k, 0) + v


@dataclass(slots=True)
class Lives:
    """Per sample of a batch: absolute position, life start now and before the batch, slot
    and time; the samples that restart their device; ``due``: the scored samples."""

    pos: np.ndarray
    start: np.ndarray
    before: np.ndarray
    restarted: np.ndarray | None  # indices of the samples that restart their device
    slots: np.ndarray
    ts: np.ndarray
    due: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def reset(self, episodes: Episodes, i: int) -> list[Transition]:
        return episodes.reset([int(self.slots[i])], [float(self.ts[i])])


@dataclass(slots=True)
class Scored:
    """What one :meth:`Processor.process` call scored (for replay and evaluation)."""

    devices: list[str]
    ts: np.ndarray
    seq: np.ndarray
    scores: np.ndarray
    anomalous: np.ndarray
    details: dict[str, np.ndarray] = field(default_factory=dict)
    thresholds: np.ndarray | None = None
    open: np.ndarray | None = None  # the device is in an open episode after this window


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
        self.last_devices: list[str] = []  # of a batch that raised (named in the log)
        self.control: list[tuple[str, bytes]] = []  # decoder requests, published by the runtime
        self.kind: OutputKind = output_kind(handler)  # what the handler declares; see load()
        self.stream = handler if isinstance(handler, StreamHandler) and handler.stateful else None
        self.stateful = self.stream is not None
        if not self.stateful and isinstance(handler, DeclaresOutput) and handler.output == "events":
            raise ModelError(
                f"handler {type(handler).__name__} declares output 'events' but does not "
                "implement agent.protocols.StreamHandler in full (stateful = True, load, "
                "save, update, flush)"
            )
        self.model = handler if _windowed(handler) else None  # what windows are scored by
        # Optional abilities, asked once here rather than per batch.
        self._details = handler if isinstance(handler, Details) else None
        self._describes = handler if isinstance(handler, Describes) else None
        self.hold = Hold(self.index, config.rule.hold) if config.rule.hold else None
        self.warmup = self._new_warmup() if config.calibration is not None else None
        episodic = config.rule.events == "episodes" and not self.stateful
        self.episodes = Episodes(self.index, config.rule) if episodic else None
        names = decoder.channel_names if isinstance(decoder, NamedChannels) else []
        self.channel_names: list[str | int] = [*names] or list(range(decoder.channels))
        self.attributes = False  # set by load(): whether the loaded handler names causes
        self.decision: Decision | None = None  # set by load(): None for the score kind
        self.restarts = Restarts(self.index) if config.rule.reset_on_restart else None
        self._check_budget()

    def _check_budget(self) -> None:
        """Warn at start-up when the warm-up is too short to fit a false-alarm budget."""
        cal, size = self.config.calibration, self.config.window.size
        if cal is None or cal.false_alarms_per_day is None:
            return
        if cal.warmup - size + 1 < MIN_BUDGET_WINDOWS:
            need = MIN_BUDGET_WINDOWS + size - 1
            self.log.warning(
                "warmup_short_for_budget",
                warmup=cal.warmup,
                minimum=need,
                reason=f"calibration.false_alarms_per_day fits a tail to the warm-up's window "
                f"scores and needs calibration.warmup >= {need} samples; the budget is "
                "extrapolated from too few scores and may not hold",
            )

    def load(self) -> None:
        """Load the model against this pipeline's window (raises ModelError)."""
        if isinstance(self.handler, Binds):  # it depends on how samples were decoded
            self.handler.bind(self.decoder)
        self.handler.load(self.config.window.size, self.decoder.channels)
        handler = self.handler
        self.attributes = isinstance(handler, Attributing) and handler.attributes
        self.kind = output_kind(handler)  # a typed kind's labels may come with the model
        self.decision = decision_for(handler)
        self.summaries.typed = self.decision.summary(self.index) if self.decision else None

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
        """Run one batch through every stage; return the events and what was scored.

        A stage that raises leaves the windows, warm-up, summaries, totals and a stateful
        handler's state as they were before the call (:mod:`agent.stages.undo`) and the
        exception propagates: :func:`agent.stages.isolate.process_isolated` then splits the batch.
        """
        undo = Undo()
        undo.add(self._save_totals())
        try:
            out = self._process(messages, undo)
        except Exception:
            undo.run()
            raise
        self.last_devices = []
        return out

    def _save_totals(self) -> Callable[[], None]:
        """Totals shared with a swapped-in processor are restored in place."""
        counters = {**vars(self.counters), "errors": dict(self.counters.errors)}
        stats = self.batch_stats.save()
        period_errors = dict(self.period_errors)
        rejected, control = len(self.rejected), len(self.control)

        def restore() -> None:
            vars(self.counters).update(counters)
            stats()
            self.period_errors.clear()
            self.period_errors.update(period_errors)
            del self.rejected[rejected:], self.control[control:]

        return restore

    def _save_stages(self, groups: Groups, undo: Undo) -> None:
        """Restore steps of every stage's state of the batch's devices (the windows' and
        the scores' are added by :meth:`_window` and :meth:`_aggregate`, which know what
        they overwrite)."""
        parts: list[Saves | None]
        parts = [self.summaries, self.sequences, self.warmup, self.restarts, self.hold]
        for x in parts:
            if x is not None:
                undo.add(x.save(groups.slots))
        if self.episodes is not None:
            undo.add(self.episodes.save(groups.slots))

    def reject_raised(self, msg: Message, error: Exception) -> None:
        """``msg`` raised on its own after decoding: counted and dead-lettered as
        ``internal``, logged (rate-limited) with its topic, devices and the traceback."""
        where = traceback.extract_tb(error.__traceback__)[-1]
        at = f"{os.path.basename(where.filename)}:{where.lineno} in {where.name}"
        reason = f"{type(error).__name__}: {error} (at {at})"[:300]
        self._count_errors({"internal": 1}, [])
        self.rejected.append((msg, "internal", reason))
        if self._limit.allow("internal"):
            self.log.error(
                "message_failed",
                kind="internal",
                topic=msg.topic,
                devices=sorted(set(self.last_devices))[:5],
                error=reason,
                exc_info=error,
            )

    def _process(
        self, messages: Sequence[Message], undo: Undo
    ) -> tuple[list[Record], Scored | None]:
        """The stages, in order (see :meth:`process`)."""
        batch, events = self._decode(self._admit(messages))
        slots = self._route(batch, undo)
        if slots is None:
            return events, None
        groups = self._observe(slots, batch, undo)
        if self.stream is not None:  # a StreamHandler keeps its own per-device state
            return events + self._stream_events(batch, undo), None
        due, windows, lives = self._window(slots, batch, groups, undo)
        if not len(due):
            if lives is not None and self.episodes is not None:
                events += self._episode_records(self._step_episodes(due, None, lives))
            return events, None
        at = slots[due]  # the scored windows' slots
        decided = self._score(at, windows)
        scored = self._decide(at, batch, due, decided)
        self._aggregate(at, scored, decided, undo)
        return events + self._events(at, windows, scored, lives), scored

    def _admit(self, messages: Sequence[Message]) -> Sequence[Message]:
        """Stage ``admit``: messages over ``source.max_payload`` are counted and rejected."""
        limit = self.config.source.max_payload
        if not any(len(m.payload) > limit for m in messages):
            return messages
        big = [m for m in messages if len(m.payload) > limit]
        self._count_errors(
            {"too_large": len(big)},
            [(m, "too_large", f"{len(m.payload)} bytes > {limit}") for m in big],
        )
        return [m for m in messages if len(m.payload) <= limit]

    def _decode(self, messages: Sequence[Message]) -> tuple[SampleBatch, list[Record]]:
        """Stage ``decode``: samples (bad ones counted, clocks checked), decoder control
        requests, and the device state events the decoder saw."""
        batch = decode_isolated(self.decoder, messages)
        self.last_devices = batch.devices
        if batch.errors:
            self._count_errors(batch.errors, batch.rejects)
        self.control += batch.control
        events = (
            [self._record(EVENT, {**st, "pipeline": self.name}) for st in _states(batch)]
            if batch.states
            else []
        )
        if len(batch):
            self._check_ids(batch, messages)
        if len(batch) and (skew := self.config.source.max_clock_skew) is not None:
            self._check_clock(batch, messages, skew)
        return batch, events

    def _route(self, batch: SampleBatch, undo: Undo) -> np.ndarray | None:
        """Stage ``route``: each sample's device slot; samples over ``max_devices`` are
        counted and dropped. None when no sample is left."""
        if not len(batch):
            return None
        undo.add(self.index.save(batch.devices))
        refused = self.index.refused
        slots = self.index.slots(batch.devices)
        if self.index.refused == refused:  # every device has a slot (no array operation)
            return slots
        full = np.flatnonzero(slots < 0)
        self._count_errors(
            {"device_limit": len(full)},
            [
                (Message(batch.devices[i], b""), "device_limit", "max_devices reached")
                for i in full[:1].tolist()
            ],
        )
        keep = np.flatnonzero(slots >= 0)
        _keep(batch, keep)
        return slots[keep] if len(keep) else None  # every sample over the cap: counted

    def _observe(self, slots: np.ndarray, batch: SampleBatch, undo: Undo) -> Groups:
        """Stage ``observe``: counters, last seen, sequence gaps and sample counts (each
        stage's state of these devices saved first, for :meth:`process` to restore)."""
        self.counters.decoded += len(slots)
        self.counters.batches += 1
        self.index.last_seen[slots] = self.clock()
        groups = Groups.of(slots)
        self._save_stages(groups, undo)
        self.sequences.observe(slots, batch.seq, groups.distinct)
        self.summaries.add_samples(groups)
        return groups

    def _stream_events(self, batch: SampleBatch, undo: Undo) -> list[Record]:
        """Stage ``stream`` (the ``events`` kind): the handler's own events."""
        assert self.stream is not None
        undo.add(self.stream.save(list(dict.fromkeys(batch.devices))))
        found = self.stream.update(batch)
        self.counters.anomalies += len(found)
        return [self._record(EVENT, {**payload, "pipeline": self.name}) for payload in found]

    def _window(
        self, slots: np.ndarray, batch: SampleBatch, groups: Groups, undo: Undo
    ) -> tuple[np.ndarray, np.ndarray, Lives | None]:
        """Stage ``window``: the windows due for scoring (their samples' indices and the
        windows), leaving out windows inside a device's warm-up or spanning a restart."""
        calibrated = (
            self.warmup.push(slots, batch.values, groups, self.handler, batch.ts)
            if self.warmup
            else None
        )
        lives = self._lives(slots, batch, groups) if self.restarts is not None else None
        due, windows = self.windows.push(slots, batch.values, groups, undo)
        if calibrated is not None:  # windows ending inside a device's warm-up are not scored
            keep = calibrated[due]
            due, windows = due[keep], windows[keep]
        if lives is not None:  # windows spanning a restart mix two lives: not scored
            keep = lives.pos[due] - self.config.window.size + 1 >= lives.start[due]
            due, windows = due[keep], windows[keep]
            lives.due = due
        return due, windows, lives

    def _score(self, slots: np.ndarray, windows: np.ndarray) -> Decided:
        """Stage ``score``: one model call for the batch's windows; each window's severity
        and threshold, by the handler's declared kind (a typed kind's decision rule, or
        scores against the fixed or per-device learned threshold)."""
        started = time.perf_counter()
        if self.decision is not None:
            x = self.warmup.normalise(slots, windows) if self.warmup else windows
            decided = self.decision.decide(x)
        elif self.warmup:
            scores = self.warmup.score(self.handler, slots, windows)
            decided = Decided(np.asarray(scores, np.float64), self.warmup.threshold[slots])
        else:
            assert self.model is not None, "only a windowed handler's pipeline has windows"
            scores = np.asarray(self.model.infer(windows), np.float64)
            decided = Decided(scores, np.full(len(slots), self.model.threshold))
        self.batch_stats.observe(len(slots), time.perf_counter() - started)
        if self._details is not None:  # the handler's per-window extras first
            decided.details = {**self._details.last_details, **decided.details}
        return decided

    def _decide(
        self, slots: np.ndarray, batch: SampleBatch, due: np.ndarray, decided: Decided
    ) -> Scored:
        """Stage ``decide``: the rule's verdict on each scored window (over, then held)."""
        anomalous = over(decided.severity, decided.threshold)
        if self.hold:
            anomalous = self.hold.apply(slots, anomalous)
        return Scored(
            [batch.devices[i] for i in due.tolist()],
            batch.ts[due],
            batch.seq[due],
            decided.severity,
            anomalous,
            decided.details,
            decided.threshold,
        )

    def _aggregate(self, slots: np.ndarray, scored: Scored, decided: Decided, undo: Undo) -> None:
        """Stage ``aggregate``: the period's per-device summaries and the totals."""
        self.summaries.add_scores(slots, scored.scores, scored.anomalous, undo)
        if self.decision is not None:
            self.summaries.add_typed(slots, decided)
        self.counters.windows += len(slots)
        self.counters.anomalies += int(np.count_nonzero(scored.anomalous))  # intp otherwise

    def _events(
        self, slots: np.ndarray, windows: np.ndarray, scored: Scored, lives: Lives | None
    ) -> list[Record]:
        """Stage ``emit``: episode transitions, or one event per anomalous window."""
        if self.episodes is not None:
            moves = self._step_episodes(slots, scored, lives, scored.thresholds)
            scored.open = self.episodes.open[slots]
            return self._episode_records(moves, scored, slots, windows)
        hits = scored.anomalous.nonzero()[0]  # flatnonzero, without its wrappers
        fields = self._window_fields(hits.tolist(), scored, slots, windows)
        out = []
        for i in hits.tolist():
            device = scored.devices[i]
            payload = {
                "device": device,
                "ts": float(scored.ts[i]),
                "seq": int(scored.seq[i]),
                **self._score_fields(scored, i),
                "pipeline": self.name,
                **fields[i],
            }
            out.append(Record(EVENT, self.name, device, payload, self._next_id()))
        return out

    def _score_fields(self, scored: Scored, i: int, threshold: float | None = None) -> dict:
        """``score`` and ``threshold`` of window ``i``, for the kinds whose events keep them."""
        if self.decision is not None and not self.decision.keeps_score:
            return {}
        assert scored.thresholds is not None
        thr = float(scored.thresholds[i]) if threshold is None else threshold
        return {"score": float(scored.scores[i]), "threshold": thr}

    def _window_fields(
        self, index: list[int], scored: Scored, slots: np.ndarray, windows: np.ndarray
    ) -> dict[int, dict]:
        """Event fields of the scored windows ``index`` (one ``describe`` call for all of
        them): the typed kind's (class, estimate and interval), the handler's own extras,
        and the channels that drive the score (``cause``)."""
        if not index:
            return {}
        hits = np.array(index, np.int64)
        describes = self._describes
        extra = describes.describe(hits) if describes is not None else [{}] * len(hits)
        if self.decision is not None:
            extra = [{**typed, **x} for typed, x in zip(self.decision.fields(hits), extra)]
        causes = self._causes(slots[hits], windows[hits])
        return {
            i: {**x, **({"cause": causes[k]} if causes else {})}
            for k, (i, x) in enumerate(zip(index, extra))
        }

    def _lives(self, slots: np.ndarray, batch: SampleBatch, groups: Groups) -> Lives:
        """Each sample's absolute position and life start (``rule.reset_on_restart``), and
        the devices that restarted in this batch."""
        assert self.restarts is not None
        pos = self.windows.count[slots] + groups.rank
        before = self.restarts.start[slots]
        found, start = self.restarts.push(slots, batch.seq, groups, pos)
        return Lives(pos, start, before, found if len(found) else None, slots, batch.ts)

    def _step_episodes(
        self, slots: np.ndarray, scored: Scored | None, lives: Lives | None, threshold=None
    ) -> list[Transition]:
        """Advance the episodes of scored windows. A device that restarted in this batch
        (rare) has its old life's windows stepped first, then its episode reset, then the
        windows of its new life; transitions keep their window's index in the batch."""
        episodes = self.episodes
        assert episodes is not None
        if lives is None or lives.restarted is None:
            return (
                [] if scored is None else episodes.step(slots, scored.ts, scored.scores, threshold)
            )
        restarts = lives.restarted.tolist()
        if scored is None:  # no window scored in this batch
            return [m for i in restarts for m in lives.reset(episodes, i)]
        fresh = lives.start[lives.due] > lives.before[lives.due]

        def step(part: np.ndarray) -> list[tuple[int, Transition]]:
            out, key = [], -1
            for m in episodes.step(
                slots[part], scored.ts[part], scored.scores[part], threshold[part]
            ):
                if m.index >= 0:
                    m.index = int(part[m.index])
                    key = int(lives.due[m.index])
                out.append((key, m))  # a flood transition follows the window before it
            return out

        keyed = step(np.flatnonzero(~fresh))  # the old lives' windows first
        for i in restarts:
            keyed += [(i, m) for m in lives.reset(episodes, i)]
        keyed += step(np.flatnonzero(fresh))
        keyed.sort(key=lambda km: km[0])  # in sample order, as batches of one would give
        return [m for _, m in keyed]

    def _causes(self, slots: np.ndarray, windows: np.ndarray, top: int = 3) -> list[list[dict]]:
        """The top channels of each window's score with their shares; [] when the handler
        cannot attribute."""
        if not self.attributes or not len(slots):
            return []
        assert isinstance(self.handler, Attributing)
        if self.warmup is not None:
            windows = self.warmup.normalise(slots, windows)
        parts = np.asarray(self.handler.attribute(slots, windows), np.float64)
        total = parts.sum(axis=1, keepdims=True)
        shares = np.divide(parts, total, out=np.zeros_like(parts), where=total > 0)
        order = np.argsort(-shares, axis=1, kind="stable")[:, :top]
        names = self.channel_names
        return [
            [{"channel": names[c], "share": round(float(row[c]), 3)} for c in idx.tolist()]
            for row, idx in zip(shares, order)
        ]

    def _episode_records(
        self,
        moves: list[Transition],
        scored: Scored | None = None,
        slots: np.ndarray | None = None,
        windows: np.ndarray | None = None,
    ) -> list[Record]:
        """Event records of episode transitions; the windows that open, escalate or remind
        get their score, threshold, severity and cause."""
        episodes = self.episodes
        if not moves or episodes is None:
            return []
        described = [m.index for m in moves if m.kind not in (CLOSED, FLOOD)]
        fields: dict[int, dict] = {}
        if scored is not None and slots is not None and windows is not None:
            fields = self._window_fields(described, scored, slots, windows)
        out = []
        for m in moves:
            payload: dict = {"event": m.kind, "pipeline": self.name}
            if m.kind == FLOOD:
                ts = float(scored.ts[m.index]) if scored is not None else time.time()
                out.append(self._record(EVENT, {**payload, "device": "", "ts": ts, **m.fields}))
                continue
            i, s = m.index, m.slot
            device = self.index.names[s]
            assert device is not None, "an episode's slot holds its device until it closes"
            payload["device"] = device
            rec_id = self._next_id()
            if m.kind == CLOSED:
                payload["ts"] = m.fields["closed_at"]
                payload["episode"] = episodes.ids.pop(s, "")
                self.summaries.closed[s] += 1
                if self.decision is not None:
                    m.fields = self.decision.closed(m.fields)
            else:
                assert scored is not None
                if m.kind == OPENED:
                    episodes.ids[s] = rec_id
                    self.summaries.opened[s] += 1
                payload.update(
                    episode=episodes.ids[s], ts=float(scored.ts[i]), seq=int(scored.seq[i])
                )
                payload.update(self._score_fields(scored, i, float(episodes.threshold[s])))
                payload.update(fields.get(i, {}))
            payload.update(m.fields)
            out.append(Record(EVENT, self.name, device, payload, rec_id))
        return out

    def close_episodes(self, reason: str) -> list[Record]:
        """Close every open episode (stop, or a reload that drops the windows)."""
        if self.episodes is None:
            return []
        return self._episode_records(self.episodes.close_all(reason))

    def _check_ids(self, batch: SampleBatch, messages: Sequence[Message]) -> None:
        """Drop samples whose device id is longer than ``source.max_device_id`` bytes; each
        message naming one is counted once as ``device_id`` and dead-lettered (per sample,
        and not dead-lettered, for a decoder that does not say which message a sample
        came from). One check here covers every decoder, built-in or plugin."""
        limit = self.config.source.max_device_id
        if max(map(len, batch.devices)) * 4 <= limit:  # UTF-8: at most 4 bytes a character
            return
        long = {d: n for d in set(batch.devices) if (n := len(d.encode())) > limit}
        if not long:
            return
        bad = np.fromiter((d in long for d in batch.devices), bool, len(batch))
        where = np.flatnonzero(bad)
        culprits: list[tuple[Message | None, int]]
        if batch.origin is None:
            culprits = [(None, int(i)) for i in where]
        else:
            first = dict(zip(batch.origin[where].tolist(), where.tolist()))
            culprits = [(messages[m], i) for m, i in first.items()]
        self._count_errors({"device_id": len(culprits)}, [])
        for msg, i in culprits:
            device = batch.devices[i]
            reason = f"device id of {long[device]} bytes > source.max_device_id ({limit})"
            if msg is not None:
                self.rejected.append((msg, "device_id", reason))
            if self._limit.allow("device_id"):
                self.log.warning(
                    "payload_rejected",
                    kind="device_id",
                    topic=msg.topic[:200] if msg is not None else None,
                    device=device[:64] + "...",
                    reason=reason,
                )
        _keep(batch, np.flatnonzero(~bad))

    def _check_clock(self, batch: SampleBatch, messages: Sequence[Message], skew: float) -> None:
        """Drop samples stamped more than ``max_clock_skew`` from now (counted, logged with
        the topic and a hint, their messages dead-lettered where the decoder says which)."""
        now = time.time()
        if now - skew <= batch.ts.min() and batch.ts.max() <= now + skew:
            return  # the common case: two reductions instead of five array operations
        future, past = batch.ts > now + skew, batch.ts < now - skew
        bad = future | past
        errors = {k: int(m.sum()) for k, m in (("ts_future", future), ("ts_past", past))}
        self.counters.add_errors({k: v for k, v in errors.items() if v})
        for k, v in errors.items():
            if v:
                self.period_errors[k] = self.period_errors.get(k, 0) + v
        rejects = []
        seen: set[int] = set()
        for i in np.flatnonzero(bad).tolist():
            m = int(batch.origin[i]) if batch.origin is not None else -1
            if m in seen:
                continue
            seen.add(m)
            kind = "ts_future" if future[i] else "ts_past"
            reason, hint = clock_reason(batch.devices[i], float(batch.ts[i]), kind, skew, now)
            topic = messages[m].topic if m >= 0 else None
            if self._limit.allow(kind):
                self.log.warning(
                    "sample_rejected", kind=kind, topic=topic, reason=reason, hint=hint
                )
            if m >= 0:
                rejects.append((messages[m], kind, f"{reason}; {hint}" if hint else reason))
            else:
                break  # no message to dead-letter: one log line says it all
        self.rejected += rejects
        _keep(batch, np.flatnonzero(~bad))

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
            if self.episodes is not None and old.episodes is not None:  # open episodes go on
                self.episodes = old.episodes
                self.episodes.rule = self.config.rule
            elif self.episodes is not None:
                self.episodes = Episodes(self.index, self.config.rule)
            if self.restarts is not None:  # lives go on when both pipelines track them
                self.restarts = old.restarts or Restarts(self.index)
            self.summaries.typed = self._typed_summary_of(old)
        return same

    def _typed_summary_of(self, old: Processor):
        """The adopted summaries' typed part: kept when the kind and its labels are the
        same, else a fresh one on the adopted index."""
        new, prev = self.decision, old.decision
        if new is None:
            return None
        same = prev is not None and new.same_summary(prev)
        return old.summaries.typed if same else new.summary(self.index)

    def _new_warmup(self) -> Warmup:
        config, handler = self.config, self.model
        assert handler is not None, "calibration is for windowed handlers (config validates)"
        auto = config.handler.learns_threshold()
        assert config.calibration is not None
        return Warmup(
            self.index,
            config.calibration,
            config.window.size,
            self.decoder.channels,
            auto,
            float(handler.threshold),
            config.window.hop,
        )

    def _keeps_warmup_of(self, old: Processor) -> bool:
        """Learned normalisers and thresholds still hold: same calibration, handler, model."""
        return (
            old.warmup is not None
            and old.config.calibration == self.config.calibration
            and old.config.handler == self.config.handler
            and model_identity(old.handler)[1] == model_identity(self.handler)[1]
        )

    def flush(self, extra_stats: dict | None = None) -> list[Record]:
        """Per-device summaries of the period just ended, then one stats record."""
        now = time.time()
        start, self.period_start = self.period_start, now
        records = []
        extra = {}
        if self.stream is not None:  # the handler's own per-device summaries join the core
            extra = {str(x["device"]): x for x in self.stream.flush()}
        core = self.summaries.flush(self.episodes.open if self.episodes else None)
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
            **self.episode_stats(),
            "errors": dict(self.counters.errors),
            "period_errors": self.period_errors,
            **(extra_stats or {}),
        }
        self.period_errors = {}
        records.append(Record(STATS, self.name, "", stats, self._next_id()))
        evicted = self.index.evict_idle(self.clock() - self.config.window.ttl)
        if evicted:
            self.log.info("devices_evicted", count=evicted, devices=len(self.index))
            if self.episodes is not None:  # an idle device's open episode closes with it
                records += self._episode_records(self.episodes.take_pending())
        return records

    def device_threshold(self, device: str) -> float | None:
        """``device``'s threshold: learned (None while it warms up) or the fixed one."""
        slot = self.index.slot_of.get(device)
        if self.warmup is None:
            return self.fixed_threshold()
        if slot is None or self.warmup.count[slot] < self.warmup.n:
            return None
        return float(self.warmup.threshold[slot])

    def fixed_threshold(self) -> float:
        """The handler's own threshold (0 for a handler that declares none)."""
        handler = self.handler
        return float(handler.threshold or 0.0) if isinstance(handler, Thresholded) else 0.0

    def warming_up(self) -> int:
        """Devices tracked whose calibration warm-up is not complete (read by scrapes)."""
        if self.warmup is None:
            return 0
        count = self.warmup.count
        used = np.fromiter(self.index.slot_of.values(), np.int64)
        used = used[used < len(count)]
        return int((count[used] < self.warmup.n).sum())

    def warmup_deferred(self) -> int:
        """Samples of new devices that waited for a warm-up buffer, since start."""
        return self.warmup.deferred if self.warmup is not None else 0

    def episode_stats(self) -> dict:
        """Episodes open now and opened, closed and suppressed since start ({} without)."""
        e = self.episodes
        if e is None:
            return {}
        return {
            "episodes_open": e.open_count(),
            "episodes_opened": e.opened,
            "episodes_closed": e.closed,
            "episodes_suppressed": e.suppressed,
        }


def _keep(batch: SampleBatch, keep: np.ndarray) -> None:
    """Keep only the samples ``keep`` (indices) of ``batch``."""
    n = len(batch)
    batch.values, batch.ts, batch.seq = batch.values[keep], batch.ts[keep], batch.seq[keep]
    batch.devices = [batch.devices[i] for i in keep.tolist()]
    if batch.origin is not None:
        batch.origin = batch.origin[keep]
    if batch.detections is not None:
        batch.detections = batch.detections.take_frames(keep, n)


def _states(batch) -> list[dict]:
    return [{"device": d, "state": st, "ts": ts} for d, st, ts in batch.states]


def _windowed(handler: ModelHandler | StreamHandler) -> TypeGuard[ModelHandler]:
    """Whether the pipeline scores windows with ``handler``: all but a stateful one."""
    return not (isinstance(handler, StreamHandler) and handler.stateful)


def build_processor(
    config: PipelineConfig,
    registry: Registry | None = None,
    id_prefix: str = "",
    ids: Iterator[int] | None = None,
) -> Processor:
    """A pipeline's decoder, handler and processor, its model loaded, checked and warmed up."""
    registry = registry or Registry()
    # The registry checks a class's config_model; agent.testing.conformance its Protocol.
    decoder = cast(Decoder, registry.get("decoder", config.decoder.type)(config.decoder))
    handler = cast(
        ModelHandler | StreamHandler,
        registry.get("handler", config.handler.type)(config.handler),
    )
    processor = Processor(config, decoder, handler, id_prefix=id_prefix, ids=ids)
    processor.load()
    return processor
