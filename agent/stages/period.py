"""The period's running aggregates, made durable with each batch.

A QoS 1 message is acknowledged once everything it contributed is on disk: its events, and
its share of the period's summary. After every batch the worker hands the spool the
running totals of the devices that batch touched (:func:`snapshot`); the spool's writer
upserts them into its ``period`` table in the same transaction as the batch's events,
before the acknowledgement runs. A flush deletes a pipeline's rows in the transaction that
inserts its summaries (:func:`cleared`). After a crash the rows left are the samples counted
since the last flush: :func:`recover` turns them into summaries marked ``recovered``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import orjson

from agent import log
from agent.records import SUMMARY, Record
from agent.stages.aggregate import Summaries

FEW = 3  # devices touched, up to which a snapshot reads cell by cell (measured: 4 breaks even)

if TYPE_CHECKING:
    from agent.runtime.redelivery import InputWrite


@dataclass(slots=True)
class PeriodWrite:
    """Rows of one pipeline's ``period`` table to write (with a batch) or clear (a flush)."""

    pipeline: str
    rows: list[tuple[str, bytes]] = field(default_factory=list)  # (device, body) upserted
    clear: bool = False  # delete the pipeline's rows first
    # the batch's QoS 1 input identities (agent.runtime.redelivery), in the same transaction
    inputs: InputWrite | None = None


def snapshot(pipeline: str, summaries: Summaries, period_start: float) -> PeriodWrite:
    """The running totals of every device touched since the last snapshot."""
    touched, summaries.touched = summaries.touched, []
    if not touched:
        return PeriodWrite(pipeline)
    slots = touched[0] if len(touched) == 1 else np.unique(np.concatenate(touched))
    names = summaries.index.names
    columns = (
        summaries.count,
        summaries.windows,
        summaries.anomalies,
        summaries.score_sum,
        summaries.score_max,
        summaries.opened,
        summaries.closed,
    )
    at = slots.tolist()
    values: Iterable[Sequence[float]]
    if len(at) <= FEW:  # item() per cell: cheaper than an indexing and tolist() per column
        values = [[c.item(s) for c in columns] for s in at]
    else:
        values = zip(*(c[slots].tolist() for c in columns))
    rows = []
    for s, (c, w, a, tot, mx, o, x) in zip(at, values):
        body = [c, w, a, tot, mx if w else None, period_start, o, x]
        rows.append((names[s], orjson.dumps(body)))
    return PeriodWrite(pipeline, rows)


def cleared(pipeline: str) -> PeriodWrite:
    return PeriodWrite(pipeline, clear=True)


def recover(
    pipeline: str, rows: list[tuple[str, bytes, float]], new_id: Callable[[], str]
) -> list[Record]:
    """Summaries of the samples a crashed run counted after its last flush.

    ``rows`` are ``(device, body, updated)``; a row that cannot be read is logged and
    skipped (its samples cannot be told apart from noise any more).
    """
    out = []
    now = time.time()
    for device, body, updated in rows:
        try:
            c, w, a, tot, mx, start, *episodes = orjson.loads(body)
            payload = {
                "device": device,
                "count": int(c),
                "windows": int(w),
                "mean": tot / w if w else None,
                "max": mx if w else None,
                "anomalies": int(a),
                "pipeline": pipeline,
                "period_start": float(start),
                "period_end": float(updated or now),
                "recovered": True,
            }
            if episodes:  # episodes opened and closed in the period (rows since this field)
                payload["episodes_opened"], payload["episodes_closed"] = map(int, episodes)
        except (orjson.JSONDecodeError, TypeError, ValueError, ZeroDivisionError) as e:
            log.get(component="period", pipeline=pipeline).error(
                "period_row_unreadable", device=device, error=str(e)
            )
            continue
        out.append(Record(SUMMARY, pipeline, device, payload, new_id()))
    return out
