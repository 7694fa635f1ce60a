"""The sweep of the event store for events of Pipelines that no longer exist (a real SQLite store; the
API server's answers stood in for by a dict)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3

import pytest

from pipeline_operator.identity import PipelineKey
from pipeline_operator.store.sqlite import SqliteEventStore
from pipeline_operator.store.sweep import keep_sweeping, sweep

from .test_store import events

RUNNING = PipelineKey("ns", "running", "uid-a")  # a loop holds it
LISTED = PipelineKey("ns", "listed", "uid-b")  # the watch shows it, no loop (e.g. being deleted)
EXISTS = PipelineKey("ns", "exists", "uid-c")  # neither, but the API server has it
GONE = PipelineKey("ns", "gone", "uid-d")  # 404
RECREATED = PipelineKey("ns", "again", "uid-e")  # the name holds another uid now
ELSEWHERE = PipelineKey("not-mine", "gone", "uid-f")  # a namespace this operator does not act on


class ApiServer:
    """``get_pipeline`` as the API server answers it, counting the lookups."""

    def __init__(self, pipelines: dict[tuple[str, str], str], fail: set[str] = frozenset()) -> None:
        self.pipelines = pipelines  # (namespace, name) -> uid
        self.fail = fail
        self.looked_up: list[str] = []
        self.failed_twice = asyncio.Event()  # (set on the event loop of the call)
        self.answered: dict[str, asyncio.Event] = {}

    async def get_pipeline(self, namespace: str, name: str) -> dict | None:
        self.looked_up.append(name)
        if name in self.fail:
            if self.looked_up.count(name) >= 2:
                self.failed_twice.set()
            raise ConnectionError("the API server does not answer")
        self.answered.setdefault(name, asyncio.Event()).set()
        uid = self.pipelines.get((namespace, name))
        return None if uid is None else {"metadata": {"namespace": namespace, "name": name, "uid": uid}}


@pytest.fixture
def store(tmp_path):
    s = SqliteEventStore(tmp_path / "events.sqlite", prune_interval=3600)
    for key in (RUNNING, LISTED, EXISTS, GONE, RECREATED, ELSEWHERE):
        s.append(key, events(3))
    assert s.flush(10)
    yield s
    s.close()


def run_sweep(store, api, **kwargs):
    return asyncio.run(sweep(store, api.get_pipeline, known=lambda: {RUNNING.uid, LISTED.uid},
                             in_scope=lambda namespace: namespace == "ns", **kwargs))


def test_only_the_events_of_pipelines_the_api_server_no_longer_has_go(store):
    api = ApiServer({("ns", "running"): RUNNING.uid, ("ns", "listed"): LISTED.uid, ("ns", "exists"): EXISTS.uid,
                     ("ns", "again"): "uid-new"})
    assert sorted(run_sweep(store, api), key=str) == sorted([GONE, RECREATED], key=str)
    assert store.flush(10)
    assert store.pipeline_uids() == [RUNNING.uid, LISTED.uid, EXISTS.uid, ELSEWHERE.uid]
    # Known uids are not looked up; neither is a namespace out of scope.
    assert sorted(api.looked_up) == ["again", "exists", "gone"]


def test_a_failed_lookup_ends_the_sweep_and_removes_nothing_it_could_not_confirm(store):
    api = ApiServer({}, fail={"exists"})
    with pytest.raises(ConnectionError):
        run_sweep(store, api)
    assert store.flush(10)
    assert EXISTS.uid in store.pipeline_uids()
    assert set(store.pipeline_uids()) >= {RUNNING.uid, LISTED.uid, ELSEWHERE.uid}


def test_a_sweep_looks_up_a_bounded_number_of_pipelines(store):
    api = ApiServer({})
    assert len(run_sweep(store, api, lookups=2)) == 2 and len(api.looked_up) == 2
    assert store.flush(10)
    assert len(run_sweep(store, api)) == 1  # the next sweep goes on with the rest
    assert store.flush(10)
    assert store.pipeline_uids() == [RUNNING.uid, LISTED.uid, ELSEWHERE.uid]


def test_a_removal_that_waits_for_the_store_is_not_queued_again(store, monkeypatch):
    real = store._commit

    def read_only(conn, batches):
        raise sqlite3.OperationalError("attempt to write a readonly database")
    monkeypatch.setattr(store, "_commit", read_only)
    api = ApiServer({("ns", "exists"): EXISTS.uid, ("ns", "again"): RECREATED.uid})
    assert run_sweep(store, api) == [GONE]
    assert store.forgetting() == {GONE.uid}
    assert run_sweep(store, api) == [] and api.looked_up.count("gone") == 1  # still stored, but on its way
    monkeypatch.setattr(store, "_commit", real)
    assert store.flush(10)
    assert store.forgetting() == set() and GONE.uid not in store.pipeline_uids()


def test_the_loop_sweeps_at_once_and_again_after_a_failure(store, caplog):
    caplog.set_level(logging.INFO, "pipeline_operator.store.sweep")
    api = ApiServer({}, fail={"exists"})

    async def main() -> None:
        task = asyncio.create_task(keep_sweeping(store, api.get_pipeline, known=lambda: {RUNNING.uid, LISTED.uid},
                                                 in_scope=lambda namespace: namespace == "ns", interval=0.05))
        await api.failed_twice.wait()  # the first sweep failed, and the loop went on to a second one
        api.fail = set()
        await api.answered.setdefault("again", asyncio.Event()).wait()  # the last one looked up
        task.cancel()
    asyncio.run(asyncio.wait_for(main(), 30))
    assert store.flush(10)
    assert store.pipeline_uids() == [RUNNING.uid, LISTED.uid, ELSEWHERE.uid]
    messages = [r.getMessage() for r in caplog.records]
    assert any("did not finish (ConnectionError" in m for m in messages)
    assert "ns/exists: removing its events from the event store: the Pipeline no longer exists (uid uid-c)" in messages
