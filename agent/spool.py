"""SQLite store-and-forward outbox for upstream records (WAL, one file).

A record is written here before any attempt to send it, and deleted only after the sink
confirmed delivery. Events (priority 0) leave before summaries and stats. A size cap drops
the oldest rows (by insertion order) and a TTL drops rows older than it; both are counted
(``dropped``, ``expired``) and reported in stats records and the status heartbeat.
Commits are ``synchronous=FULL`` by default: a committed row survives a power loss, not only
a crash (``sync: normal`` trades that for lower latency: a crash of the agent loses nothing,
a power cut may lose the last commits).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import orjson

from . import log
from .records import EVENT, Record

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sink TEXT NOT NULL,
    prio INTEGER NOT NULL,
    created REAL NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_order ON outbox (sink, prio, id);
"""


class Spool:
    """Thread-safe outbox; one connection guarded by a lock."""

    def __init__(
        self,
        path: Path | str,
        max_bytes: int = 256 << 20,
        ttl: float = 7 * 86400,
        sync: str = "full",
    ):
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.ttl = ttl
        self.stored = 0
        self.dropped = 0
        self.expired = 0
        self._next_expiry = 0.0
        self.log = log.get(component="spool")
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'NORMAL' if sync == 'normal' else 'FULL'}")
        self._db.executescript(_SCHEMA)
        self._bytes = self._db.execute(
            "SELECT COALESCE(SUM(LENGTH(body)) + COUNT(*) * 40, 0) FROM outbox"
        ).fetchone()[0]
        self._wake: dict[str, threading.Event] = {}
        self._limit = log.RateLimit(5.0)

    def wake_event(self, sink: str, prio: int | None = None) -> threading.Event:
        """An event set whenever rows for ``sink`` (of priority ``prio``) are added."""
        return self._wake.setdefault((sink, prio), threading.Event())

    def put_many(self, sink: str, records: Sequence[Record]) -> None:
        if not records:
            return
        now = time.time()
        rows = [
            (
                sink,
                0 if r.kind == EVENT else 1,
                now,
                orjson.dumps((r.kind, r.pipeline, r.device, r.id, r.payload)),
            )
            for r in records
        ]
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO outbox (sink, prio, created, body) VALUES (?, ?, ?, ?)", rows
            )
            self._db.execute("COMMIT")
            self._bytes += sum(len(r[3]) + 40 for r in rows)
            self.stored += len(rows)
            if self._bytes > self.max_bytes:
                self._enforce_cap()
        self.wake_event(sink).set()
        for prio in {row[1] for row in rows}:
            self.wake_event(sink, prio).set()

    def _enforce_cap(self) -> None:
        """Drop the oldest rows until under 90% of the cap; caller holds the lock."""
        dropped = 0
        while self._bytes > self.max_bytes * 0.9:
            victims = self._db.execute(
                "SELECT id, LENGTH(body) FROM outbox ORDER BY id LIMIT 100"
            ).fetchall()
            if not victims:
                self._bytes = 0
                break
            self._delete([v[0] for v in victims])
            self._bytes -= sum(v[1] + 40 for v in victims)
            dropped += len(victims)
        self.dropped += dropped
        if dropped and self._limit.allow("cap"):
            self.log.warning(
                "spool_full_dropped", dropped=dropped, total=self.dropped, max_bytes=self.max_bytes
            )

    def _delete(self, ids: Sequence[int]) -> None:
        self._db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])

    def take(self, sink: str, limit: int, prio: int | None = None) -> list[tuple[int, Record]]:
        """The next ``limit`` rows for ``sink``: events first, then oldest first
        (only priority ``prio``, 0 events and 1 the rest, when given)."""
        with self._lock:
            if self.ttl and time.monotonic() >= self._next_expiry:
                self._next_expiry = time.monotonic() + min(self.ttl / 10, 10.0)
                self._expire()
            if prio is None:
                rows = self._db.execute(
                    "SELECT id, body FROM outbox WHERE sink = ? ORDER BY prio, id LIMIT ?",
                    (sink, limit),
                ).fetchall()
            else:
                rows = self._db.execute(
                    "SELECT id, body FROM outbox WHERE sink = ? AND prio = ? ORDER BY id LIMIT ?",
                    (sink, prio, limit),
                ).fetchall()
        out = []
        for rid, body in rows:
            kind, pipeline, device, record_id, payload = orjson.loads(body)
            out.append((rid, Record(kind, pipeline, device, payload, record_id)))
        return out

    def _expire(self) -> None:
        cur = self._db.execute("DELETE FROM outbox WHERE created < ?", (time.time() - self.ttl,))
        if cur.rowcount > 0:
            self.expired += cur.rowcount
            self.log.warning("spool_expired", expired=cur.rowcount, total=self.expired)
            self._bytes = self._db.execute(
                "SELECT COALESCE(SUM(LENGTH(body)) + COUNT(*) * 40, 0) FROM outbox"
            ).fetchone()[0]

    def ack(self, ids: Sequence[int]) -> None:
        """Delete delivered rows."""
        if not ids:
            return
        with self._lock:
            self._db.execute("BEGIN")
            freed = 0
            for lo in range(0, len(ids), 500):
                chunk = list(ids[lo : lo + 500])
                marks = ",".join("?" * len(chunk))
                freed += self._db.execute(
                    f"SELECT COALESCE(SUM(LENGTH(body)), 0) FROM outbox WHERE id IN ({marks})",
                    chunk,
                ).fetchone()[0]
                self._db.execute(f"DELETE FROM outbox WHERE id IN ({marks})", chunk)
            self._db.execute("COMMIT")
            self._bytes = max(0, self._bytes - freed - 40 * len(ids))

    def depth(self, sink: str | None = None) -> int:
        with self._lock:
            if sink is None:
                return self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
            return self._db.execute(
                "SELECT COUNT(*) FROM outbox WHERE sink = ?", (sink,)
            ).fetchone()[0]

    def stats(self) -> dict:
        """Rows stored since start, waiting now, approximate bytes, dropped (cap), expired."""
        return {
            "stored": self.stored,
            "depth": self.depth(),
            "bytes": self._bytes,
            "dropped": self.dropped,
            "expired": self.expired,
        }

    def close(self) -> None:
        with self._lock:
            self._db.close()
