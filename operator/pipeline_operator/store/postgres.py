"""The PostgreSQL event store: Feldera's own choice for its events, and the one several replicas share.

Selected by ``--event-store postgresql://USER@HOST:PORT/DATABASE`` (or ``postgres://``). The URL never
holds the password (the settings refuse one): libpq reads it from the environment, ``PGPASSWORD`` or a
``PGPASSFILE`` (for example from a Kubernetes Secret), and every other ``PG*`` variable (``PGHOST``,
``PGUSER``, ``PGSSLMODE``, ...) applies as libpq documents.

The same semantics as the SQLite store (:mod:`.sqlite`), mapped onto a server:

- **Schema**: the table ``monitor_event`` (primary key ``(pipeline_uid, event_id)``, the newest-first
  index ``(pipeline_uid, recorded_at DESC, event_id DESC)``), created on first start; its version is
  in ``monitor_event_schema`` (one row per migration). Replicas starting at once migrate one after the
  other (an advisory lock); a schema newer than this operator knows is refused, as SQLite's is.
- **Writer**: one thread and one connection, draining the same bounded queue
  (:class:`.base.QueuedEventStore`): a batch is one transaction; events appended replace a stored
  event of the same id, events seeded from ``status.history`` are ``INSERT ... ON CONFLICT DO NOTHING``,
  so a restart or a second replica seeding the same history never duplicates an event. A lost
  connection or a restarting server is retried with backoff while events wait in the queue (the
  newest dropped beyond ``--event-store-queue-limit``, then re-seeded: the generation advances).
  Tables dropped under the running operator are created again and every pipeline re-seeds.
- **Retention**: every ``--events-prune-interval`` the writer deletes, in each pipeline that received
  events, all but the newest ``--events-retention`` (Feldera's ``ROW_NUMBER()`` query).
- **Order**: ``recorded_at`` then ``event_id`` (a UUIDv7), newest first.
- **Readers**: a small connection pool (``psycopg_pool``), each connection checked before use, so a
  reader after a server restart gets a fresh one; any replica reads, only the leader's writer writes.
  A read the server cannot answer within the read timeout raises :class:`.base.StoreUnavailable`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any, LiteralString, cast

import psycopg
import psycopg.errors
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool

from ..identity import PipelineKey
from ..models import MonitorEvent, project_event
from ..retry import Backoff
from ..settings import check_database_url
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
READ_TIMEOUT = 5.0  # seconds a reader waits for a connection before the store is "unavailable"
CONNECT_TIMEOUT = 5  # libpq's connect_timeout unless the URL or PGCONNECT_TIMEOUT sets one
# libpq's tcp_user_timeout (ms) unless the URL sets one: a connection to a server that vanished without a
# word (a failover that moved its address) fails after this instead of the kernel's ~15 minutes, so
# neither the writer nor a reader hangs on it.
TCP_USER_TIMEOUT = 10_000
READERS = 8  # connections of the readers' pool, at most
APPLICATION_NAME = "pipeline-operator"  # pg_stat_activity's application_name unless the URL or PGAPPNAME sets one
SCHEMA_LOCK = 0x7069_7065_6576_6E74  # the advisory lock held while migrating ("pipeevnt")
_SCHEMA: tuple[LiteralString, ...] = (
    """CREATE TABLE IF NOT EXISTS monitor_event (
        pipeline_uid TEXT NOT NULL,
        namespace    TEXT NOT NULL,
        name         TEXT NOT NULL,
        event_id     UUID NOT NULL,
        recorded_at  TIMESTAMPTZ NOT NULL,
        event        TEXT NOT NULL,   -- Feldera's JSON of the event with selector "all"
        event_status TEXT NOT NULL,   -- and with selector "status": served as stored, no parsing
        PRIMARY KEY (pipeline_uid, event_id)
    )""",
    "CREATE INDEX IF NOT EXISTS monitor_event_newest ON monitor_event (pipeline_uid, recorded_at DESC, event_id DESC)",
)
_COLUMNS = "pipeline_uid, namespace, name, event_id, recorded_at, event, event_status"
_INSERT: LiteralString = f"INSERT INTO monitor_event ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s) "
_APPEND: LiteralString = _INSERT + (
    "ON CONFLICT (pipeline_uid, event_id) DO UPDATE SET namespace = EXCLUDED.namespace, name = EXCLUDED.name, "
    "recorded_at = EXCLUDED.recorded_at, event = EXCLUDED.event, event_status = EXCLUDED.event_status")
_SEED: LiteralString = _INSERT + "ON CONFLICT (pipeline_uid, event_id) DO NOTHING"
_NEWEST_FIRST: LiteralString = "ORDER BY recorded_at DESC, event_id DESC"
# All but the newest ``retention`` of each pipeline (Feldera's pruning query), optionally of some pipelines.
_PRUNE: LiteralString = (
    "DELETE FROM monitor_event AS m USING ("
    " SELECT pipeline_uid, event_id FROM ("
    "  SELECT pipeline_uid, event_id, ROW_NUMBER() OVER (PARTITION BY pipeline_uid " + _NEWEST_FIRST + ") AS rn"
    "  FROM monitor_event {where}) AS ranked"
    " WHERE rn > %(retention)s) AS old "
    "WHERE m.pipeline_uid = old.pipeline_uid AND m.event_id = old.event_id")
# What a reader reports as "the store is unavailable" rather than a failure of the operator: the server
# does not answer (or not in time), the connection broke, the tables are not there (yet).
_UNAVAILABLE = (psycopg.OperationalError, psycopg.InterfaceError, psycopg.errors.UndefinedTable)


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer operator."""


def conninfo(url: str) -> str:
    """The URL as libpq connection parameters, with the operator's defaults where the URL and the
    environment set none (libpq still reads every ``PG*`` variable at connect time)."""
    given = conninfo_to_dict(url)
    extra: dict[str, Any] = {}
    if "connect_timeout" not in given and not os.environ.get("PGCONNECT_TIMEOUT"):
        extra["connect_timeout"] = CONNECT_TIMEOUT
    if "application_name" not in given and not os.environ.get("PGAPPNAME"):
        extra["application_name"] = APPLICATION_NAME
    if "tcp_user_timeout" not in given:
        extra["tcp_user_timeout"] = TCP_USER_TIMEOUT
    return make_conninfo(url, **extra)


class PostgresEventStore(QueuedEventStore):
    """The event store in a PostgreSQL database (see the module's description)."""

    def __init__(self, url: str, retention: int = 720, prune_interval: float = PRUNE_INTERVAL,
                 queue_limit: int = DEFAULT_QUEUE_LIMIT, *, read_timeout: float = READ_TIMEOUT) -> None:
        check_database_url(url)  # no password in it: the URL can be logged
        super().__init__(retention, prune_interval, queue_limit)
        self.url = url
        self.where = url  # then where the writer connected: postgresql://USER@HOST:PORT/DATABASE
        self.read_timeout = read_timeout
        self._conninfo = conninfo(url)
        self._has_schema = False  # the tables were there (or made) once: finding them gone later is a loss
        self._last_error = ""  # the writer's, for readers' errors
        # No idle connection is kept open for its own sake (min_size 0: a replica nobody reads from holds
        # none), and the pool gives up connecting after the read timeout (instead of retrying in the
        # background with a backoff of minutes): the next read tries afresh, soon after the server is back.
        self._pool: ConnectionPool[psycopg.Connection[tuple[Any, ...]]] = ConnectionPool(
            self._conninfo, min_size=0, max_size=READERS, kwargs={"autocommit": True}, open=False,
            timeout=read_timeout, reconnect_timeout=read_timeout, check=ConnectionPool.check_connection,
            name="event-store-readers")
        try:
            self._connect().close()
        except psycopg.Error as exc:
            # The server, not the store: keep running, the writer retries and events wait in the bounded queue.
            self.write_failures += 1
            self._last_error = _first_line(exc)
            log.error("event store %s cannot be reached (%s); the operator keeps running and retries, monitor "
                      "events wait in memory (up to --event-store-queue-limit); check the server, the URL and "
                      "the credentials (PGPASSWORD or PGPASSFILE)", self.where, self._last_error)
        self._pool.open(wait=False)
        self._writer = threading.Thread(target=self._write_loop, name="event-store-writer", daemon=True)
        self._writer.start()

    # -- connections and schema ----------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        """The writer's connection, with the schema brought up to date."""
        conn = psycopg.connect(self._conninfo, autocommit=True)
        try:
            info = conn.info
            self.where = f"postgresql://{info.user}@{info.host}:{info.port}/{info.dbname}"
            self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _migrate(self, conn: psycopg.Connection[tuple[Any, ...]]) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))  # one replica at a time
            version = 0
            if conn.execute("SELECT to_regclass('monitor_event_schema')").fetchone() != (None,):
                row = conn.execute("SELECT max(version) FROM monitor_event_schema").fetchone()
                version = (row[0] if row else None) or 0
            else:
                conn.execute("CREATE TABLE monitor_event_schema (version INTEGER NOT NULL, "
                             "migrated_at TIMESTAMPTZ NOT NULL DEFAULT now())")
            if version > SCHEMA_VERSION:
                raise SchemaTooNew(f"{self.where} has schema version {version}; this operator knows up to "
                                   f"{SCHEMA_VERSION}: upgrade the operator or use another --event-store")
            gone = conn.execute("SELECT to_regclass('monitor_event')").fetchone() == (None,)
            if version < 1 or gone:
                for statement in _SCHEMA:
                    conn.execute(statement)
                if version < 1:
                    conn.execute("INSERT INTO monitor_event_schema (version) VALUES (%s)", (SCHEMA_VERSION,))
                if self._has_schema:
                    self._recovered(f"the event store's tables in {self.where} were gone while the operator ran; "
                                    "they were created again")
        self._has_schema = True

    # -- writing -----------------------------------------------------------------------------

    def _write_loop(self) -> None:
        conn: psycopg.Connection[tuple[Any, ...]] | None = None
        last_prune = time.monotonic()
        backoff = Backoff(initial=0.1, maximum=5.0)
        held: list[_Batch] = []
        stopping = False
        failing = False
        while True:
            wait = None
            if not held and not stopping:
                wait = max(0.05, self.prune_interval - (time.monotonic() - last_prune))
            stopping = self._take(held, wait) or stopping
            try:
                if conn is None:
                    conn = self._connect()
                if held:
                    self._timed_commit(functools.partial(self._commit, conn, held))
            except (psycopg.Error, SchemaTooNew) as exc:
                _close_quietly(conn)
                conn = None
                # Tables dropped under the operator: connecting again creates them (and reports the loss).
                recreate = isinstance(exc, psycopg.errors.UndefinedTable) and self._has_schema and not stopping
                if not recreate:
                    self.write_failures += 1
                    self._last_error = _first_line(exc)
                    failing = True
                events = sum(len(b.events) for b in held)
                if stopping:
                    log.error("event store: writing %d events to %s failed at shutdown (%s); they are not stored "
                              "(the newest are in status.history and are re-seeded at the next start)", events,
                              self.where, self._last_error)
                    return
                delay = backoff.failure() or 5.0
                if not recreate:
                    log.warning("event store %s: writing %d events failed (%s); keeping them and retrying in %.1fs "
                                "(is the server up and reachable?)", self.where, events, self._last_error, delay)
                time.sleep(delay)
                continue
            backoff.success()
            if held:
                self._committed(held)
                held = []
            if failing:
                failing = False
                self._last_error = ""
                self._writable_again()
            if stopping or time.monotonic() - last_prune >= self.prune_interval:
                last_prune = time.monotonic()
                if not self._prune(conn):
                    _close_quietly(conn)
                    conn = None
            if stopping:
                _close_quietly(conn)
                return

    def _commit(self, conn: psycopg.Connection[tuple[Any, ...]], batches: list[_Batch]) -> None:
        with conn.transaction(), conn.cursor() as cur:
            for batch in batches:
                if batch.forget:
                    cur.execute("DELETE FROM monitor_event WHERE pipeline_uid = %s", (batch.key.uid,))
                    self._dirty.discard(batch.key.uid)
                    continue
                cur.executemany(_SEED if batch.ignore_existing else _APPEND,
                                [(batch.key.uid, batch.key.namespace, batch.key.name, e.event_id, e.recorded_at,
                                  _json(project_event(e, "all")), _json(project_event(e, "status")))
                                 for e in batch.events])
                self._dirty.add(batch.key.uid)
        self.appended += sum(len(b.events) for b in batches)

    def _prune(self, conn: psycopg.Connection[tuple[Any, ...]]) -> bool:
        """Prune the pipelines that received events since the last pruning; False if that failed (they
        are pruned next time, and the writer connects afresh)."""
        dirty, self._dirty = self._dirty, set()
        if not dirty:
            return True
        try:
            conn.execute(sql.SQL(_PRUNE).format(where=sql.SQL("WHERE pipeline_uid = ANY(%(uids)s)")),
                         {"uids": sorted(dirty), "retention": self.retention})
        except psycopg.Error as exc:
            self._dirty |= dirty
            log.warning("event store %s: pruning failed (%s); will try again", self.where, _first_line(exc))
            return False
        return True

    def prune_now(self) -> None:
        """Prune every pipeline at once (tests and benchmarks); normally the writer does it every 30 s."""
        self.flush()
        self._change(sql.SQL(_PRUNE).format(where=sql.SQL("")), {"retention": self.retention})

    # -- reading (blocking: call through asyncio.to_thread) -----------------------------------

    @contextlib.contextmanager
    def _pooled(self) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
        """A reader's connection (checked, autocommit); what the server cannot answer now is StoreUnavailable."""
        try:
            with self._pool.connection() as conn:
                yield conn
        except _UNAVAILABLE as exc:
            why = _first_line(exc)
            if self._last_error and self._last_error not in why:
                why += f"; the writer's last error: {self._last_error}"
            raise StoreUnavailable(f"the event store {self.where} cannot be read now ({why})") from exc

    def _read(self, query: LiteralString, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with self._pooled() as conn:
            return conn.execute(query, args).fetchall()

    def _change(self, query: LiteralString | sql.Composed, args: Any) -> int:
        """Rows changed by one statement, outside the writer (tests and tools)."""
        with self._pooled() as conn:
            return conn.execute(query, args).rowcount

    def pipeline_uids(self) -> list[str]:
        """The uid of every pipeline with events in the store (for the sweep of deleted pipelines' events)."""
        return [row[0] for row in self._read(STORED_UIDS, ())]

    def pipeline_key(self, uid: str) -> PipelineKey | None:
        """The namespace and name stored with a pipeline's events; None if it has none."""
        rows = self._read("SELECT namespace, name FROM monitor_event WHERE pipeline_uid = %s LIMIT 1", (uid,))
        return PipelineKey(rows[0][0], rows[0][1], uid) if rows else None

    def list(self, uid: str, limit: int | None = None) -> list[MonitorEvent]:
        """Newest first (``recorded_at`` then ``event_id``)."""
        rows = self._read("SELECT event FROM monitor_event WHERE pipeline_uid = %s " + _NEWEST_FIRST + " LIMIT %s",
                          (uid, limit))  # LIMIT NULL: all
        return [MonitorEvent.model_validate_json(row[0]) for row in rows]

    def list_json(self, uid: str, selector: str = "status") -> str:
        """A pipeline's events, newest first, as Feldera's JSON array for ``selector``, built from the
        stored JSON without parsing it (what the HTTP API serves)."""
        rows = self._read(_select(selector) + " WHERE pipeline_uid = %s " + _NEWEST_FIRST, (uid,))
        return "[" + ",".join(row[0] for row in rows) + "]"

    def get_json(self, uid: str, event_id: uuid.UUID | None, selector: str = "status") -> str | None:
        """One event (or the newest, with ``event_id`` None) as Feldera's JSON for ``selector``."""
        if event_id is None:
            rows = self._read(_select(selector) + " WHERE pipeline_uid = %s " + _NEWEST_FIRST + " LIMIT 1", (uid,))
        else:
            rows = self._read(_select(selector) + " WHERE pipeline_uid = %s AND event_id = %s", (uid, event_id))
        return cast(str, rows[0][0]) if rows else None

    def get(self, uid: str, event_id: uuid.UUID) -> MonitorEvent | None:
        rows = self._read("SELECT event FROM monitor_event WHERE pipeline_uid = %s AND event_id = %s", (uid, event_id))
        return MonitorEvent.model_validate_json(rows[0][0]) if rows else None

    def count(self, uid: str | None = None) -> int:
        if uid is None:
            return cast(int, self._read("SELECT count(*) FROM monitor_event", ())[0][0])
        return cast(int, self._read("SELECT count(*) FROM monitor_event WHERE pipeline_uid = %s", (uid,))[0][0])

    def delete(self, uid: str) -> int:
        """Remove a pipeline's events now (tests and tools; the operator queues :meth:`forget`)."""
        self.flush()
        return self._change("DELETE FROM monitor_event WHERE pipeline_uid = %s", (uid,))

    def _close_readers(self) -> None:
        self._pool.close(timeout=5.0)


def _select(selector: str) -> LiteralString:
    return "SELECT event FROM monitor_event" if selector == "all" else "SELECT event_status FROM monitor_event"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _close_quietly(conn: psycopg.Connection[tuple[Any, ...]] | None) -> None:
    if conn is not None:
        try:
            conn.close()
        except psycopg.Error:
            pass

