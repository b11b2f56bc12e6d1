"""Tickets: what is owed once a spool write is committed, as objects rather than callbacks.

The spool's writer resolves a write's tickets after its commit, in submission order, and
never resolves those of a write it gives up (:meth:`agent.outbox.spool.Spool.close` on a disk
that still fails).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from agent.records import Message


class Ticket(Protocol):
    """Resolved by the spool's writer once the write it came with is on disk."""

    def resolve(self) -> None: ...


@dataclass(slots=True)
class AckTicket:
    """A batch's QoS 1 acknowledgement, created by the worker for the batch.

    Resolved once the batch's records and period totals are committed: only then are its
    input ``messages`` acknowledged to the broker (by ``acknowledge``, the source's). An
    unresolved ticket leaves them unacknowledged, so the broker delivers them again.
    """

    messages: list[Message]
    acknowledge: Callable[[list[Message]], None]
    resolved: bool = False

    def resolve(self) -> None:
        self.resolved = True
        self.acknowledge(self.messages)
