"""The operator's /metrics: lifecycle metrics from a real operator driving real pipeline processes, bounded
labels, and every metric the dashboard and the alerts query is one the operator exports."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from pipeline_operator.api import ApiDeps, ApiServer
from pipeline_operator.core.lifecycle import PipelineState
from pipeline_operator.metrics import Metrics, PipelineSample
from pipeline_operator.models import ErrorResponse, ResourcesStatus, RuntimeStatus

from .operator_harness import wait_for
from .test_api import http_json
from .test_api_fairness import Reviews
from .test_api_hardening import ready
from .test_api_unit import Registry
from .test_operator_lifecycle import spec

MONITORING = Path(__file__).resolve().parent.parent / "deploy" / "monitoring"
# What a metric family of each type exposes (the text format; the _created series are not queried).
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",),
            "summary": ("", "_sum", "_count"), "info": ("_info",), "unknown": ("",)}
METRIC = re.compile(r"\bpipeline_operator_[a-z0-9_]+\b")


def scrape(url: str, token: str | None = None) -> str:
    """The operator's /metrics, as a scraper with ``token`` (none: an operator run with --metrics-auth none)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(f"{url}/metrics", headers=headers), timeout=10) as r:
        return r.read().decode()


def exported_names(text: str) -> set[str]:
    """Every series name the exposition declares, with or without samples yet (a labelled metric
    nobody incremented still has its HELP and TYPE)."""
    return {f.name + suffix for f in text_string_to_metric_families(text) for suffix in SUFFIXES[f.type]}


def samples(text: str) -> list[Sample]:
    return [s for f in text_string_to_metric_families(text) for s in f.samples]


def value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(s.value for s in samples(text) if s.name == name and labels.items() <= s.labels.items())


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the dashboard: panel targets (rows included) and template variables."""
    board = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    panels = [p for top in board["panels"] for p in (top, *top.get("panels", []))]
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def alert_queries() -> list[str]:
    rule = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    return [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]


@pytest.mark.apiserver
def test_a_lifecycle_shows_in_metrics_and_the_dashboard_and_alerts_query_only_exported_metrics(
        operators, pipelines, namespace):
    op = operators(namespace, "--api-auth", "none", "--api-default-namespace", namespace, "--metrics-auth", "none")
    pipelines.create("orders", spec())
    pipelines.create("broken", spec(program={"sql": "CREATE TABLE t (x INT);\nCREATE VIEW v AS SELEC FROM t;"}))
    pipelines.wait_status("orders", op, deploymentStatus="Running")
    pipelines.patch_spec("orders", {"runtimeDesiredStatus": "Paused"})
    pipelines.wait_status("orders", op, deploymentStatus="Paused")
    pipelines.patch_spec("orders", {"desiredStatus": "Stopped"})
    pipelines.wait_status("orders", op, deploymentStatus="Stopped")
    pipelines.wait_status("broken", op, programStatus="SqlError")
    with urllib.request.urlopen(f"{op.api_url}/v0/pipelines/orders/events", timeout=10) as r:
        assert r.status == 200
    text = scrape(op.api_url)  # the request was counted before its answer was sent

    # Transitions, time in status and phase durations, as the pipeline went through them.
    transitions = {(s.labels["from_status"], s.labels["to_status"])
                   for s in samples(text) if s.name == "pipeline_operator_transitions_total"}
    assert {("Stopped", "Provisioning"), ("Provisioning", "Initializing"), ("Running", "Paused"),
            ("Paused", "Suspended"), ("Suspended", "Stopping"), ("Stopping", "Stopped")} <= transitions, transitions
    assert value(text, "pipeline_operator_provisioning_seconds_count", outcome="Provisioned") == 1
    assert value(text, "pipeline_operator_stopping_seconds_count") == 1
    assert value(text, "pipeline_operator_status_seconds_count", kind="resources", status="Provisioning") == 1
    assert value(text, "pipeline_operator_status_seconds_count", kind="runtime", status="Running") >= 1
    assert value(text, "pipeline_operator_status_seconds_sum", kind="runtime", status="Running") > 0
    # The broken program's latched error, its Stalled condition, and both pipelines Stopped.
    assert value(text, "pipeline_operator_errors_latched_total", error_code="StartFailedDueToFailedCompilation") == 1
    assert value(text, "pipeline_operator_pipelines_stalled", namespace=namespace) == 1
    assert value(text, "pipeline_operator_pipelines_by_status", namespace=namespace, status="Stopped") == 2
    assert value(text, "pipeline_operator_monitor_events_total", kind="status") > 0
    assert value(text, "pipeline_operator_event_recording_seconds_count") > 0
    assert value(text, "pipeline_operator_event_store_appended_total") > 0
    # The lifecycle's Kubernetes Events: posted, none left waiting once the poster has caught up.
    queued = "pipeline_operator_kubernetes_events_queued"
    caught_up = wait_for("the Kubernetes Events to be posted",
                         lambda: value(t := scrape(op.api_url), queued) == 0 and t, 30, operator=op)
    assert value(caught_up, "pipeline_operator_kubernetes_events_posted_total") > 0
    assert value(text, "pipeline_operator_event_store_commit_seconds_count") > 0
    assert value(text, "pipeline_operator_api_requests_total", route="/v0/pipelines/{name}/events", code="200") == 1
    # Bounded labels: a pipeline's name is never a label value (the route template stands for it).
    assert not [s for s in samples(text) if {"orders", "broken"} & {v for v in s.labels.values()}]
    assert not [s for s in samples(text) if any("/orders/" in v for v in s.labels.values())]

    exported = exported_names(text)
    for where, queries in (("dashboard", dashboard_queries()), ("alerts", alert_queries())):
        for expr in queries:
            used = set(METRIC.findall(expr))
            assert used, f"{where}: {expr!r} queries no metric of the operator"
            assert used <= exported, f"{where}: {expr!r} uses {sorted(used - exported)}, not exported"


@pytest.mark.apiserver
def test_metrics_are_served_only_to_a_bearer_that_rbac_allows_to_get_them(operators, namespace, cluster):
    """As controller-runtime's secure metrics serving: a token the API server knows (TokenReview), then RBAC
    on the non-resource URL /metrics (SubjectAccessReview), granted by deploy/monitoring's ClusterRole."""
    op = operators(namespace)
    ready(op)
    url = f"{op.api_url}/metrics"
    status, body = http_json(url)
    assert (status, body["error_code"]) == (401, "Unauthorized") and "bearerTokenFile" in body["message"]
    status, body = http_json(url, headers={"Authorization": f"Bearer {cluster.plane.users['bob'].token}"})
    assert (status, body["error_code"]) == (403, "Forbidden") and "pipeline-operator-metrics-reader" in body["message"]
    # Prometheus's way: its service account's own token (the API server's audience), the ClusterRole bound to it.
    binding = f"metrics-reader-{namespace}"[:63]
    cluster.kubectl("apply", "-f", str(MONITORING / "metrics-reader.yaml"))
    cluster.kubectl("create", "serviceaccount", "scraper", "-n", namespace)
    cluster.kubectl("create", "clusterrolebinding", binding, "--clusterrole=pipeline-operator-metrics-reader",
                    f"--serviceaccount={namespace}:scraper")
    try:
        token = cluster.kubectl("create", "token", "scraper", "-n", namespace).stdout.strip()

        def allowed() -> str | None:
            try:
                return scrape(op.api_url, token)
            except urllib.error.HTTPError as exc:  # 403 until RBAC has the binding
                assert exc.code == 403, exc
                return None
        text = wait_for("the scraper to be allowed", allowed, 30, operator=op)
        assert value(text, "pipeline_operator_api_requests_total", route="/metrics", code="401") >= 1
        assert value(text, "pipeline_operator_api_requests_total", route="/metrics", code="403") >= 1
        assert "pipeline_operator_event_store_events" in exported_names(text)
    finally:
        cluster.kubectl("delete", "clusterrolebinding", binding)
    op.assert_alive()


def test_metrics_auth_asks_for_the_apiservers_audience_and_get_on_the_metrics_url():
    reviews = Reviews({"t-scraper": ("scraper", ""), "t-bob": ("bob", "b")},
                      allow=lambda user, attributes: user == "scraper" and attributes == {"path": "/metrics",
                                                                                          "verb": "get"})
    server = ApiServer(ApiDeps(pipelines=Registry({}), events=Counted(), kube=reviews,  # type: ignore[arg-type]
                               endpoint=lambda key: None, runtime=None, artifact=lambda d: None),  # type: ignore[arg-type]
                       default_namespace="ns")

    async def scenario() -> list[tuple[int, str]]:
        async with TestClient(TestServer(server.app())) as client:
            answers = []
            for token in (None, "not-a-token", "t-bob", "t-scraper"):
                r = await client.get("/metrics", headers={"Authorization": f"Bearer {token}"} if token else {})
                answers.append((r.status, await r.text()))
            return answers

    (none, unknown, bob, scraper) = asyncio.run(scenario())
    assert (none[0], json.loads(none[1])["error_code"]) == (401, "Unauthorized")
    assert (unknown[0], json.loads(unknown[1])["error_code"]) == (401, "Unauthorized")
    assert (bob[0], json.loads(bob[1])["error_code"]) == (403, "Forbidden")
    assert scraper[0] == 200 and "pipeline_operator_api_requests_total" in scraper[1]
    tokens = [r["spec"] for r in reviews.reviews if r["kind"] == "TokenReview"]
    assert tokens and all("audiences" not in spec for spec in tokens)  # a pod's own token is for the API server
    accesses = [r["spec"] for r in reviews.reviews if r["kind"] == "SubjectAccessReview"]
    assert {(a["user"], json.dumps(a["nonResourceAttributes"], sort_keys=True)) for a in accesses} == {
        ("bob", '{"path": "/metrics", "verb": "get"}'), ("scraper", '{"path": "/metrics", "verb": "get"}')}


class Counted:
    """An event store whose count takes as long as the test wants, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = threading.Event()
        self.release.set()

    def count(self, uid: str | None = None) -> int:
        self.calls += 1
        self.release.wait(30)
        return 42


def test_a_scrape_never_counts_the_event_store_itself():
    """The store's size is counted in the background, one count at a time and at most once a period, however
    many scrapes come and however slow the count is: a scrape shows the last count and never waits for one."""
    store = Counted()
    server = ApiServer(ApiDeps(pipelines=Registry({}), events=store, kube=None, endpoint=lambda key: None,  # type: ignore[arg-type]
                               runtime=None, artifact=lambda d: None), auth="none", metrics_auth="none",  # type: ignore[arg-type]
                       store_count_seconds=60)

    async def scenario() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with TestClient(TestServer(server.app())) as client:
            async def scraped() -> str:
                r = await client.get("/metrics")
                assert r.status == 200
                return await r.text()
            store.release.clear()  # the store is slow: the first count takes until it is let go
            started = time.monotonic()
            texts = [await scraped() for _ in range(20)]
            shown = value(texts[-1], "pipeline_operator_event_store_events")
            out["slow"] = (time.monotonic() - started, store.calls, shown)
            store.release.set()
            deadline = time.monotonic() + 10
            while value(await scraped(), "pipeline_operator_event_store_events") != 42:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            out["counted"] = store.calls
            for _ in range(5):
                await scraped()
            out["within the period"] = store.calls
            server.health._store_counted_at -= 60  # a period later, the next scrape counts again (once)
            for _ in range(5):
                await scraped()
            await asyncio.sleep(0.1)
            out["again"] = store.calls
        return out

    out = asyncio.run(scenario())
    took, calls, shown = out["slow"]
    assert took < 5 and calls == 1 and shown == 0  # 20 scrapes during one slow count: not one waited, none counted
    assert out["counted"] == out["within the period"] == 1 and out["again"] == 2


def test_dashboard_covers_every_lifecycle_metric():
    """A metric added for the lifecycle without a panel is a metric nobody looks at."""
    used = {m for expr in dashboard_queries() for m in METRIC.findall(expr)}
    wanted = {"pipeline_operator_pipelines_by_status", "pipeline_operator_pipelines_stalled",
              "pipeline_operator_status_seconds_bucket", "pipeline_operator_provisioning_seconds_bucket",
              "pipeline_operator_stopping_seconds_bucket", "pipeline_operator_transitions_total",
              "pipeline_operator_errors_latched_total", "pipeline_operator_monitor_events_total",
              "pipeline_operator_kubernetes_events_posted_total", "pipeline_operator_kubernetes_events_dropped_total",
              "pipeline_operator_status_write_conflicts_total", "pipeline_operator_event_store_appended_total",
              "pipeline_operator_event_store_queued", "pipeline_operator_event_store_dropped_total",
              "pipeline_operator_event_recording_seconds_bucket", "pipeline_operator_event_store_commit_seconds_bucket",
              "pipeline_operator_api_requests_total",
              "pipeline_operator_api_request_seconds_bucket", "pipeline_operator_provisioning_timeout_ratio",
              "pipeline_operator_runtime_unavailable_seconds"}
    assert wanted <= used, sorted(wanted - used)


T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def state(resources: ResourcesStatus, since: float, runtime: RuntimeStatus | None = None,
          runtime_since: float | None = None, error: str | None = None) -> PipelineState:
    return PipelineState(
        deployment_resources_status=resources, deployment_resources_status_since=T0 + dt.timedelta(seconds=since),
        deployment_runtime_status=runtime,
        deployment_runtime_status_since=None if runtime_since is None else T0 + dt.timedelta(seconds=runtime_since),
        deployment_error=None if error is None else ErrorResponse(message="failed", error_code=error, details=None))


def test_steps_measure_time_in_status_from_the_status_stamps():
    """Each step closes the status before it, which began at its stamp (which the status keeps, so a
    restarted operator measures what began before it)."""
    m = Metrics()
    before = state(ResourcesStatus.PROVISIONING, 0)
    provisioned = state(ResourcesStatus.PROVISIONED, 42, RuntimeStatus.RUNNING, 42)
    failed = state(ResourcesStatus.STOPPING, 50, error="WorkerPanic")
    m.observe_steps(provisioned, [failed], T0 + dt.timedelta(seconds=50))
    m.observe_steps(before, [provisioned], T0 + dt.timedelta(seconds=42))
    m.observe_steps(failed, [state(ResourcesStatus.STOPPED, 53, error="WorkerPanic")],  # the same error: once
                    T0 + dt.timedelta(seconds=53))
    text = _render(m)
    assert value(text, "pipeline_operator_provisioning_seconds_sum", outcome="Provisioned") == 42
    assert value(text, "pipeline_operator_status_seconds_sum", kind="runtime", status="Running") == 8
    assert value(text, "pipeline_operator_stopping_seconds_sum") == 3
    assert value(text, "pipeline_operator_errors_latched_total", error_code="WorkerPanic") == 1
    assert value(text, "pipeline_operator_transitions_total", from_status="Provisioning", to_status="Running") == 1
    assert value(text, "pipeline_operator_transitions_total", from_status="Running", to_status="Stopping") == 1


def test_pipelines_fold_into_one_series_per_namespace_and_a_gone_namespace_disappears():
    m = Metrics()
    m.sample_pipelines([PipelineSample("a", "Running", False, 0.0, 0.0),
                        PipelineSample("a", "Provisioning", True, 0.7, 0.0),
                        PipelineSample("a", "Unavailable", False, 0.0, 400.0),
                        PipelineSample("b", "Provisioning", False, 0.2, 0.0)])
    text = _render(m)
    assert value(text, "pipeline_operator_pipelines_by_status", namespace="a") == 3
    assert value(text, "pipeline_operator_pipelines_stalled", namespace="a") == 1
    assert value(text, "pipeline_operator_provisioning_timeout_ratio", namespace="a") == 0.7
    assert value(text, "pipeline_operator_provisioning_timeout_ratio", namespace="b") == 0.2
    assert value(text, "pipeline_operator_runtime_unavailable_seconds", namespace="a") == 400
    m.sample_pipelines([PipelineSample("b", "Stopped", False, 0.0, 0.0)])
    assert not [s for s in samples(_render(m)) if s.labels.get("namespace") == "a"]


def _render(m: Metrics) -> str:
    from prometheus_client import generate_latest
    return generate_latest(m.registry).decode()
