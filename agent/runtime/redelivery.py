"""Exactly-once counting of QoS 1 input across a crash: redeliveries of committed input.

A QoS 1 message on a persistent session is acknowledged once its batch is committed. If the
agent dies after that commit but before the broker has read the PUBACK, the broker sends the
message again (DUP flag set) to the next run, which would count it a second time. So each
committed batch also records, in the same spool transaction, the identities of its QoS 1
messages (:class:`InputWrite`, written with the period's running totals); a message that
arrives with DUP set and an identity in that record is acknowledged without being processed
and counted as ``redelivered``.

An identity is the packet id with a 48-bit hash of topic and payload (CRC-32 and length):
a broker reuses a packet id once it is acknowledged, so only DUP messages are matched, and
a DUP message not in the record is processed as usual (never drop a real message). The
record keeps the identities of the newest batches covering ``WINDOW`` messages: only
messages still in the broker's in-flight window (sent, PUBACK not yet read; mosquitto allows
20 by default, the test brokers 1,000) can come back.
"""

from __future__ import annotations

import zlib
from array import array
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from agent.records import Message

WINDOW = 10_000  # identities kept per pipeline (~80 KB on disk, ~1 MB in memory)


@dataclass(slots=True)
class InputWrite:
    """One batch's identities for the spool's ``inputs`` table, and the oldest batch still
    kept (older rows are deleted in the same transaction)."""

    batch: int
    ids: bytes  # uint64 identities, native byte order (array('Q'))
    keep_from: int


class Redeliveries:
    """The identities of one pipeline's recently committed QoS 1 input (worker thread)."""

    def __init__(self, rows: Sequence[tuple[int, bytes]] = (), window: int = WINDOW) -> None:
        """``rows`` are ``(batch, ids)`` as the spool kept them, oldest first."""
        self.window = window
        self.redelivered = 0  # DUP messages recognised as committed, acknowledged only
        self._seen: dict[int, int] = {}  # identity -> the newest batch that holds it
        self._batches: deque[tuple[int, array]] = deque()
        self._held = 0  # identities in _batches
        self._next = 1
        for batch, blob in rows:
            ids = array("Q")
            ids.frombytes(blob)
            self._add(batch, ids, index=True)
        if rows:
            self._next = rows[-1][0] + 1

    def __len__(self) -> int:
        return len(self._seen)

    def screen(self, msgs: list[Message]) -> tuple[list[Message], InputWrite | None]:
        """The messages to process, and the identities to commit with their batch.

        A DUP message already committed (or earlier in ``msgs``) is left out; it is still
        recorded with this batch, since its new PUBACK may be lost in turn.
        """
        keep: list[Message] = []
        ids = array("Q")
        seen, batch, crc = self._seen, self._next, zlib.crc32
        for m in msgs:
            if m.mid < 0:  # QoS 0: never redelivered
                keep.append(m)
                continue
            # packet id (16 bits), payload length (16 bits), CRC-32 of topic and payload
            p = m.payload
            key = (m.mid & 0xFFFF) << 48 | (len(p) & 0xFFFF) << 32 | crc(p, crc(m.topic.encode()))
            if m.dup and key in seen:
                self.redelivered += 1
            else:
                keep.append(m)
            seen[key] = batch
            ids.append(key)
        if not ids:
            return keep, None
        self._next += 1
        self._add(batch, ids, index=False)  # indexed above, as they came
        return keep, InputWrite(batch, ids.tobytes(), self._batches[0][0])

    def _add(self, batch: int, ids: array, index: bool) -> None:
        """Keep ``batch``; forget the oldest batches beyond the window."""
        seen = self._seen
        if index:
            for key in ids:
                seen[key] = batch
        self._batches.append((batch, ids))
        self._held += len(ids)
        while self._held - len(self._batches[0][1]) >= self.window:
            old, gone = self._batches.popleft()
            self._held -= len(gone)
            for key in gone:
                if seen.get(key) == old:
                    del seen[key]
