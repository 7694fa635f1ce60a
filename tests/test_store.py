"""The durable event store: order, retention, restarts, seeding, retries, deletion."""

from __future__ import annotations

import datetime as dt
import sqlite3

import pytest

from pipeline_operator.core.emission import UuidV7, make_event
from pipeline_operator.identity import PipelineKey
from pipeline_operator.models import EventStatus, ProgramStatus, ResourcesDesiredStatus, ResourcesStatus, StorageStatus
from pipeline_operator.store import SCHEMA_VERSION, EventStore

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


@pytest.fixture
def store(tmp_path):
    s = EventStore(tmp_path / "events.sqlite", retention=50, prune_interval=3600)
    yield s
    s.close()


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


def test_events_survive_a_restart(tmp_path):
    path = tmp_path / "e.sqlite"
    first = EventStore(path)
    batch = events(7)
    first.append(KEY, batch)
    first.close()  # commits what is queued
    second = EventStore(path)
    assert second.list(KEY.uid) == list(reversed(batch))
    second.close()
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "e.sqlite"
    EventStore(path).close()
    sqlite3.connect(path).execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(RuntimeError, match="schema version"):
        EventStore(path)


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


def test_a_failed_write_is_retried_and_nothing_is_lost(store, monkeypatch):
    real = store._commit
    failures = {"left": 2}

    def flaky(conn, batches):
        if failures["left"]:
            failures["left"] -= 1
            raise sqlite3.OperationalError("disk I/O error")
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


def test_append_after_close_is_an_error(tmp_path):
    s = EventStore(tmp_path / "e.sqlite")
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
