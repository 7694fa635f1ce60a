"""The durable event store: order, retention, restarts, seeding, retries, deletion; each test against
both backends (an SQLite file, a database on a real PostgreSQL server) wherever the semantics are
the same. What only one backend has is in test_store_faults.py (the SQLite file) and
test_store_postgres.py (the server)."""

from __future__ import annotations

import datetime as dt
import math
import sqlite3
import time
from pathlib import Path

import psycopg
import pytest

from pipeline_operator.core.emission import UuidV7, make_event
from pipeline_operator.identity import PipelineKey
from pipeline_operator.models import EventStatus, ProgramStatus, ResourcesDesiredStatus, ResourcesStatus, StorageStatus
from pipeline_operator.store import open_event_store
from pipeline_operator.store import postgres as store_postgres
from pipeline_operator.store.base import COMMIT_BUCKETS, EventStorage
from pipeline_operator.store.sqlite import SCHEMA_VERSION

KEY = PipelineKey("ns", "orders", "uid-1")
OTHER = PipelineKey("ns", "orders", "uid-2")  # the same name, re-created
T0 = dt.datetime(2026, 11, 26, 8, tzinfo=dt.UTC)
STATUS = EventStatus(deployment_resources_status=ResourcesStatus.STOPPED,
                     deployment_resources_desired_status=ResourcesDesiredStatus.STOPPED,
                     program_status=ProgramStatus.SUCCESS, storage_status=StorageStatus.IN_USE,
                     storage_status_details={"checkpoints": []})


def events(n: int, start: float = 0, ids=None):
    ids = ids or UuidV7()
    return [make_event(STATUS, ids(T0 + dt.timedelta(seconds=start + i)), T0 + dt.timedelta(seconds=start + i))
            for i in range(n)]


BACKENDS = ["sqlite", "postgresql"]
# A failure a backend recovers from by retrying (what the writer sees when the volume or server hiccups).
PASSING_FAILURE = {"sqlite": sqlite3.OperationalError("disk I/O error"),
                   "postgresql": psycopg.OperationalError("server closed the connection unexpectedly")}


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def target(backend, tmp_path, request) -> Path | str:
    """Where a store of the backend lives, as ``--event-store`` names it: an SQLite file, or a fresh
    database on the test session's PostgreSQL server (its password in PGPASSWORD)."""
    if backend == "sqlite":
        return tmp_path / "events.sqlite"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def open_store(target):
    """``open_store(**settings)`` opens a store at ``target`` as the operator does (open_event_store);
    every store opened is closed after the test."""
    opened: list[EventStorage] = []

    def open_(**kwargs) -> EventStorage:
        opened.append(open_event_store(target, **kwargs))
        return opened[-1]
    yield open_
    for s in opened:
        s.close()


@pytest.fixture
def store(open_store):
    return open_store(retention=50, prune_interval=3600)


def schema_version(target: Path | str) -> int:
    if isinstance(target, Path):
        return sqlite3.connect(target).execute("PRAGMA user_version").fetchone()[0]
    with psycopg.connect(target) as conn:
        return conn.execute("SELECT max(version) FROM monitor_event_schema").fetchone()[0]


def set_schema_version(target: Path | str, version: int) -> None:
    """What a newer operator leaves behind."""
    if isinstance(target, Path):
        sqlite3.connect(target).execute(f"PRAGMA user_version={version}")
        return
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("INSERT INTO monitor_event_schema (version) VALUES (%s)", (version,))


def wait(what: str, probe, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_append_and_list_newest_first_with_details(store):
    batch = events(10)
    store.append(KEY, batch[:5])
    store.append(KEY, batch[5:])
    assert store.flush()
    listed = store.list(KEY.uid)
    assert listed == list(reversed(batch))
    assert listed[0].storage_status_details == {"checkpoints": []}
    assert store.latest(KEY.uid) == batch[-1]
    assert store.get(KEY.uid, batch[3].event_id) == batch[3]
    assert store.count(OTHER.uid) == 0


def test_the_writers_transactions_are_timed_for_the_metrics(store):
    buckets, total = store.commit_seconds()
    assert buckets[-1] == (math.inf, 0) and total == 0
    store.append(KEY, events(3))
    assert store.flush()
    buckets, total = store.commit_seconds()
    counts = [count for _, count in buckets]
    assert counts == sorted(counts) and counts[-1] >= 1 and total > 0  # cumulative, as Prometheus' buckets
    assert [bound for bound, _ in buckets] == [*COMMIT_BUCKETS, math.inf]


def test_same_time_events_are_ordered_by_event_id(store):
    ids = UuidV7()
    same = [make_event(STATUS, ids(T0), T0) for _ in range(5)]
    store.append(KEY, same)
    store.flush()
    assert store.list(KEY.uid) == list(reversed(same))


def test_retention_keeps_about_the_newest(store):
    batch = events(200)
    store.append(KEY, batch)
    store.append(OTHER, events(10))
    store.prune_now()
    kept = store.list(KEY.uid)
    assert len(kept) == 50 and kept == list(reversed(batch[-50:]))
    assert store.count(OTHER.uid) == 10


def test_the_writer_prunes_pipelines_that_received_events_every_interval(open_store):
    store = open_store(retention=50, prune_interval=0.2)
    batch = events(120)
    store.append(KEY, batch)
    store.append(OTHER, events(10))
    wait("the writer's pruning", lambda: store.count(KEY.uid) == 50)
    assert store.list(KEY.uid) == list(reversed(batch[-50:])) and store.count(OTHER.uid) == 10


def test_events_survive_a_restart(open_store, target):
    first = open_store()
    batch = events(7)
    first.append(KEY, batch)
    first.close()  # commits what is queued
    second = open_store()
    assert second.list(KEY.uid) == list(reversed(batch))
    second.close()
    if isinstance(target, Path):
        assert sqlite3.connect(target).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert schema_version(target) == SCHEMA_VERSION
    else:
        assert schema_version(target) == store_postgres.SCHEMA_VERSION


def test_a_newer_schema_is_refused(open_store, target):
    open_store().close()
    set_schema_version(target, schema_version(target) + 1)
    with pytest.raises(RuntimeError, match="schema version .*upgrade the operator or use another --event-store"):
        open_store()


def test_seeding_adds_only_missing_events(store):
    batch = events(5)
    store.append(KEY, batch[:3])
    store.flush()
    bare = [e.model_copy(update={"storage_status_details": None}) for e in batch]  # history has no details
    store.seed(KEY, bare)
    store.flush()
    listed = store.list(KEY.uid)
    assert [e.event_id for e in listed] == [e.event_id for e in reversed(batch)]
    assert listed[-1].storage_status_details == {"checkpoints": []}  # the stored one was kept


def test_a_failed_write_is_retried_and_nothing_is_lost(store, backend, monkeypatch):
    real = store._commit
    failures = {"left": 2}

    def flaky(conn, batches):
        if failures["left"]:
            failures["left"] -= 1
            raise PASSING_FAILURE[backend]
        return real(conn, batches)

    monkeypatch.setattr(store, "_commit", flaky)
    batch = events(3)
    store.append(KEY, batch)
    assert store.flush(timeout=10)
    assert store.write_failures == 2
    assert store.list(KEY.uid) == list(reversed(batch))


def test_delete_removes_one_pipeline_only(store):
    store.append(KEY, events(4))
    store.append(OTHER, events(2))
    store.flush()
    assert store.delete(KEY.uid) == 4
    assert store.count(KEY.uid) == 0 and store.count(OTHER.uid) == 2


def test_forget_removes_a_pipeline_after_the_events_queued_before_it(store):
    store.append(KEY, events(4))
    store.forget(KEY)
    store.append(OTHER, events(1))
    assert store.flush(10)
    assert store.count(KEY.uid) == 0 and store.count(OTHER.uid) == 1 and store.newest(KEY.uid) is None


def test_the_store_names_the_pipelines_it_holds_events_of(store):
    third = PipelineKey("other-ns", "audit", "uid-0")
    assert store.pipeline_uids() == [] and store.pipeline_key(KEY.uid) is None
    for key, n in ((KEY, 30), (OTHER, 1), (third, 2)):
        store.append(key, events(n))
    assert store.flush(10)
    assert store.pipeline_uids() == ["uid-0", "uid-1", "uid-2"]  # each once, however many events
    assert [store.pipeline_key(uid) for uid in store.pipeline_uids()] == [third, KEY, OTHER]
    store.forget(OTHER)
    assert store.flush(10)
    assert store.pipeline_uids() == ["uid-0", "uid-1"] and store.pipeline_key(OTHER.uid) is None


def test_append_after_close_is_an_error(open_store):
    s = open_store()
    s.close()
    with pytest.raises(Exception, match="closed"):
        s.append(KEY, events(1))


def test_backoff_doubles_up_to_its_maximum_and_gives_up_after_its_attempts():
    from pipeline_operator.retry import Backoff
    b = Backoff(initial=0.5, maximum=2.0)
    assert [b.failure() for _ in range(5)] == [0.5, 1.0, 2.0, 2.0, 2.0]
    b.success()
    assert b.failure() == 0.5
    limited = Backoff(initial=0.5, maximum=2.0, attempts=4)
    assert [limited.failure() for _ in range(4)] == [0.5, 1.0, 2.0, None]
