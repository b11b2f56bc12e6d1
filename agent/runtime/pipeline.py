"""A pipeline's worker thread: drains the intake in batches through a Processor and hands its
records to the spool; flushes summaries on request and at stop."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from agent import log
from agent.outbox.ticket import AckTicket, Ticket
from agent.records import STATS, Message, Record
from agent.runtime.redelivery import InputWrite, Redeliveries
from agent.stages import period
from agent.stages.isolate import process_isolated
from agent.stages.period import PeriodWrite
from agent.stages.processor import Processor
from agent.transport.intake import Intake

Emit = Callable[[list[Record], Ticket | None, PeriodWrite | None], None]

# Input acknowledged on receipt (QoS 0, a clean session) is lost in a crash anyway, so its
# running totals need not cost a commit per batch: they go with the next records, or at
# most this long after the first batch that changed them (docs/reliability.md).
TOTALS_EVERY = 1.0  # s
# A period that changed none of the stats figures (a gateway at night) writes nothing: no
# commit, no publish, no wake-up of the spool writer, the lanes or a network thread. Its
# unchanged stats record is still sent once this long after the last one.
QUIET_REPEAT = 60.0  # s
PERIOD_FIELDS = ("period_start", "period_end")
# The spool's figures that the stats records themselves move: with upstream down, each
# period's record would raise them and no period would be quiet.
SPOOL_OWN = ("stored", "depth", "bytes")


def _figures(stats: dict) -> dict:
    """What a quiet period's stats must repeat: all but the period's bounds and the spool
    figures the stats records themselves move (``SPOOL_OWN``)."""
    figures = {k: v for k, v in stats.items() if k not in PERIOD_FIELDS}
    if isinstance(spool := figures.get("spool"), dict):
        figures["spool"] = {k: v for k, v in spool.items() if k not in SPOOL_OWN}
    return figures


class Pipeline:
    """Runs a processor in a worker thread, fed by an intake; records go to ``emit``."""

    def __init__(
        self,
        processor: Processor,
        intake: Intake,
        emit: Emit,
        dead_letter: Callable[[list[tuple[Message, str, str]]], None] | None = None,
        control: Callable[[list[tuple[str, bytes]]], None] | None = None,
        *,
        ack: Callable[[list[Message]], None] | None = None,
        stats: Callable[[], dict] | None = None,
        paused: Callable[[], bool] | None = None,
        redelivery: Redeliveries | None = None,
        on_failure: Callable[[], None] | None = None,
    ) -> None:
        self.processor = processor
        self.intake = intake
        self.emit = emit
        self.dead_letter = dead_letter
        self.control = control
        self.ack = ack  # a batch's ticket calls it once its events and totals are committed
        self.stats = stats  # the stats record's figures: intake, sequences, spool
        # True while the spool cannot write: take nothing, so QoS 1 input stays unacknowledged
        self.paused = paused or (lambda: False)
        # QoS 1 input on a persistent session: redeliveries of committed input are only acked
        self.redelivery = redelivery
        self.on_failure = on_failure  # told once the worker has ended on an error
        self.log = log.get(pipeline=processor.name, component="worker")
        self._flush = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"pipeline-{processor.name}", daemon=True
        )
        self.error: BaseException | None = None
        # Held while the worker changes the processor's state (a batch, a flush, a swap): a
        # reader such as the console copies a consistent snapshot under it. Uncontended it
        # costs well under a microsecond per batch.
        self.lock = threading.Lock()
        self._next: tuple[Processor, threading.Event, list[bool]] | None = None
        self._unsaved: float | None = None  # when totals not yet handed to the spool changed
        self._last_stats: tuple[dict, float] | None = None  # figures last sent, monotonic when
        self.periods = 0  # summary periods flushed
        self.quiet = 0  # of them, periods that wrote nothing
        self._batching(processor)

    def _batching(self, p: Processor) -> None:
        """When a batch is due: ``source.max_delay`` and ``max_batch`` of ``p``'s config."""
        self.intake.max_delay = p.config.source.max_delay
        self.intake.due = min(p.config.max_batch, self.intake.bound)  # a full intake is due

    def start(self) -> None:
        self._thread.start()

    def swap(self, processor: Processor, timeout: float = 30) -> bool:
        """Hand the worker a new processor between two batches (live reload).

        Nothing queued is lost: the intake stays. When the windows cannot be kept, the old
        processor's summaries are flushed first. Returns whether the windows were kept.
        """
        done, kept = threading.Event(), [False]
        self._next = (processor, done, kept)
        self.intake.wake()
        if not done.wait(timeout):
            raise TimeoutError(f"pipeline {self.processor.name}: worker did not take the swap")
        return kept[0]

    def _acknowledge(self, msgs: list[Message]) -> AckTicket | None:
        """The batch's QoS 1 ticket, resolved once its records are committed (in batch order)."""
        return None if self.ack is None else AckTicket(msgs, self.ack)

    def _take_swap(self) -> None:
        assert self._next is not None, "called only when a swap is waiting"
        new, done, kept = self._next
        self._next = None
        old = self.processor
        self._save_totals(old)
        if not new.keeps_windows_of(old):
            self._flush_now(old, "reload")
        kept[0] = new.adopt(old)
        self.processor = new
        self._batching(new)
        done.set()

    def request_flush(self) -> None:
        """Ask the worker to publish the period's summaries (called by the scheduler)."""
        self._flush.set()
        self.intake.wake()

    def stop(self, timeout: float = 30) -> None:
        """Process what is queued, publish the last summaries, and end the worker."""
        self._stop.set()
        self.intake.wake()
        self._thread.join(timeout)

    def _flush_now(self, p: Processor, close: str | None = None, stats: dict | None = None) -> None:
        """The period's summaries and stats (after closing open episodes when ``close`` says
        why), committed with the clearing of its totals; nothing for a quiet period (its
        stats unchanged, ``QUIET_REPEAT``). The caller holds ``self.lock``."""
        closed = p.close_episodes(close) if close else []
        p.counters.events += len(closed)
        records = [*closed, *p.flush(self._stats() if stats is None else stats)]
        self.periods += 1
        figures = _figures(next(r.payload for r in records if r.kind == STATS))
        now, last = time.monotonic(), self._last_stats
        repeat = last is not None and last[0] == figures and now - last[1] < QUIET_REPEAT
        if close is None and len(records) == 1 and repeat:
            self.quiet += 1
            return  # no summaries: no running totals to clear either
        self._last_stats = (figures, now)
        self.emit(records, None, period.cleared(p.name))
        self._unsaved = None

    def _emit_batch(
        self, p: Processor, events: list[Record], msgs: list[Message], inputs: InputWrite | None
    ) -> None:
        """A batch's events, QoS 1 ticket and running totals in one write; totals of input
        acknowledged on receipt wait for the next write (``TOTALS_EVERY``)."""
        ticket = self._acknowledge(msgs)
        if events or ticket is not None or inputs is not None:
            self.emit(events, ticket, self._durable(p, inputs))
            self._unsaved = None
        elif self._unsaved is None and p.summaries.touched:
            self._unsaved = time.monotonic()

    def _save_totals(self, p: Processor) -> None:
        """Hand the spool the running totals the last batches left unsaved."""
        if self._unsaved is not None:
            self.emit([], None, self._durable(p))
            self._unsaved = None

    def saved(self) -> bool:
        """Every batch's running totals have been handed to the spool."""
        return self._unsaved is None

    def _deadline(self) -> float | None:
        return None if self._unsaved is None else self._unsaved + TOTALS_EVERY

    def _durable(self, p: Processor, inputs: InputWrite | None = None) -> PeriodWrite:
        write = period.snapshot(p.name, p.summaries, p.period_start)
        write.inputs = inputs
        return write

    def _screen(self, msgs: list[Message]) -> tuple[list[Message], InputWrite | None]:
        """The messages to process (not redeliveries of committed ones) and the identities
        to commit with them."""
        return (msgs, None) if self.redelivery is None else self.redelivery.screen(msgs)

    def _stats(self) -> dict:
        return self.stats() if self.stats else {}

    def _run(self) -> None:
        p, intake, limit = self.processor, self.intake, self.processor.config.max_batch
        try:
            while True:
                if self._next is not None:
                    with self.lock:
                        self._take_swap()
                    p, limit = self.processor, self.processor.config.max_batch
                if self.paused():
                    if self._stop.is_set():
                        break  # what is queued is not acknowledged: the broker keeps it
                    intake.wait(0.1)
                    continue
                msgs = intake.drain(limit)
                if msgs:
                    work, inputs = self._screen(msgs)  # all of msgs acknowledged once committed
                    with self.lock:  # a message that raises is rejected alone (isolate.py)
                        events = process_isolated(p, work) if work else []
                    p.counters.events += len(events)
                    self._emit_batch(p, events, msgs, inputs)
                    if p.rejected:
                        rejected, p.rejected = p.rejected, []
                        if self.dead_letter:
                            self.dead_letter(rejected)
                    if p.control:
                        control, p.control = p.control, []
                        if self.control:
                            self.control(control)
                if self._flush.is_set():
                    self._flush.clear()
                    stats = self._stats()  # a spool query: not under the lock
                    with self.lock:
                        self._flush_now(p, stats=stats)
                if not self._stop.is_set():
                    # no timeout while idle (the intake wakes it) unless totals are unsaved
                    intake.wait_batch(self._deadline())
                    if (due := self._deadline()) is not None and time.monotonic() >= due:
                        self._save_totals(p)
                elif not msgs and not len(intake):
                    break
        except BaseException as e:  # a bug: log it, keep what we have, let the runtime see it
            self.error = e
            self.log.exception("worker_failed")
            if self.on_failure is not None:  # the agent stops: stop() waits for the flush below
                self.on_failure()
        finally:
            stats = self._stats()
            with self.lock:
                self._flush_now(p, "stop", stats)
