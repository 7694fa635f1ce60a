"""The SQLite event store: a file, the embedded default, for one replica.

The file is in WAL mode, its schema version in ``PRAGMA user_version``, created on first start.
Events are keyed by the pipeline's uid, so a deleted and re-created Pipeline of the same name
starts with an empty history; namespace and name are kept beside them for listing. Writes go through
the queue of :class:`.base.QueuedEventStore`; reads run in worker threads on their own connections
(WAL lets them read while the writer writes).

The store survives its file: a corrupt file (at start, or found corrupt by the writer) is moved
aside to ``<name>.corrupt-<UTC timestamp>`` (with its ``-wal`` and ``-shm``) and a fresh store is
started; a file deleted or replaced under the running operator (its device and inode changed) is
re-opened or re-created. Either way the generation advances and every pipeline re-seeds its
events from ``status.history`` (the older ones are lost, and the log says where the old file is).
"""


from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import sqlite3
import threading
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any, cast

from ..identity import PipelineKey
from ..models import MonitorEvent, project_event
from ..retry import Backoff
from .base import (
    DEFAULT_QUEUE_LIMIT,
    PRUNE_INTERVAL,
    STORED_UIDS,
    QueuedEventStore,
    StoreUnavailable,
    _Batch,
    _json,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
CHECK_INTERVAL = 1.0  # how often an idle writer checks that the file is still the one it opened
_SIDE_FILES = ("-wal", "-shm")
_CORRUPT_CODES = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
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


def is_corrupt(exc: BaseException) -> bool:
    """SQLite says the file is not a database, or a malformed one (not a passing I/O problem)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int) and (code & 0xFF) in _CORRUPT_CODES:
        return True
    text = str(exc).lower()
    return isinstance(exc, sqlite3.DatabaseError) and ("not a database" in text or "malformed" in text)


def schema_gone(exc: BaseException) -> bool:
    """The file lost its table: it was emptied (truncated) under the store, which SQLite takes for
    a new, empty database rather than a corrupt one."""
    return isinstance(exc, sqlite3.OperationalError) and "no such table" in str(exc).lower()


class SqliteUnavailable(StoreUnavailable, sqlite3.DatabaseError):
    """:class:`StoreUnavailable` from SQLite; still a ``sqlite3.DatabaseError`` for callers that catch SQLite's own."""


class _Moved(Exception):
    """The file at the store's path is no longer the one the writer opened."""


class SqliteEventStore(QueuedEventStore):
    """The SQLite event store (see the module's description)."""

    def __init__(self, path: Path, retention: int = 720, prune_interval: float = PRUNE_INTERVAL,
                 queue_limit: int = DEFAULT_QUEUE_LIMIT) -> None:
        super().__init__(retention, prune_interval, queue_limit)
        self.path = Path(path)
        self.where = str(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._suspect = False  # a reader found the file corrupt: the writer checks it
        self._identity: tuple[int, int] | None = None
        try:
            self._open_checked().close()
        except (sqlite3.Error, OSError) as exc:
            if isinstance(exc, sqlite3.DatabaseError) and is_corrupt(exc):
                raise
            # Not the file's content but its volume (read-only, full, unmounted): keep running, the
            # writer retries and events wait in the bounded queue.
            self.write_failures += 1
            log.error("event store %s cannot be opened (%s); the operator keeps running and retries, monitor "
                      "events wait in memory (up to --event-store-queue-limit); check the volume", self.path, exc)
        self._writer = threading.Thread(target=self._write_loop, name="event-store-writer", daemon=True)
        self._writer.start()

    # -- connections -----------------------------------------------------------------------

    def _connect(self, create: bool = True) -> sqlite3.Connection:
        """A connection; readers do not ``create``: a reader must never make an empty file where the
        writer is about to start a fresh store (it would look like a file replaced under it)."""
        target = self.path if create else f"file:{urllib.parse.quote(str(self.path))}?mode=rw"
        conn = sqlite3.connect(target, timeout=30, isolation_level=None, check_same_thread=True, uri=not create)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute("PRAGMA journal_size_limit=67108864")  # the WAL shrinks back to 64 MB after checkpoints
        return conn

    def _reader(self) -> sqlite3.Connection:
        """This thread's reading connection, re-opened after the store was started afresh."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and self._local.generation != self.generation:
            conn.close()
            conn = None
        if conn is None:
            conn = self._local.conn = self._connect(create=False)
            self._local.generation = self.generation
        return conn

    def _query(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        """The rows of a read on this thread's connection; a read that finds the file corrupt has the
        writer check it (and start afresh if so) instead of failing every read from now on. A file
        that cannot be read now (corrupt, gone, locked, its volume failing) is :class:`StoreUnavailable`."""
        try:
            return self._reader().execute(sql, args).fetchall()
        except sqlite3.DatabaseError as exc:
            if is_corrupt(exc) or schema_gone(exc):
                self._suspect = True
            elif not isinstance(exc, sqlite3.OperationalError):
                raise  # not the file but this code (a wrong statement): a bug, not an unavailable store
            raise SqliteUnavailable(f"the event store {self.path} cannot be read now ({exc})") from exc

    def _file_identity(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return st.st_dev, st.st_ino

    def _open_checked(self, full_check: bool = True) -> sqlite3.Connection:
        """Open the file and bring its schema up to date; a corrupt file is moved aside and a fresh
        one started (the operator keeps running; the Pipelines' ``status.history`` re-seeds it)."""
        try:
            conn = self._connect()
            try:
                self._migrate(conn)
                if full_check:
                    problem = conn.execute("PRAGMA quick_check(1)").fetchone()[0]
                    if problem != "ok":
                        raise sqlite3.DatabaseError(f"database disk image is malformed: {problem}")
            except BaseException:
                conn.close()
                raise
        except sqlite3.DatabaseError as exc:
            if not is_corrupt(exc):
                raise
            aside = self._move_aside("corrupt")
            self._recovered(f"the event store {self.path} is corrupt ({exc}); it was moved aside to {aside} and "
                            f"a fresh store started")
            conn = self._connect()
            self._migrate(conn)
        self._identity = self._file_identity()
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"{self.path} has schema version {version}; this operator knows up to "
                               f"{SCHEMA_VERSION}: upgrade the operator or use another --event-store")
        if version < 1:
            conn.executescript(_SCHEMA)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _move_aside(self, why: str) -> Path:
        """Rename the file and its ``-wal``/``-shm`` to ``<name>.<why>-<UTC timestamp>`` (kept for inspection)."""
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        aside = self.path.with_name(f"{self.path.name}.{why}-{stamp}")
        for suffix in ("", *_SIDE_FILES):
            source = self.path.with_name(self.path.name + suffix)
            try:
                source.rename(aside.with_name(aside.name + suffix))
            except FileNotFoundError:
                pass
        return aside

    # -- writing -----------------------------------------------------------------------------

    def _write_loop(self) -> None:
        conn: sqlite3.Connection | None = None
        last_prune = last_check = time.monotonic()
        backoff = Backoff(initial=0.1, maximum=5.0)
        held: list[_Batch] = []
        stopping = False
        failing = False
        while True:
            wait = None
            if not held and not stopping:
                wait = max(0.05, min(CHECK_INTERVAL - (time.monotonic() - last_check),
                                     self.prune_interval - (time.monotonic() - last_prune)))
            stopping = self._take(held, wait) or stopping  # what is queued, in one transaction
            try:
                if conn is None:
                    conn = self._open_checked(full_check=False)
                if held or time.monotonic() - last_check >= CHECK_INTERVAL:
                    last_check = time.monotonic()
                    self._check_identity()
                if self._suspect:
                    self._suspect = False
                    self._check_content()
                if held:
                    self._timed_commit(functools.partial(self._commit, conn, held))
            except (_Moved, sqlite3.DatabaseError) as found:
                exc: BaseException = found
                if isinstance(found, _Moved) or is_corrupt(found) or schema_gone(found):
                    try:
                        conn = self._replace(conn, found)
                        continue  # write what is held into the fresh store
                    except (sqlite3.Error, OSError) as again:  # starting afresh failed too: retried below
                        conn, exc = None, again
                conn = self._close_quietly(conn)
                self.write_failures += 1
                failing = True
                events = sum(len(b.events) for b in held)
                if stopping:
                    log.error("event store: writing %d events failed at shutdown (%s); they are not stored "
                              "(the newest are in status.history and are re-seeded at the next start)", events, exc)
                    return
                delay = backoff.failure() or 5.0
                log.warning("event store %s: writing %d events failed (%s); keeping them and retrying in %.1fs "
                            "(check the volume: full, read-only or gone?)", self.path, events, exc, delay)
                time.sleep(delay)
                continue
            except OSError as exc:  # the folder itself is gone or unreadable
                conn = self._close_quietly(conn)
                self.write_failures += 1
                failing = True
                if stopping:
                    log.error("event store: cannot reach %s at shutdown (%s); queued events are not stored",
                              self.path, exc)
                    return
                delay = backoff.failure() or 5.0
                log.warning("event store: cannot reach %s (%s); retrying in %.1fs", self.path, exc, delay)
                time.sleep(delay)
                continue
            backoff.success()
            if held:
                self._committed(held)
                held = []
            if failing:
                failing = False
                self._writable_again()
            if stopping or time.monotonic() - last_prune >= self.prune_interval:
                self._prune(conn)
                last_prune = time.monotonic()
            if stopping:
                conn.close()
                return

    def _check_content(self) -> None:
        """Check the file as a new connection sees it (the writer's own may still see good pages it
        cached or wrote to the write-ahead log); raises if it is corrupt."""
        probe = self._connect()
        try:
            problem = probe.execute("PRAGMA quick_check(1)").fetchone()[0]
            probe.execute("SELECT 1 FROM monitor_event LIMIT 1").fetchall()  # emptied: "no such table"
        finally:
            probe.close()
        if problem != "ok":
            raise sqlite3.DatabaseError(f"database disk image is malformed: {problem}")

    def _check_identity(self) -> None:
        """The file is still the one opened, and not emptied or overwritten in place: such a file keeps
        its inode, and the writer's connection would go on writing to it from its cache while any new
        connection finds no table, or no database."""
        now = self._file_identity()
        if now != self._identity:
            raise _Moved("deleted" if now is None else "replaced by another file")
        try:
            with open(self.path, "rb") as fh:
                header = fh.read(100)
                size = os.fstat(fh.fileno()).st_size
        except FileNotFoundError:
            raise _Moved("deleted") from None
        if not header:
            raise sqlite3.OperationalError("no such table: monitor_event (the file was emptied)")
        if size >= 100 and not header.startswith(b"SQLite format 3\x00"):
            raise sqlite3.DatabaseError("file is not a database (its header is gone)")

    def _replace(self, conn: sqlite3.Connection | None, exc: BaseException) -> sqlite3.Connection:
        """Start afresh after the file was found corrupt, deleted or replaced."""
        self._close_quietly(conn)
        if isinstance(exc, _Moved):
            # The write-ahead log and index beside the path belong to the database that was deleted or
            # replaced (SQLite keeps them when the file moved under it): applied to the new file they
            # would bring back the old pages.
            for suffix in _SIDE_FILES:
                self.path.with_name(self.path.name + suffix).unlink(missing_ok=True)
        if isinstance(exc, _Moved) and self._file_identity() is None:
            what = f"the event store {self.path} was deleted while the operator ran; a fresh store was created"
        elif isinstance(exc, _Moved):
            what = f"the event store {self.path} was replaced by another file while the operator ran; it is used now"
        elif schema_gone(exc):
            # Not reused in place: the connections still open on it would keep it locked.
            aside = self._move_aside("emptied")
            what = (f"the event store {self.path} was emptied (truncated) while the operator ran; it was moved "
                    f"aside to {aside} and a fresh store started")
        else:
            aside = self._move_aside("corrupt")
            what = (f"the event store {self.path} became corrupt ({exc}); it was moved aside to {aside} and a fresh "
                    f"store started")
        generation = self.generation
        fresh = self._open_checked(full_check=True)
        if self.generation == generation:  # (a replacement found corrupt itself was reported already)
            self._recovered(what)
        return fresh

    @staticmethod
    def _close_quietly(conn: sqlite3.Connection | None) -> None:
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error:
                pass
        return None

    def _commit(self, conn: sqlite3.Connection, batches: list[_Batch]) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for batch in batches:
                if batch.forget:
                    conn.execute("DELETE FROM monitor_event WHERE pipeline_uid = ?", (batch.key.uid,))
                    self._dirty.discard(batch.key.uid)
                    continue
                verb = "INSERT OR IGNORE" if batch.ignore_existing else "INSERT OR REPLACE"
                conn.executemany(
                    f"{verb} INTO monitor_event (pipeline_uid, namespace, name, event_id, recorded_at, event, "
                    "event_status) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(batch.key.uid, batch.key.namespace, batch.key.name, str(e.event_id), _fixed(e),
                      _json(project_event(e, "all")), _json(project_event(e, "status"))) for e in batch.events])
                self._dirty.add(batch.key.uid)
            conn.execute("COMMIT")
        except BaseException:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
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

    def prune_now(self) -> None:
        """Prune at once (tests and benchmarks); normally the writer does it every 30 s."""
        self.flush()
        with self._connect() as conn:
            self._dirty_all(conn)
            self._prune(conn)

    def _dirty_all(self, conn: sqlite3.Connection) -> None:
        self._dirty |= {row[0] for row in conn.execute("SELECT DISTINCT pipeline_uid FROM monitor_event")}

    def _close_readers(self) -> None:
        conn = getattr(self._local, "conn", None)  # this thread's (the others' close with their threads)
        if conn is not None:
            conn.close()

    # -- reading (blocking: call through asyncio.to_thread) -----------------------------------

    def pipeline_uids(self) -> list[str]:
        """The uid of every pipeline with events in the store (for the sweep of deleted pipelines' events)."""
        return [row[0] for row in self._query(STORED_UIDS, ())]

    def pipeline_key(self, uid: str) -> PipelineKey | None:
        """The namespace and name stored with a pipeline's events; None if it has none."""
        rows = self._query("SELECT namespace, name FROM monitor_event WHERE pipeline_uid = ? LIMIT 1", (uid,))
        return PipelineKey(rows[0][0], rows[0][1], uid) if rows else None

    def list(self, uid: str, limit: int | None = None) -> list[MonitorEvent]:
        """Newest first (``recorded_at`` then ``event_id``)."""
        sql = ("SELECT event FROM monitor_event WHERE pipeline_uid = ? "
               "ORDER BY recorded_at DESC, event_id DESC")
        args: tuple[Any, ...] = (uid,)
        if limit is not None:
            sql += " LIMIT ?"
            args = (uid, limit)
        return [MonitorEvent.model_validate_json(row[0]) for row in self._query(sql, args)]

    def list_json(self, uid: str, selector: str = "status") -> str:
        """A pipeline's events, newest first, as Feldera's JSON array for ``selector``, built from the
        stored JSON without parsing it (what the HTTP API serves)."""
        column = "event" if selector == "all" else "event_status"
        rows = self._query(
            f"SELECT {column} FROM monitor_event WHERE pipeline_uid = ? ORDER BY recorded_at DESC, event_id DESC",
            (uid,))
        return "[" + ",".join(row[0] for row in rows) + "]"

    def get_json(self, uid: str, event_id: uuid.UUID | None, selector: str = "status") -> str | None:
        """One event (or the newest, with ``event_id`` None) as Feldera's JSON for ``selector``."""
        column = "event" if selector == "all" else "event_status"
        if event_id is None:
            rows = self._query(
                f"SELECT {column} FROM monitor_event WHERE pipeline_uid = ? "
                "ORDER BY recorded_at DESC, event_id DESC LIMIT 1", (uid,))
        else:
            rows = self._query(
                f"SELECT {column} FROM monitor_event WHERE pipeline_uid = ? AND event_id = ?",
                (uid, str(event_id)))
        return rows[0][0] if rows else None

    def get(self, uid: str, event_id: uuid.UUID) -> MonitorEvent | None:
        rows = self._query("SELECT event FROM monitor_event WHERE pipeline_uid = ? AND event_id = ?",
                           (uid, str(event_id)))
        return MonitorEvent.model_validate_json(rows[0][0]) if rows else None

    def count(self, uid: str | None = None) -> int:
        if uid is None:
            return cast(int, self._query("SELECT COUNT(*) FROM monitor_event", ())[0][0])
        return cast(int, self._query("SELECT COUNT(*) FROM monitor_event WHERE pipeline_uid = ?", (uid,))[0][0])

    def delete(self, uid: str) -> int:
        """Remove a pipeline's events now (tests and tools; the operator queues :meth:`forget`)."""
        self.flush()
        with self._connect() as conn:
            return conn.execute("DELETE FROM monitor_event WHERE pipeline_uid = ?", (uid,)).rowcount

