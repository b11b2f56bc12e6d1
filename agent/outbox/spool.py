"""SQLite store-and-forward outbox for upstream records (WAL, one file): storage only.

Every record is submitted here before any attempt to send it (fresh events are published
while their commit runs, by :mod:`agent.outbox.forwarding`; everything else after it) and
deleted only after the sink confirmed delivery (a PUBACK at QoS 1; at QoS 0, the publish
written to the socket).
Events (priority 0) leave before summaries and stats. A size cap drops the oldest rows (by
insertion order) and a TTL drops rows older than it; both are counted (``dropped``,
``expired``) and reported in stats records and the status heartbeat.
Commits are ``synchronous=FULL`` by default: a committed row survives a power loss, not only
a crash (``sync: normal`` trades that for lower latency: a crash of the agent loses nothing,
a power cut may lose the last commits).

Nobody on the data path waits for that fsync. ``submit`` assigns ids and returns at once; a
writer thread commits what was submitted in one transaction (group commit), then resolves
the :class:`~agent.outbox.ticket.Ticket` objects given with each write, in order (a QoS 1
input is acknowledged only once its records are on disk). A delete can be a writer job too
(``delete_later``), so it always follows the insert of a row sent before its commit.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from agent import log
from agent.errors import SpoolError
from agent.outbox.ticket import Ticket
from agent.records import EVENT, Record, dumps
from agent.stages.period import PeriodWrite

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sink TEXT NOT NULL,
    prio INTEGER NOT NULL,
    created REAL NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_order ON outbox (sink, prio, id);
CREATE TABLE IF NOT EXISTS period (
    pipeline TEXT NOT NULL,
    device TEXT NOT NULL,
    updated REAL NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (pipeline, device)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS inputs (
    pipeline TEXT NOT NULL,
    batch INTEGER NOT NULL,
    ids BLOB NOT NULL,
    PRIMARY KEY (pipeline, batch)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dead_letter (
    id INTEGER PRIMARY KEY,
    sink TEXT,
    created REAL,
    moved REAL NOT NULL,
    reason TEXT NOT NULL,
    body BLOB
);
"""


GROUP_COMMIT_WAIT = 0.002  # s
# A write that comes this long after the last commit is committed at once: the wait above
# only pays when more work comes soon (a busy spool); alone it is a second wake-up per commit.
BUSY_GAP = 0.01  # s
RETRY_MAX = 5.0  # s between attempts to commit while the disk is full or failing
CLOSE_RETRY = 10.0  # s a closing spool keeps retrying before it gives the submissions up
_CORRUPT = {getattr(sqlite3, "SQLITE_CORRUPT", 11), getattr(sqlite3, "SQLITE_NOTADB", 26)}


def _unreadable(e: sqlite3.Error) -> bool:
    """A damaged file (not a database, malformed), as opposed to a full or failing disk."""
    code = getattr(e, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return code in _CORRUPT
    return isinstance(e, sqlite3.DatabaseError) and any(
        m in str(e) for m in ("not a database", "malformed")
    )


@dataclass(slots=True)
class _Job:
    sink: str
    records: Sequence[Record]
    first: int  # id of records[0]
    tickets: Sequence[Ticket]
    delete: Sequence[int] = ()
    period: PeriodWrite | None = None


class Spool:
    """Thread-safe outbox: one connection guarded by a lock, inserts by a writer thread."""

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
        self.commits = 0  # writer transactions (the bench counts them per sample)
        self._committed = 0.0  # monotonic time of the last commit
        self.dropped = 0
        self.expired = 0
        self.moved = 0  # rows moved aside (a sink refused them on their own)
        self._next_expiry = 0.0
        self.log = log.get(component="spool")
        self._lock = threading.Lock()
        self.moved_aside: Path | None = None
        self._db, top = self._open(sync)
        self._next_id = top + 1  # ids are given here, so a row can be sent before its COMMIT
        self._limit = log.RateLimit(5.0)
        # Commits run in a writer thread, grouped: the worker never waits for an fsync.
        self._jobs: list[_Job] = []
        self._cv = threading.Condition()
        self._done = self._next_id - 1  # every id up to this one is committed
        self._busy = False  # the writer holds taken jobs whose tickets are not all resolved
        self.write_error: str | None = None  # the last commit failed: intake is paused
        self.write_failures = 0
        self.dead = 0  # rows moved to the dead_letter table (undecodable)
        self.abandoned_records = 0
        self._abandoned = False
        self._closing = False
        self._writer = threading.Thread(target=self._write_loop, name="spool-writer", daemon=True)
        self._writer.start()

    def _open(self, sync: str) -> tuple[sqlite3.Connection, int]:
        """Connect, read the outbox's size and top id, count this open (the incarnation).

        A damaged file is moved aside (with its -wal and -shm) and a fresh one started; a
        full or failing disk is retried with backoff until it takes the write (no crash
        loop: the agent starts taking data once it can keep it).
        """
        wait = 0.0
        while True:
            db = None
            try:
                db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
                db.execute("PRAGMA journal_mode=WAL")
                self.sync = "normal" if sync == "normal" else "full"
                db.execute(f"PRAGMA synchronous={self.sync.upper()}")
                db.executescript(_SCHEMA)
                self._bytes = db.execute(
                    "SELECT COALESCE(SUM(LENGTH(body)) + COUNT(*) * 40, 0) FROM outbox"
                ).fetchone()[0]
                top = db.execute("SELECT COALESCE(MAX(id), 0) FROM outbox").fetchone()[0]
                self.incarnation = self._next_incarnation(db)
                return db, top
            except sqlite3.Error as e:
                if db is not None:
                    db.close()
                if str(self.path) == ":memory:":
                    raise
                if _unreadable(e):
                    self._move_aside(e)
                    continue
                wait = min(max(wait * 2, 0.2), RETRY_MAX)
                self.log.error(
                    "spool_open_failed", path=str(self.path), error=str(e), retry_in=wait
                )
                time.sleep(wait)

    def _move_aside(self, error: Exception) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        target = self.path.with_name(f"{self.path.name}.unreadable-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            part = Path(f"{self.path}{suffix}")
            if part.exists():
                part.rename(f"{target}{suffix}")
        self.moved_aside = target
        self.log.error(
            "spool_moved_aside", path=str(self.path), moved_to=str(target), error=str(error)
        )

    @staticmethod
    def _next_incarnation(db: sqlite3.Connection) -> int:
        """1 + the number of earlier opens of this file, committed before anything else."""
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "INSERT INTO meta VALUES ('incarnation', 1)"
                " ON CONFLICT(key) DO UPDATE SET value = value + 1"
            )
            n = db.execute("SELECT value FROM meta WHERE key = 'incarnation'").fetchone()[0]
            db.execute("COMMIT")
        except sqlite3.Error:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return n

    def submit(
        self,
        sink: str,
        records: Sequence[Record],
        tickets: Sequence[Ticket] = (),
        period: PeriodWrite | None = None,
    ) -> int:
        """Queue ``records`` for the writer and return their last id at once (the first is
        that minus ``len(records) - 1``).

        ``tickets`` are resolved in the writer after this and every earlier write is
        committed, in order. ``period`` is written in the same transaction (see
        :mod:`agent.stages.period`). Raises the writer's error if a commit failed.
        """
        return self._queue(sink, records, tickets, period=period)

    def after(self, tickets: Sequence[Ticket] = (), period: PeriodWrite | None = None) -> None:
        """Resolve ``tickets`` once everything submitted so far (and ``period``) is committed."""
        self._queue("", [], tickets, period=period)

    def delete_later(self, ids: Sequence[int], tickets: Sequence[Ticket] = ()) -> None:
        """Delete delivered rows in the writer, after their own commit; then resolve
        ``tickets``."""
        self._queue("", [], tickets, delete=ids)

    def _queue(
        self,
        sink: str,
        records: Sequence[Record],
        tickets: Sequence[Ticket],
        period: PeriodWrite | None = None,
        delete: Sequence[int] = (),
    ) -> int:
        self._check()
        with self._cv:
            first = self._next_id
            self._next_id += len(records)
            self._jobs.append(_Job(sink, records, first, tickets, delete, period))
            self._cv.notify()
        return first + len(records) - 1

    def wait(self, last: int | None = None) -> None:
        """Until every write (up to id ``last``) is committed and its tickets resolved
        (or given up by :meth:`close`)."""
        with self._cv:
            top = self._next_id - 1 if last is None else last
            self._cv.wait_for(
                lambda: self._done >= top and (last is not None or not (self._jobs or self._busy))
            )
        self._check()

    @property
    def failing(self) -> bool:
        """The last commit failed (disk full, I/O error): take no more input until one works."""
        return self.write_error is not None

    def _check(self) -> None:
        if self._abandoned:
            raise SpoolError(f"{self.path}: closed while writes failed ({self.write_error})")

    def _write_loop(self) -> None:
        wait = 0.0
        gave_up_at = None
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._jobs or self._closing)
                if not self._jobs:
                    return
            # On a busy spool, let an event on its way out be published first and more work
            # join this commit: fewer fsyncs, and the writer's Python does not compete with
            # the publish.
            if time.monotonic() - self._committed < BUSY_GAP:
                time.sleep(GROUP_COMMIT_WAIT)
            with self._cv:
                jobs, self._jobs = self._jobs, []
                self._busy = True  # a ticket-only job leaves _done as it is: wait() must
                # not return before its ticket (e.g. a QoS 1 acknowledgement) is resolved
            try:
                self._commit(jobs)
            except sqlite3.Error as e:  # disk full, I/O error: keep the jobs, retry, pause
                wait = min(max(wait * 2, 0.1), RETRY_MAX)
                with self._cv:
                    self._jobs[:0] = jobs  # first again, in order; no ticket is resolved
                    self._busy = False
                    self.write_failures += 1
                    first = self.write_error is None
                    self.write_error = str(e)
                    if self._closing:
                        gave_up_at = gave_up_at or time.monotonic() + CLOSE_RETRY
                        if time.monotonic() > gave_up_at:
                            self._give_up()
                            return
                if first or self._limit.allow("write"):
                    self.log.error(
                        "spool_write_failed",
                        path=str(self.path),
                        error=str(e),
                        records=sum(len(j.records) for j in jobs),
                        failures=self.write_failures,
                        retry_in=wait,
                    )
                with self._cv:
                    self._cv.wait(wait)
                continue
            if self.write_error is not None:
                self.log.warning(
                    "spool_write_recovered", path=str(self.path), failures=self.write_failures
                )
                self.write_error = None
            wait = 0.0
            for job in jobs:
                for ticket in job.tickets:
                    self._resolve(ticket)
            with self._cv:
                self._done = jobs[-1].first + len(jobs[-1].records) - 1
                self._busy = False
                self._cv.notify_all()

    def _resolve(self, ticket: Ticket) -> None:
        """A committed write's ticket. One that raises (a defect, say an acknowledgement
        that failed) is logged; the writer goes on, or every later commit and ``wait``
        would stall behind it."""
        try:
            ticket.resolve()
        except Exception:
            if self._limit.allow("ticket"):
                self.log.exception("spool_ticket_failed", ticket=type(ticket).__name__)

    def _give_up(self) -> None:
        """Closing with a disk that still fails: drop the submissions (caller holds _cv).

        Their tickets (QoS 1 acknowledgements) are never resolved, so the broker keeps those
        messages for the next start; only what QoS 0 brought is lost, and it is counted.
        """
        lost = sum(len(j.records) for j in self._jobs)
        self.log.error(
            "spool_writes_abandoned", path=str(self.path), records=lost, error=self.write_error
        )
        self.abandoned_records = lost
        self._abandoned = True
        self._busy = False
        self._done = self._next_id - 1
        self._jobs = []
        self._cv.notify_all()

    def _commit(self, jobs: list[_Job]) -> None:
        """One transaction for every job; bodies serialised one at a time (orjson gives each
        result a buffer of its own: a list of a large batch's bodies held tens of MB)."""
        now = time.time()
        size = 0

        def rows(job: _Job):
            nonlocal size
            for i, r in enumerate(job.records):
                body = dumps((r.kind, r.pipeline, r.device, r.id, r.payload))
                size += len(body) + 40
                yield job.first + i, job.sink, 0 if r.kind == EVENT else 1, now, body

        # A device's running totals only matter as of the last batch of this commit.
        period: dict[tuple[str, str], bytes] = {}
        with self._lock, self._rollback_on_error():
            self._db.execute("BEGIN")
            for job in jobs:
                if job.records:
                    self._db.executemany(
                        "INSERT INTO outbox (id, sink, prio, created, body) VALUES (?, ?, ?, ?, ?)",
                        rows(job),
                    )
                if job.period is not None:
                    self._period(job.period, period)
            if period:
                self._db.executemany(
                    "INSERT OR REPLACE INTO period VALUES (?, ?, ?, ?)",
                    [(p, d, now, body) for (p, d), body in period.items()],
                )
            deletes = [i for job in jobs for i in job.delete]
            freed = self._delete_counted(deletes) if deletes else 0
            self._db.execute("COMMIT")
            self.commits += 1
            self._committed = time.monotonic()
            self._bytes = max(0, self._bytes - freed) + size
            self.stored += sum(len(j.records) for j in jobs)
            if self._bytes > self.max_bytes:
                self._enforce_cap()

    @contextlib.contextmanager
    def _rollback_on_error(self):
        try:
            yield
        except sqlite3.Error:
            if self._db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
            raise

    def _period(self, write: PeriodWrite, pending: dict[tuple[str, str], bytes]) -> None:
        """Apply one batch's or flush's period rows in order (caller holds the lock)."""
        if write.clear:
            for key in [k for k in pending if k[0] == write.pipeline]:
                del pending[key]
            self._db.execute("DELETE FROM period WHERE pipeline = ?", (write.pipeline,))
        for device, body in write.rows:
            pending[(write.pipeline, device)] = body
        if (inputs := write.inputs) is not None:  # agent.runtime.redelivery
            self._db.execute(
                "INSERT OR REPLACE INTO inputs VALUES (?, ?, ?)",
                (write.pipeline, inputs.batch, inputs.ids),
            )
            self._db.execute(
                "DELETE FROM inputs WHERE pipeline = ? AND batch < ?",
                (write.pipeline, inputs.keep_from),
            )

    def input_rows(self, pipeline: str) -> list[tuple[int, bytes]]:
        """(batch, ids) of the QoS 1 input identities ``pipeline`` committed, oldest first."""
        with self._lock:
            return self._db.execute(
                "SELECT batch, ids FROM inputs WHERE pipeline = ? ORDER BY batch", (pipeline,)
            ).fetchall()

    def period_rows(self, pipeline: str | None = None) -> list[tuple[str, str, bytes, float]]:
        """(pipeline, device, body, updated) of the running totals left by the last run."""
        with self._lock:
            if pipeline is None:
                return self._db.execute(
                    "SELECT pipeline, device, body, updated FROM period"
                ).fetchall()
            return self._db.execute(
                "SELECT pipeline, device, body, updated FROM period WHERE pipeline = ?",
                (pipeline,),
            ).fetchall()

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
        out, bad = [], []
        for rid, body in rows:
            try:
                kind, pipeline, device, record_id, payload = orjson.loads(body)
                if not isinstance(payload, dict):
                    raise TypeError(f"payload is {type(payload).__name__}, not an object")
                record = Record(str(kind), str(pipeline), str(device), payload, str(record_id))
            except (orjson.JSONDecodeError, TypeError, ValueError) as e:
                bad.append((rid, f"{type(e).__name__}: {e}"))
                continue
            out.append((rid, record))
        if bad:
            self._dead_letter(bad)
        return out

    def _dead_letter(self, bad: list[tuple[int, str]]) -> None:
        """Move undecodable rows to the ``dead_letter`` table (counted, logged): one bad row
        must not block its lane, and it stays on disk for a look."""
        now = time.time()
        with self._lock, self._rollback_on_error():
            self._db.execute("BEGIN")
            for rid, reason in bad:
                self._db.execute(
                    "INSERT OR REPLACE INTO dead_letter SELECT id, sink, created, ?, ?, body"
                    " FROM outbox WHERE id = ?",
                    (now, reason, rid),
                )
            self._bytes = max(0, self._bytes - self._delete_counted([r for r, _ in bad]))
            self._db.execute("COMMIT")
        self.dead += len(bad)
        self.log.error(
            "spool_row_dead_lettered", rows=[r for r, _ in bad], reason=bad[0][1], total=self.dead
        )

    def _expire(self) -> None:
        cur = self._db.execute("DELETE FROM outbox WHERE created < ?", (time.time() - self.ttl,))
        if cur.rowcount > 0:
            self.expired += cur.rowcount
            self.log.warning("spool_expired", expired=cur.rowcount, total=self.expired)
            self._bytes = self._db.execute(
                "SELECT COALESCE(SUM(LENGTH(body)) + COUNT(*) * 40, 0) FROM outbox"
            ).fetchone()[0]

    def ack(self, ids: Sequence[int]) -> None:
        """Delete delivered rows.

        Without an fsync of its own (``synchronous=NORMAL`` for this commit; the next
        insert's fsync carries it to disk): a delete lost to a power cut only sends a row
        again, with its id, and an fsync per acknowledged batch is dear (docs/performance.md).
        """
        if not ids:
            return
        self.wait(max(ids))  # a row sent before its commit may still be on its way
        with self._lock:
            if self.sync == "full":
                self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                with self._rollback_on_error():
                    self._db.execute("BEGIN")
                    freed = self._delete_counted(ids)
                    self._db.execute("COMMIT")
            finally:
                if self.sync == "full":
                    self._db.execute("PRAGMA synchronous=FULL")
            self._bytes = max(0, self._bytes - freed)

    def _delete_counted(self, ids: Sequence[int]) -> int:
        """Delete rows (caller holds the lock, in a transaction); return the bytes freed."""
        freed = 0
        for lo in range(0, len(ids), 500):
            chunk = list(ids[lo : lo + 500])
            marks = ",".join("?" * len(chunk))
            freed += self._db.execute(
                f"SELECT COALESCE(SUM(LENGTH(body)), 0) FROM outbox WHERE id IN ({marks})",
                chunk,
            ).fetchone()[0]
            self._db.execute(f"DELETE FROM outbox WHERE id IN ({marks})", chunk)
        return freed + 40 * len(ids)

    def depth(self, sink: str | None = None) -> int:
        with self._lock:
            if sink is None:
                return self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
            return self._db.execute(
                "SELECT COUNT(*) FROM outbox WHERE sink = ?", (sink,)
            ).fetchone()[0]

    def oldest_age(self) -> float | None:
        """Seconds since the oldest waiting record was spooled (None: the spool is empty)."""
        with self._lock:
            row = self._db.execute("SELECT created FROM outbox ORDER BY id LIMIT 1").fetchone()
        return None if row is None else max(0.0, time.time() - row[0])

    def stats(self) -> dict:
        """Rows stored since start, waiting now, approximate bytes, dropped (cap), expired,
        moved aside (refused by a sink), dead-lettered (undecodable), and whether writes fail
        now (and how often they did)."""
        return {
            "stored": self.stored,
            "depth": self.depth(),
            "bytes": self._bytes,
            "dropped": self.dropped,
            "expired": self.expired,
            "moved_aside": self.moved,
            "dead": self.dead,
            "write_failing": self.failing,
            "write_failures": self.write_failures,
        }

    def move_aside(self, ids: Sequence[int], reason: str) -> None:
        """Move rows a sink refused on their own out of the outbox into ``moved_aside``,
        with the reason: kept on disk for a person to look at, no longer delivered."""
        self.wait(max(ids))
        marks = ",".join("?" * len(ids))
        with self._lock:
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS moved_aside (id INTEGER PRIMARY KEY, sink TEXT,"
                " created REAL, moved REAL, reason TEXT, body BLOB)"
            )
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT OR REPLACE INTO moved_aside SELECT id, sink, created, ?, ?, body"
                f" FROM outbox WHERE id IN ({marks})",
                [time.time(), reason, *ids],
            )
            self._bytes = max(0, self._bytes - self._delete_counted(list(ids)))
            self._db.execute("COMMIT")
            self.moved += len(ids)

    def close(self) -> None:
        """Commit what was submitted, stop the writer, close the file."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        self._writer.join()
        with self._lock:
            self._db.close()
