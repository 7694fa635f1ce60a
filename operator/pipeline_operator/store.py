"""The durable monitor-event store: the system of record for every pipeline's events.

Two backends behind one interface (:class:`EventStorage`), chosen by ``--event-store`` through
:func:`open_event_store`: an SQLite file (this module; the embedded default, for one replica), or a
PostgreSQL database (:mod:`.store_postgres`, given as a ``postgresql://`` URL; what Feldera itself keeps
its events in, and what several replicas share: any replica reads it, the leader writes). Both queue
writes the same way (:class:`QueuedEventStore`), keep the same retention and order, and seed from
``status.history`` without duplicating; a read that cannot be served raises :class:`StoreUnavailable`.

The SQLite store is a file (WAL mode, schema version in ``PRAGMA user_version``), created on first start.
Events are keyed by the pipeline's uid, so a deleted and re-created Pipeline of the same name
starts with an empty history; namespace and name are kept beside them for listing.

Writes never block the asyncio loop: :meth:`EventStore.append` puts the events on a queue and
returns; one writer thread takes everything queued and commits it in one transaction. A failed
commit is retried (with backoff) and the events stay queued, but the queue is bounded
(``queue_limit`` events): when it is full, *new* events are dropped and counted in
:attr:`EventStore.dropped`. Dropping the newest rather than the oldest is deliberate: the newest
events are also in each Pipeline's ``status.history``, from which the store is re-seeded once
it can be written again (the :attr:`EventStore.generation` advances), whereas the oldest would
be lost for good. The same thread prunes each pipeline that received events down to the newest
``retention`` at least every 30 s, so the count is "approximately 720", as Feldera documents.
Reads run in worker threads on their own connections (WAL lets them read while the writer
writes); the newest event of each pipeline is also kept in memory, so a monitoring pass never
waits for the writer.

The store survives its file: a corrupt file (at start, or found corrupt by the writer) is moved
aside to ``<name>.corrupt-<UTC timestamp>`` (with its ``-wal`` and ``-shm``) and a fresh store is
started; a file deleted or replaced under the running operator (its device and inode changed) is
re-opened or re-created. Either way the generation advances and every pipeline re-seeds its
events from ``status.history`` (the older ones are lost, and the log says where the old file is).
"""

from __future__ import annotations

import bisect
import datetime as dt
import functools
import json
import logging
import math
import os
import queue
import sqlite3
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, LiteralString, Protocol, cast

from .identity import PipelineKey
from .models import MonitorEvent, project_event
from .retry import Backoff


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
PRUNE_INTERVAL = 30.0
CHECK_INTERVAL = 1.0  # how often an idle writer checks that the file is still the one it opened
MAX_BATCH = 5000  # events per transaction: keeps the write-ahead log small
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # seconds
DEFAULT_QUEUE_LIMIT = 100_000
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
# Every pipeline uid in the store (both backends): one probe of the (pipeline_uid, ...) index per pipeline, a
# "loose index scan". About 10 ms for a thousand pipelines of 720 events each, where SELECT DISTINCT reads
# every entry of the index (150 ms).
STORED_UIDS: LiteralString = (
    "WITH RECURSIVE uids(uid) AS ("
    " SELECT min(pipeline_uid) FROM monitor_event"
    " UNION ALL SELECT (SELECT min(pipeline_uid) FROM monitor_event WHERE pipeline_uid > uids.uid)"
    " FROM uids WHERE uids.uid IS NOT NULL) "
    "SELECT uid FROM uids WHERE uid IS NOT NULL")


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


@dataclass
class _Batch:
    key: PipelineKey
    events: list[MonitorEvent]
    ignore_existing: bool = False
    forget: bool = False  # delete every stored event of the pipeline (its deletion)


@dataclass(frozen=True)
class Recovery:
    """The store was started afresh (the old file was corrupt, deleted or replaced): events
    stored before ``at`` are lost except those the Pipelines' ``status.history`` keeps."""
    generation: int
    at: dt.datetime
    what: str  # what happened, and where the old file is


class StoreClosed(Exception):
    pass


class StoreUnavailable(Exception):
    """A read of the event store failed for a reason outside the operator: the file is corrupt, gone
    or locked, the database server does not answer. The HTTP API answers 503 ``EventStoreUnavailable``;
    the writer recovers on its own (events wait in its queue)."""


class SqliteUnavailable(StoreUnavailable, sqlite3.DatabaseError):
    """:class:`StoreUnavailable` from SQLite; still a ``sqlite3.DatabaseError`` for callers that catch SQLite's own."""


class EventStorage(Protocol):
    """What the operator uses of an event store, whichever the backend (:class:`EventStore`,
    :class:`.store_postgres.PostgresEventStore`). Writing never blocks; reading does (call it through
    ``asyncio.to_thread``) and raises :class:`StoreUnavailable` when the store cannot be read now."""
    retention: int
    queue_limit: int
    appended: int
    write_failures: int
    dropped: int
    generation: int
    recovery: Recovery | None

    def append(self, key: PipelineKey, events: Sequence[MonitorEvent]) -> None: ...

    def seed(self, key: PipelineKey, events: Sequence[MonitorEvent]) -> None: ...

    def forget(self, key: PipelineKey) -> None: ...

    def forgetting(self) -> frozenset[str]: ...

    def newest(self, uid: str) -> MonitorEvent | None: ...

    @property
    def queue_length(self) -> int: ...

    def stats(self) -> dict[str, int]: ...

    def commit_seconds(self) -> tuple[list[tuple[float, int]], float]: ...

    def flush(self, timeout: float = 30.0) -> bool: ...

    def prune_now(self) -> None: ...

    def close(self, timeout: float = 60.0) -> None: ...

    def pipeline_uids(self) -> list[str]: ...

    def pipeline_key(self, uid: str) -> PipelineKey | None: ...

    def list(self, uid: str, limit: int | None = None) -> list[MonitorEvent]: ...

    def list_json(self, uid: str, selector: str = "status") -> str: ...

    def get_json(self, uid: str, event_id: uuid.UUID | None, selector: str = "status") -> str | None: ...

    def get(self, uid: str, event_id: uuid.UUID) -> MonitorEvent | None: ...

    def latest(self, uid: str) -> MonitorEvent | None: ...

    def count(self, uid: str | None = None) -> int: ...

    def delete(self, uid: str) -> int: ...


POSTGRES_SCHEMES = ("postgresql", "postgres")


def is_database_url(target: object) -> bool:
    """``--event-store`` names a PostgreSQL database (``postgresql://`` or ``postgres://``), not a file."""
    return isinstance(target, str) and "://" in target and target.partition("://")[0].lower() in POSTGRES_SCHEMES


def check_database_url(url: str) -> None:
    """Refuse a database URL that holds a password: the command line and the Pod spec show it to anyone
    who may list processes or read Deployments; libpq takes it from the environment instead."""
    parts = urllib.parse.urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    query = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    if userinfo.partition(":")[2] or query.get("password") or query.get("sslpassword"):
        raise ValueError("the --event-store URL (PIPELINE_OPERATOR_EVENT_STORE) must not contain a password, "
                         "it would be visible in the process list and the Pod spec: remove it from the URL and "
                         "pass it through the environment, PGPASSWORD or a PGPASSFILE (for example from a "
                         "Kubernetes Secret), as libpq reads them")


def open_event_store(target: Path | str, retention: int = 720, prune_interval: float = PRUNE_INTERVAL,
                     queue_limit: int = DEFAULT_QUEUE_LIMIT) -> EventStorage:
    """The event store ``--event-store`` names: a PostgreSQL database for a ``postgresql://`` URL (its
    password from the environment, as libpq reads it), else an SQLite file at that path. Blocking."""
    if is_database_url(target):
        from .store_postgres import PostgresEventStore
        return PostgresEventStore(str(target), retention, prune_interval, queue_limit)
    return EventStore(Path(target), retention, prune_interval, queue_limit)


class QueuedEventStore:
    """What both backends share: the bounded queue one writer thread drains, the newest event of each
    pipeline in memory, and the counters ``/metrics`` shows. A backend sets :attr:`where` (for the
    log) and starts :attr:`_writer`, its write loop: it takes what is queued with :meth:`_take`, commits
    it in one transaction, and reports it written with :meth:`_committed`."""

    where = "the event store"

    def __init__(self, retention: int, prune_interval: float, queue_limit: int) -> None:
        self.retention = retention
        self.prune_interval = prune_interval
        self.queue_limit = queue_limit
        self._queue: queue.Queue[_Batch | None] = queue.Queue()
        self._dirty: set[str] = set()
        self._closed = False
        self.appended = 0
        self.write_failures = 0
        self.dropped = 0
        self.generation = 0
        """Advances whenever the store lost events (recovered file, dropped events): pipelines re-seed."""
        self.recovery: Recovery | None = None
        self._newest: dict[str, MonitorEvent] = {}
        self._forgetting: set[str] = set()  # uids whose removal is queued and not committed yet
        self._dropping = False  # events are being dropped (the queue is full) until writes succeed again
        self._queued = 0  # events queued or held by the writer, not yet committed
        self._pending = 0
        self._idle = threading.Condition()
        self._writer: threading.Thread | None = None
        self._commits = [0] * (len(COMMIT_BUCKETS) + 1)  # commits by duration bucket (the last: slower)
        self._commit_sum = 0.0

    # -- writing -----------------------------------------------------------------------------

    def append(self, key: PipelineKey, events: Sequence[MonitorEvent]) -> None:
        """Queue events for writing; returns at once."""
        if events:
            newest = max(events, key=lambda e: (e.recorded_at, str(e.event_id)))
            known = self._newest.get(key.uid)
            if known is None or (newest.recorded_at, str(newest.event_id)) >= (known.recorded_at, str(known.event_id)):
                self._newest[key.uid] = newest
        self._enqueue(_Batch(key, list(events)))

    def seed(self, key: PipelineKey, events: Sequence[MonitorEvent]) -> None:
        """Queue events that may already be stored (e.g. from ``status.history``): existing ones are kept."""
        self._enqueue(_Batch(key, list(events), ignore_existing=True))

    def forget(self, key: PipelineKey) -> None:
        """Queue the removal of every event of a pipeline (after what is queued before it); returns at once."""
        self._newest.pop(key.uid, None)
        self._forgetting.add(key.uid)
        self._enqueue(_Batch(key, [], forget=True))

    def forgetting(self) -> frozenset[str]:
        """The pipelines whose removal is queued and not written yet (the store cannot be written now)."""
        return frozenset(self._forgetting)

    def newest(self, uid: str) -> MonitorEvent | None:
        """The newest event appended since start (in memory: never waits for the writer or the store)."""
        return self._newest.get(uid)

    @property
    def queue_length(self) -> int:
        """Events waiting to be written (at most ``queue_limit``)."""
        return self._queued

    def stats(self) -> dict[str, int]:
        """What ``/metrics`` shows of the store: events dropped because the queue was full, failed
        commits, events waiting to be written, events written, and the store's generation."""
        return {"dropped": self.dropped, "write_failures": self.write_failures, "queued": self.queue_length,
                "appended": self.appended, "generation": self.generation}

    def commit_seconds(self) -> tuple[list[tuple[float, int]], float]:
        """How long the writer's transactions took: cumulative counts by upper bound (Prometheus'
        histogram buckets, ``inf`` last) and their total."""
        with self._idle:
            counts, total = list(self._commits), self._commit_sum
        cumulative, running = [], 0
        for bound, count in zip([*COMMIT_BUCKETS, math.inf], counts, strict=True):
            running += count
            cumulative.append((bound, running))
        return cumulative, total

    def _timed_commit(self, commit: Callable[[], None]) -> None:
        """One transaction of the writer, timed for :meth:`commit_seconds`."""
        started = time.monotonic()
        commit()
        took = time.monotonic() - started
        with self._idle:
            self._commits[bisect.bisect_left(COMMIT_BUCKETS, took)] += 1
            self._commit_sum += took

    def _enqueue(self, batch: _Batch) -> None:
        if self._closed:
            raise StoreClosed("the event store is closed")
        if not batch.events and not batch.forget:
            return
        with self._idle:
            if batch.events and self._queued + len(batch.events) > self.queue_limit:
                if not self._dropping:
                    log.error("event store: %d events are waiting to be written and %d more would pass the "
                              "limit of %d (--event-store-queue-limit); new events are dropped until the store "
                              "accepts writes again (see the warnings about it), then re-seeded from "
                              "status.history", self._queued, len(batch.events), self.queue_limit)
                self._dropping = True
                self.dropped += len(batch.events)
                return
            self._queued += len(batch.events)
            self._pending += 1
        self._queue.put(batch)

    def _take(self, held: list[_Batch], wait: float | None) -> bool:
        """Move what is queued into ``held`` (up to :data:`MAX_BATCH` events: one transaction), first
        waiting up to ``wait`` seconds for anything if ``wait`` is given; True once the store is closing."""
        stopping = False
        if wait is not None:
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
        while count < MAX_BATCH:
            try:
                more = self._queue.get_nowait()
            except queue.Empty:
                break
            if more is None:
                stopping = True
            else:
                held.append(more)
                count += len(more.events)
        return stopping

    def _committed(self, held: list[_Batch]) -> None:
        """``held`` is written: what :meth:`flush` waits for."""
        with self._idle:
            self._pending -= len(held)
            self._queued -= sum(len(b.events) for b in held)
            self._forgetting.difference_update(b.key.uid for b in held if b.forget)
            self._idle.notify_all()

    def _recovered(self, what: str) -> None:
        self.generation += 1
        self.recovery = Recovery(self.generation, dt.datetime.now(dt.UTC), what)
        log.error("%s; events stored before are lost except those in each Pipeline's status.history, from "
                  "which every pipeline re-seeds its events now", what)

    def _writable_again(self) -> None:
        """Writes succeed again after failures: if events were dropped meanwhile, every pipeline
        re-seeds from its ``status.history`` (the newest of the dropped events come back)."""
        if self._dropping:
            self._dropping = False
            self.generation += 1
            log.warning("event store %s accepts writes again; %d events were dropped in all while it did not: "
                        "every pipeline re-seeds its newest events from status.history", self.where, self.dropped)
        else:
            log.warning("event store %s accepts writes again; nothing was lost", self.where)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything queued so far is committed (tests and tools; the operator never waits)."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self, timeout: float = 60.0) -> None:
        """Commit what is queued, prune, and stop the writer (waiting at most ``timeout`` seconds)."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        if self._writer is not None:
            self._writer.join(timeout=timeout)
        log.info("event store closed: %d events appended, %d write failures, %d dropped", self.appended,
                 self.write_failures, self.dropped)
        self._close_readers()

    def _close_readers(self) -> None:
        """Close what the readers use (the backend's)."""

    # Reading (each backend has its own SQL); the last methods of the class, so that ``list`` names
    # the built-in type everywhere above.
    def list(self, uid: str, limit: int | None = None) -> list[MonitorEvent]:
        raise NotImplementedError

    def latest(self, uid: str) -> MonitorEvent | None:
        """The newest stored event of a pipeline (newest first: the first of a list of one)."""
        events = self.list(uid, limit=1)
        return events[0] if events else None


class _Moved(Exception):
    """The file at the store's path is no longer the one the writer opened."""


class EventStore(QueuedEventStore):
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


_NOTHING = object()
