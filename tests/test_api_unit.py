"""Narrow tests of the API's handlers with a real event store and an in-memory view of one
pipeline (no API server): what the integration tests cannot reach."""

from __future__ import annotations

import asyncio
import types

import pytest
from aiohttp.test_utils import TestClient, TestServer

from pipeline_operator.api import ApiDeps, ApiServer, Metrics
from pipeline_operator.identity import PipelineKey
from pipeline_operator.store.sqlite import SqliteEventStore


@pytest.fixture
def store(tmp_path):
    s = SqliteEventStore(tmp_path / "events.sqlite")
    yield s
    s.close()


class Registry:
    """The monitored pipelines, as the API sees them."""

    def __init__(self, monitors: dict) -> None:
        self.monitors = monitors

    def get(self, namespace, name):
        return self.monitors.get((namespace, name))

    def in_namespace(self, namespace):
        return [m for (ns, _), m in self.monitors.items() if ns == namespace]

    def all(self):
        return list(self.monitors.values())


def deps(monitors: dict, events) -> ApiDeps:
    return ApiDeps(pipelines=Registry(monitors), events=events, kube=None, endpoint=lambda key: None,  # type: ignore[arg-type]
                   runtime=None, artifact=lambda digest: None, metrics=Metrics())  # type: ignore[arg-type]


def test_latest_without_events_is_404_no_events_available(store):
    key = PipelineKey("ns", "fresh", "uid-fresh")
    monitor = types.SimpleNamespace(key=key, obj={"metadata": {"name": "fresh", "uid": key.uid}, "status": {}},
                                    wake=asyncio.Event(), state=None)
    server = ApiServer(deps({("ns", "fresh"): monitor}, store), auth="none", default_namespace="ns")

    async def scenario():
        async with TestClient(TestServer(server.app())) as client:
            latest = await client.get("/v0/pipelines/fresh/events/latest")
            listed = await client.get("/v0/pipelines/fresh/events")
            return latest.status, await latest.json(), listed.status, await listed.json()
    status, body, list_status, events = asyncio.run(scenario())
    assert status == 404 and body["error_code"] == "NoPipelineMonitorEventsAvailable"
    assert list_status == 200 and events == []


def test_unexpected_failures_are_500_error_responses_without_a_trace(store):
    class Broken:
        def list_json(self, *args):
            raise RuntimeError("disk on fire")
    key = PipelineKey("ns", "p", "uid-p")
    monitor = types.SimpleNamespace(key=key, obj={"metadata": {"name": "p"}}, wake=asyncio.Event(), state=None)
    server = ApiServer(deps({("ns", "p"): monitor}, Broken()), auth="none", default_namespace="ns")

    async def scenario():
        async with TestClient(TestServer(server.app())) as client:
            response = await client.get("/v0/pipelines/p/events")
            return response.status, await response.text()
    status, text = asyncio.run(scenario())
    assert status == 500 and "InternalServerError" in text
    assert "disk on fire" not in text and "Traceback" not in text


def test_a_graceful_stop_is_refused_for_community_edition_pipelines_as_felderas_open_source_manager(store):
    """``--compiler feldera`` runs Feldera's community edition, which writes no checkpoint: ``/stop?force=false``
    (the default) is refused with Feldera's own answer, 501 EnterpriseFeature, and nothing is written (the API has
    no Kubernetes client here: a write would fail)."""
    from pipeline_operator.core.lifecycle import PipelineState
    key = PipelineKey("ns", "p", "uid-p")
    state = PipelineState(deployment_resources_status="Provisioned", deployment_resources_desired_status="Provisioned",
                          deployment_runtime_status="Running", deployment_runtime_desired_status="Running")
    async def settled() -> None:  # no status write in flight
        pass
    monitor = types.SimpleNamespace(key=key, obj={"metadata": {"name": "p", "uid": key.uid}, "spec": {}},
                                    wake=asyncio.Event(), state=state, settled=settled)
    community = deps({("ns", "p"): monitor}, store)
    community.community_edition = True
    server = ApiServer(community, auth="none", default_namespace="ns")

    async def scenario():
        async with TestClient(TestServer(server.app())) as client:
            answers = []
            for query in ("", "?force=false"):
                response = await client.post(f"/v0/pipelines/p/stop{query}")
                answers.append((response.status, await response.json()))
            return answers
    for status, body in asyncio.run(scenario()):
        assert status == 501 and body == {
            "message": "Cannot use enterprise-only feature (stop?force=false) in Feldera community edition.",
            "error_code": "EnterpriseFeature", "details": {"feature": "stop?force=false"}}


@pytest.mark.parametrize(("runtime", "details", "expected"), [
    ("Running", {"connector_stats": {"num_errors": 3}}, {"num_errors": 3}),
    ("Paused", {"connector_stats": {"num_errors": 0}, "reason": None}, {"num_errors": 0}),
    (None, {"connector_stats": {"num_errors": 3}}, None),          # not Provisioned: Feldera asks nothing
    ("Initializing", {"connector_stats": {"num_errors": 3}}, None),
    ("Running", {"connector_stats": {"num_errors": -1}}, None),    # what a pipeline reports is not trusted
    ("Running", {"connector_stats": {"num_errors": True}}, None),
    ("Running", {"connector_stats": "many"}, None),
    ("Running", "garbage", None),
])
def test_connectors_come_from_the_runtime_details_the_pipeline_reported(runtime, details, expected):
    from pipeline_operator.api.pipeline_shape import connector_stats
    from pipeline_operator.core.lifecycle import PipelineState
    state = PipelineState(deployment_runtime_status=runtime, deployment_runtime_status_details=details)
    assert connector_stats(state) == expected


@pytest.mark.parametrize(("name", "code"), [
    ("", "EmptyName"), ("a" * 101, "TooLongName"), ("é" * 51, "TooLongName"),  # bytes, as Feldera counts
    ("a b", "NameDoesNotMatchPattern"), ("orders\n", "NameDoesNotMatchPattern"),
    ("Orders", "NameDoesNotMatchPattern"), ("my_orders", "NameDoesNotMatchPattern"),
    ("-orders", "NameDoesNotMatchPattern"),
    ("orders", None), ("a" * 100, None), ("0rders-2", None),
])
def test_names_follow_felderas_rules_then_kubernetes(name, code):
    from pipeline_operator.api.errors import ApiError
    from pipeline_operator.api.pipeline_shape import check_name
    if code is None:
        check_name(name)
        return
    with pytest.raises(ApiError) as err:
        check_name(name)
    assert err.value.error_code == code


@pytest.mark.parametrize(("username", "namespace"), [
    ("system:serviceaccount:data-team:etl", "data-team"),
    ("system:serviceaccount:data-team", None),            # no name
    ("system:serviceaccount:data-team:etl:extra", None),  # not a service account's username
    ("system:serviceaccount::etl", None),
    ("system:serviceaccount:Data_Team:etl", None),        # not a namespace's name
    ("system:serviceaccounts:data-team", None),           # a group's name, not a user's
    ("alice", None),
    ("anonymous", None),
])
def test_a_service_accounts_namespace_is_read_from_its_username_only(username, namespace):
    from pipeline_operator.api.auth import service_account_namespace
    assert service_account_namespace(username) == namespace
