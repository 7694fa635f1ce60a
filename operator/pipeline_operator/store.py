"""The durable monitor-event store: the system of record for every pipeline's events.

An SQLite file (WAL mode, schema version in ``PRAGMA user_version``), created on first start.
Events are keyed by the pipeline's uid, so a deleted and re-created Pipeline of the same name
starts with an empty history; namespace and name are kept beside them for listing.

Writes never block the asyncio loop: :meth:`EventStore.append` puts the events on a queue and
returns; one writer thread takes everything queued and commits it in one transaction. A failed
commit is retried (with backoff) and the events stay queued: nothing is silently dropped, and
the operator keeps running. The same thread prunes each pipeline that received events down to
the newest ``retention`` at least every 30 s, so the count is "approximately 720", as Feldera
documents. Reads run in worker threads on their own connections (WAL lets them read while
the writer writes).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from .identity import PipelineKey
from .models import MonitorEvent, project_event
from .retry import Backoff


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
PRUNE_INTERVAL = 30.0
MAX_BATCH = 5000  # events per transaction: keeps the write-ahead log small
_SCHEMA = """
CREATE TABLE IF NOT EXISTS monitor_event (
    pipeline_uid TEXT NOT NULL,
    namespace    TEXT NOT NULL,
    name         TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    recorded_at  TEXT NOT NULL,   -- RFC 3339 UTC, fixed width: sorts as text
    event        TEXT NOT NULL,   -- Feldera's JSON of the event with selector "all"
    event_status TEXT NOT NULL    -- and with selector "status": served as stored, no parsing
);
CREATE UNIQUE INDEX IF NOT EXISTS monitor_event_id ON monitor_event (pipeline_uid, event_id);
CREATE INDEX IF NOT EXISTS monitor_event_newest
    ON monitor_event (pipeline_uid, recorded_at DESC, event_id DESC);
"""


def _fixed(event: MonitorEvent) -> str:
    """``recorded_at`` at fixed width (microseconds always written): sorts correctly as text."""
    return event.recorded_at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class _Batch:
    key: PipelineKey
    events: list[MonitorEvent]
    ignore_existing: bool = False


class StoreClosed(Exception):
    pass


class EventStore:
    def __init__(self, path: Path, retention: int = 720, prune_interval: float = PRUNE_INTERVAL) -> None:
        self.path = Path(path)
        self.retention = retention
        self.prune_interval = prune_interval
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._queue: queue.Queue[_Batch | None] = queue.Queue()
        self._local = threading.local()
        self._dirty: set[str] = set()
        self._closed = False
        self.appended = 0
        self.write_failures = 0
        self._pending = 0
        self._idle = threading.Condition()
        with self._connect() as conn:
            self._migrate(conn)
        self._writer = threading.Thread(target=self._write_loop, name="event-store-writer", daemon=True)
        self._writer.start()

    # -- connections -----------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=True)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute("PRAGMA journal_size_limit=67108864")  # the WAL shrinks back to 64 MB after checkpoints
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"{self.path} has schema version {version}; this operator knows up to "
                               f"{SCHEMA_VERSION}: upgrade the operator or use another --event-store")
        if version < 1:
            conn.executescript(_SCHEMA)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    # -- writing -----------------------------------------------------------------------------

    def append(self, key: PipelineKey, events: Sequence[MonitorEvent]) -> None:
        """Queue events for writing; returns at once."""
        self._enqueue(_Batch(key, list(events)))

    def seed(self, key: PipelineKey, events: Sequence[MonitorEvent]) -> None:
        """Queue events that may already be stored (e.g. from ``status.history``): existing ones are kept."""
        self._enqueue(_Batch(key, list(events), ignore_existing=True))

    def _enqueue(self, batch: _Batch) -> None:
        if self._closed:
            raise StoreClosed("the event store is closed")
        if not batch.events:
            return
        with self._idle:
            self._pending += 1
        self._queue.put(batch)

    def _write_loop(self) -> None:
        conn = self._connect()
        last_prune = time.monotonic()
        backoff = Backoff(initial=0.1, maximum=5.0)
        held: list[_Batch] = []
        stopping = False
        while True:
            if not held and not stopping:
                wait = max(0.05, self.prune_interval - (time.monotonic() - last_prune))
                item: _Batch | object | None
                try:
                    item = self._queue.get(timeout=wait)
                except queue.Empty:
                    item = _NOTHING
                if item is None:
                    stopping = True
                elif isinstance(item, _Batch):
                    held.append(item)
            count = sum(len(b.events) for b in held)
            while count < MAX_BATCH:  # what is queued, in one transaction
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                else:
                    held.append(more)
                    count += len(more.events)
            if held:
                try:
                    self._commit(conn, held)
                except sqlite3.Error as exc:
                    self.write_failures += 1
                    delay = backoff.failure() or 5.0
                    log.warning("event store: writing %d events failed (%s); retrying in %.1fs",
                                sum(len(b.events) for b in held), exc, delay)
                    time.sleep(delay)
                    continue
                backoff.success()
                with self._idle:
                    self._pending -= len(held)
                    self._idle.notify_all()
                held = []
            if stopping or time.monotonic() - last_prune >= self.prune_interval:
                self._prune(conn)
                last_prune = time.monotonic()
            if stopping:
                conn.close()
                return

    def _commit(self, conn: sqlite3.Connection, batches: list[_Batch]) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for batch in batches:
                verb = "INSERT OR IGNORE" if batch.ignore_existing else "INSERT OR REPLACE"
                conn.executemany(
                    f"{verb} INTO monitor_event (pipeline_uid, namespace, name, event_id, recorded_at, event, "
                    "event_status) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(batch.key.uid, batch.key.namespace, batch.key.name, str(e.event_id), _fixed(e),
                      _json(project_event(e, "all")), _json(project_event(e, "status"))) for e in batch.events])
                self._dirty.add(batch.key.uid)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self.appended += sum(len(b.events) for b in batches)

    def _prune(self, conn: sqlite3.Connection) -> None:
        dirty, self._dirty = self._dirty, set()
        for uid in dirty:
            try:
                conn.execute(
                    "DELETE FROM monitor_event WHERE pipeline_uid = ? AND event_id NOT IN ("
                    " SELECT event_id FROM monitor_event WHERE pipeline_uid = ?"
                    " ORDER BY recorded_at DESC, event_id DESC LIMIT ?)", (uid, uid, self.retention))
            except sqlite3.Error as exc:
                self._dirty.add(uid)
                log.warning("event store pruning failed (%s); will try again", exc)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything queued so far is committed."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def prune_now(self) -> None:
        """Prune at once (tests and benchmarks); normally the writer does it every 30 s."""
        self.flush()
        with self._connect() as conn:
            self._dirty_all(conn)
            self._prune(conn)

    def _dirty_all(self, conn: sqlite3.Connection) -> None:
        self._dirty |= {row[0] for row in conn.execute("SELECT DISTINCT pipeline_uid FROM monitor_event")}

    def close(self) -> None:
        """Commit what is queued, prune, and stop the writer."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._writer.join(timeout=60)
        log.info("event store closed: %d events appended, %d write failures", self.appended, self.write_failures)
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()

    # -- reading (blocking: call through asyncio.to_thread) -----------------------------------

    def list(self, uid: str, limit: int | None = None) -> list[MonitorEvent]:
        """Newest first (``recorded_at`` then ``event_id``)."""
        sql = ("SELECT event FROM monitor_event WHERE pipeline_uid = ? "
               "ORDER BY recorded_at DESC, event_id DESC")
        args: tuple[Any, ...] = (uid,)
        if limit is not None:
            sql += " LIMIT ?"
            args = (uid, limit)
        return [MonitorEvent.model_validate_json(row[0]) for row in self._reader().execute(sql, args)]

    def list_json(self, uid: str, selector: str = "status") -> str:
        """A pipeline's events, newest first, as Feldera's JSON array for ``selector``, built from the
        stored JSON without parsing it (what the HTTP API serves)."""
        column = "event" if selector == "all" else "event_status"
        rows = self._reader().execute(
            f"SELECT {column} FROM monitor_event WHERE pipeline_uid = ? ORDER BY recorded_at DESC, event_id DESC",
            (uid,))
        return "[" + ",".join(row[0] for row in rows) + "]"

    def get_json(self, uid: str, event_id: uuid.UUID | None, selector: str = "status") -> str | None:
        """One event (or the newest, with ``event_id`` None) as Feldera's JSON for ``selector``."""
        column = "event" if selector == "all" else "event_status"
        if event_id is None:
            row = self._reader().execute(
                f"SELECT {column} FROM monitor_event WHERE pipeline_uid = ? "
                "ORDER BY recorded_at DESC, event_id DESC LIMIT 1", (uid,)).fetchone()
        else:
            row = self._reader().execute(
                f"SELECT {column} FROM monitor_event WHERE pipeline_uid = ? AND event_id = ?",
                (uid, str(event_id))).fetchone()
        return None if row is None else row[0]

    def get(self, uid: str, event_id: uuid.UUID) -> MonitorEvent | None:
        row = self._reader().execute("SELECT event FROM monitor_event WHERE pipeline_uid = ? AND event_id = ?",
                                     (uid, str(event_id))).fetchone()
        return None if row is None else MonitorEvent.model_validate_json(row[0])

    def latest(self, uid: str) -> MonitorEvent | None:
        events = self.list(uid, limit=1)
        return events[0] if events else None

    def count(self, uid: str | None = None) -> int:
        if uid is None:
            return cast(int, self._reader().execute("SELECT COUNT(*) FROM monitor_event").fetchone()[0])
        return cast(int, self._reader().execute("SELECT COUNT(*) FROM monitor_event WHERE pipeline_uid = ?",
                                                (uid,)).fetchone()[0])

    def delete(self, uid: str) -> int:
        self.flush()
        with self._connect() as conn:
            return conn.execute("DELETE FROM monitor_event WHERE pipeline_uid = ?", (uid,)).rowcount



_NOTHING = object()
