"""The PostgreSQL event store against a real server (started by the test session, tests/postgres.py):
a server restart under a writing store, replicas sharing one database, credentials only from the
environment, the same JSON as the SQLite store, tables dropped under it. The semantics both backends
share (order, retention, seeding, retries) are tested against both in test_store.py."""

from __future__ import annotations

import asyncio
import types
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pydantic
import pytest
from aiohttp.test_utils import TestClient, TestServer
from click.testing import CliRunner
from psycopg.conninfo import conninfo_to_dict

from pipeline_operator import cli
from pipeline_operator.api import ApiServer
from pipeline_operator.core.emission import UuidV7, make_event
from pipeline_operator.settings import OperatorSettings
from pipeline_operator.store import open_event_store
from pipeline_operator.store.base import StoreUnavailable
from pipeline_operator.store.postgres import PostgresEventStore, conninfo
from pipeline_operator.store.sqlite import SqliteEventStore

from . import postgres
from .test_api_unit import deps
from .test_store import KEY, OTHER, STATUS, T0, events, wait


@pytest.fixture
def stores(postgres_url):
    """``stores(**settings)`` opens a PostgresEventStore on the test's database; all are closed afterwards."""
    opened: list[PostgresEventStore] = []

    def open_(url: str = postgres_url, **kwargs) -> PostgresEventStore:
        opened.append(PostgresEventStore(url, **kwargs))
        return opened[-1]
    yield open_
    for s in opened:
        s.close(timeout=20)


@pytest.fixture
def server_back(postgres_server):
    """The session's server is running again after the test, whatever the test did to it."""
    yield postgres_server
    if not postgres_server.running():
        postgres_server.start()


def api_reads(store) -> tuple[int, dict, str | None, int]:
    """What the HTTP API answers for KEY's events (and /metrics' status) from this store."""
    monitor = types.SimpleNamespace(key=KEY, obj={"metadata": {"name": KEY.name}}, wake=asyncio.Event(), state=None)
    server = ApiServer(deps({(KEY.namespace, KEY.name): monitor}, store), auth="none", metrics_auth="none",
                       default_namespace=KEY.namespace)

    async def scenario():
        async with TestClient(TestServer(server.app())) as client:
            listed = await client.get(f"/v0/pipelines/{KEY.name}/events")
            metrics = await client.get("/metrics")
            return listed.status, await listed.json(), listed.headers.get("Retry-After"), metrics.status
    return asyncio.run(scenario())


def test_a_server_restart_under_a_writing_store_loses_nothing_within_the_queue_bound(stores, server_back):
    store = stores(prune_interval=3600, queue_limit=1000, read_timeout=0.5)
    before = events(5)
    store.append(KEY, before)
    assert store.flush(10)
    server_back.stop()
    during = events(200, start=10)
    for i in range(0, len(during), 20):  # monitoring passes go on: appending never waits
        store.append(KEY, during[i:i + 20])
    wait("write failures", lambda: store.write_failures > 0)
    with pytest.raises(StoreUnavailable, match="cannot be read now") as caught:
        store.count(KEY.uid)
    assert store.where in str(caught.value)  # which store, and why
    status, body, retry_after, metrics_status = api_reads(store)
    assert status == 503 and body["error_code"] == "EventStoreUnavailable" and retry_after == "5"
    assert metrics_status == 200  # the store's own metrics are served while it cannot be read
    assert store.stats()["queued"] == 200 and store.dropped == 0
    assert store.newest(KEY.uid) == during[-1]  # a monitoring pass never waits for the writer

    server_back.start()
    wait("the queued events to be written", lambda: store.stats()["queued"] == 0)
    assert store.list(KEY.uid) == list(reversed(before + during))  # readers have fresh connections
    assert store.generation == 0 and store.recovery is None  # nothing was lost: no pipeline re-seeds
    assert api_reads(store)[0] == 200


def test_a_full_queue_while_the_server_is_down_drops_the_newest_and_has_pipelines_re_seed(stores, server_back):
    store = stores(prune_interval=3600, queue_limit=100)
    server_back.stop()
    kept, dropped = events(60), events(60, start=100)
    store.append(KEY, kept)
    wait("write failures", lambda: store.write_failures > 0)
    store.append(KEY, dropped)  # 120 > 100: the newest are dropped, they are in status.history
    assert store.stats()["dropped"] == 60 and store.stats()["queued"] == 60
    server_back.start()
    wait("the queued events to be written", lambda: store.stats()["queued"] == 0)
    assert store.generation == 1  # pipelines re-seed their newest events from status.history
    store.seed(KEY, dropped[-20:])
    assert store.flush(10) and store.count(KEY.uid) == 80


def test_two_replicas_share_one_database_and_seeding_from_both_never_duplicates(stores, postgres_url):
    with ThreadPoolExecutor(3) as pool:  # replicas starting at once migrate one after the other
        leader, follower, third = pool.map(lambda _: stores(prune_interval=3600), range(3))
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT count(*) FROM monitor_event_schema").fetchone() == (1,)
    history = events(10)
    leader.append(KEY, history[:6])
    assert leader.flush(10)
    for selector in ("all", "status"):
        assert follower.list_json(KEY.uid, selector) == leader.list_json(KEY.uid, selector) != "[]"
    assert follower.newest(KEY.uid) is None and follower.latest(KEY.uid) == history[5]
    # After a leader change both seed the whole history (each Pipeline's status.history), at once.
    for store in (leader, follower, third, leader):
        store.seed(KEY, history)
    assert all(s.flush(10) for s in (leader, follower, third))
    assert [e.event_id for e in third.list(KEY.uid)] == [e.event_id for e in reversed(history)]
    assert follower.count() == 10


@pytest.mark.parametrize("url", ["postgresql://operator:s3cret@db.example/events",
                                 "postgres://operator:s3cret@db.example:5432/events",
                                 "postgresql://operator@db.example/events?sslmode=require&password=s3cret"])
def test_a_url_with_a_password_is_refused_at_start(url):
    with pytest.raises(pydantic.ValidationError) as caught:
        OperatorSettings(event_store=url)
    message = caught.value.errors()[0]["msg"]
    assert "--event-store" in message and "PGPASSWORD" in message and "PGPASSFILE" in message
    assert "s3cret" not in message
    res = CliRunner().invoke(cli.main, ["run", "--namespace", "x", "--event-store", url])
    assert res.exit_code == 2 and "must not contain a password" in res.output and "s3cret" not in res.output
    with pytest.raises(ValueError, match="PGPASSWORD"):
        PostgresEventStore(url)


def test_the_setting_takes_a_path_as_before_or_a_url_unchanged(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert OperatorSettings(event_store="x/../e.sqlite").event_store == tmp_path / "e.sqlite"  # as before
    url = "postgresql://operator@db.example:5432/events?sslmode=verify-full"
    assert OperatorSettings(event_store=url).event_store == url  # a URL is not a path
    monkeypatch.setenv("PIPELINE_OPERATOR_EVENT_STORE", "postgres://operator@db.example/events")
    assert OperatorSettings().event_store == "postgres://operator@db.example/events"


def test_the_factory_opens_the_backend_the_setting_names(tmp_path, postgres_url):
    sqlite, pg = open_event_store(tmp_path / "e.sqlite"), open_event_store(postgres_url)
    try:
        assert isinstance(sqlite, SqliteEventStore) and isinstance(pg, PostgresEventStore)
    finally:
        sqlite.close()
        pg.close()


def test_libpq_reads_the_connection_and_the_password_from_the_environment(stores, postgres_server, postgres_url,
                                                                          monkeypatch):
    dbname = postgres_url.rsplit("/", 1)[1]
    monkeypatch.setenv("PGHOST", postgres_server.host)
    monkeypatch.setenv("PGPORT", str(postgres_server.port))
    monkeypatch.setenv("PGUSER", postgres.ROLE)
    store = stores(f"postgresql:///{dbname}")  # everything but the database from the environment
    store.append(KEY, events(3))
    assert store.flush(10) and store.count(KEY.uid) == 3
    assert store.where == postgres_url  # the log says where the events went
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
                            (dbname, "pipeline-operator")).fetchone()[0] >= 1


def test_the_operator_s_defaults_apply_only_where_the_url_and_the_environment_set_none(monkeypatch):
    monkeypatch.delenv("PGCONNECT_TIMEOUT", raising=False)
    monkeypatch.delenv("PGAPPNAME", raising=False)
    defaults = conninfo_to_dict(conninfo("postgresql://operator@db.example/events"))
    assert (defaults["connect_timeout"], defaults["application_name"], defaults["tcp_user_timeout"]) == \
        ("5", "pipeline-operator", "10000")
    given = conninfo_to_dict(conninfo("postgresql://operator@db.example/events?connect_timeout=30"
                                      "&application_name=mine&tcp_user_timeout=0&sslmode=verify-full"))
    assert (given["connect_timeout"], given["application_name"], given["tcp_user_timeout"], given["sslmode"]) == \
        ("30", "mine", "0", "verify-full")
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "7")
    assert "connect_timeout" not in conninfo_to_dict(conninfo("postgresql://operator@db.example/events"))


def test_a_wrong_password_keeps_the_operator_running_with_clear_errors(stores, postgres_url, monkeypatch, caplog):
    monkeypatch.setenv("PGPASSWORD", "not-the-password")
    store = stores(read_timeout=0.5)  # starts: the server, or its credentials, may be fixed while it runs
    assert store.write_failures == 1
    assert any("password authentication failed" in r.getMessage() and "PGPASSWORD" in r.getMessage()
               for r in caplog.records)
    store.append(KEY, events(2))
    with pytest.raises(StoreUnavailable, match="password authentication failed"):
        store.count(KEY.uid)


def test_both_backends_store_and_serve_the_same_json(tmp_path, stores):
    ids = UuidV7()
    same_time = [make_event(STATUS, ids(T0), T0) for _ in range(3)]
    batch = [*events(5), *same_time, *events(4, start=1000)]
    detailed = type(batch[0]).model_validate({
        **batch[0].model_dump(), "deployment_runtime_status_details": {"a": [1, "ü", None]},
        "deployment_error": {"message": "x", "error_code": "E", "details": {}}})
    batch[0] = detailed
    sqlite, pg = SqliteEventStore(tmp_path / "e.sqlite"), stores()
    try:
        for store in (sqlite, pg):
            store.append(KEY, batch[:6])
            store.append(KEY, batch[6:])
            store.seed(KEY, batch)
            assert store.flush(10)
        for selector in ("all", "status"):
            assert pg.list_json(KEY.uid, selector) == sqlite.list_json(KEY.uid, selector)
            assert pg.get_json(KEY.uid, None, selector) == sqlite.get_json(KEY.uid, None, selector)
            assert pg.get_json(KEY.uid, detailed.event_id, selector) == sqlite.get_json(KEY.uid, detailed.event_id,
                                                                                      selector)
        assert pg.get(KEY.uid, detailed.event_id) == detailed
        assert pg.list(KEY.uid) == sqlite.list(KEY.uid)
    finally:
        sqlite.close()


def test_tables_dropped_under_the_running_store_are_created_again_and_pipelines_re_seed(stores, postgres_url):
    store = stores(prune_interval=3600)
    store.append(KEY, events(5))
    assert store.flush(10)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("DROP TABLE monitor_event, monitor_event_schema")
    store.append(OTHER, events(2))
    wait("the store to notice", lambda: store.generation == 1)
    assert store.recovery is not None and "were gone" in store.recovery.what
    assert store.flush(10) and store.count(OTHER.uid) == 2 and store.count(KEY.uid) == 0
