"""Spool helpers for tests."""

from __future__ import annotations

from collections.abc import Sequence

from agent.outbox.spool import Spool
from agent.records import Record


def put_many(spool: Spool, sink: str, records: Sequence[Record]) -> None:
    """Store ``records`` and return once they are committed."""
    spool.wait(spool.submit(sink, records))
