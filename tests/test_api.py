"""The HTTP API with Feldera's own SDK, real users' tokens and the real API server."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from typing import Any

import pytest
from feldera import FelderaClient, Pipeline
from feldera.rest.errors import FelderaAPIError

from .operator_harness import wait_for
from .test_models import schema_validator
from .test_operator_lifecycle import FAST_PIPELINE, SQL

pytestmark = pytest.mark.apiserver


def schema_validator_for_info():
    """Feldera's own schema of pipeline information (in the document the API serves)."""
    from pipeline_operator.api.openapi import document
    return schema_validator("PipelineSelectedInfo", document())


def feldera_client(url: str, token: str | None, namespace: str, **kwargs: Any) -> FelderaClient:
    """Feldera's SDK (0.306: it has no ``tenant`` argument) as a user in ``namespace``: the namespace goes in
    Feldera's ``Feldera-Tenant`` header, which the client sends with every request from then on."""
    client = FelderaClient(url, api_key=token, **kwargs)
    client.http.headers["Feldera-Tenant"] = namespace
    return client


def grant(cluster, namespace: str, user: str, verbs: str) -> None:
    role = f"pipelines-{user}"
    cluster.kubectl("create", "role", role, "-n", namespace, f"--verb={verbs}", "--resource=pipelines.dataflow.dev")
    cluster.kubectl("create", "rolebinding", role, "-n", namespace, f"--role={role}", f"--user={user}")


def http_json(url: str, method: str = "GET", headers: dict[str, str] | None = None, data: bytes | None = None,
              timeout: float = 10) -> tuple[int, Any]:
    """One request: (status, the body as JSON; None when empty; the raw bytes when it is not JSON)."""
    request = urllib.request.Request(url, method=method, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            body = r.read()
            return r.status, json.loads(body) if body else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, raw


def call(url: str, token: str | None = None, tenant: str | None = None, method: str = "GET") -> tuple[int, dict]:
    headers = {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if tenant:
        headers["Feldera-Tenant"] = tenant
    status, body = http_json(url, method, headers)
    return status, {"raw": body.decode(errors="replace")} if isinstance(body, bytes) else body


@pytest.fixture
def running(operators, pipelines, namespace, cluster, kstatus):
    """An operator, a Running pipeline 'orders', and alice allowed to read and act in the namespace."""
    op = operators(namespace)
    grant(cluster, namespace, "alice", "get,list,patch")
    pipelines.create("orders", {"desiredStatus": "Provisioned", "program": {"sql": SQL},
                                "deployment": {"env": FAST_PIPELINE}})
    kstatus.track(namespace, "orders")
    pipelines.wait_status("orders", op, deploymentStatus="Running")
    wait_for("the API", lambda: call(f"{op.api_url}/readyz")[0] == 200, 10, operator=op)
    return op


def test_feldera_sdk_reads_the_events_the_store_holds(running, cluster, namespace, pipelines):
    token = cluster.plane.users["alice"].token
    client = feldera_client(running.api_url, token, namespace)
    events = client.get_pipeline_events("orders", selector="status")
    full = client.get_pipeline_events("orders", selector="all")
    assert [e["event_id"] for e in events] == [e["event_id"] for e in full]
    history = pipelines.status("orders")["history"]
    assert [e["event_id"] for e in events[: len(history)]] == [h["eventId"] for h in history]
    assert events[0]["deployment_runtime_status"] == "Running"
    assert set(events[0]) == {"event_id", "recorded_at", "deployment_resources_status",
                              "deployment_resources_desired_status", "deployment_runtime_status",
                              "deployment_runtime_desired_status", "deployment_has_error", "program_status",
                              "storage_status"}
    assert "deployment_error" in full[0] and "storage_status_details" in full[0]
    recorded = [e["recorded_at"] for e in events]
    assert recorded == sorted(recorded, reverse=True)
    for e in events:
        schema_validator("PipelineMonitorEventSelectedInfo").validate(e)
    for e in full:
        schema_validator("PipelineMonitorEventSelectedInfo").validate(e)
    latest = client.get_pipeline_event("orders", "latest")
    assert latest == events[0]
    one = client.get_pipeline_event("orders", events[-1]["event_id"], selector="all")
    assert one == full[-1]
    assert Pipeline.get("orders", client).events() == events

    status, listed = call(f"{running.api_url}/v0/pipelines?selector=status", token, namespace)
    assert status == 200 and [p["name"] for p in listed] == ["orders"]
    assert listed[0]["deployment_status"] == "Running" and listed[0]["deployment_error"] is None
    status, one = call(f"{running.api_url}/v0/pipelines/orders?selector=all", token, namespace)
    assert status == 200 and one["program_code"] == SQL and one["storage_status"] == "InUse"
    for body in (listed[0], one):
        schema_validator_for_info().validate(body)
    # status_with_connectors: the status fields and the connectors' errors the pipeline reported (Feldera's
    # ConnectorStats; the reference pipeline has no connectors, so none), in the list and for one pipeline.
    status, listed = call(f"{running.api_url}/v0/pipelines?selector=status_with_connectors", token, namespace)
    assert status == 200 and listed[0]["connectors"] == {"num_errors": 0} and "program_code" not in listed[0]
    status, one = call(f"{running.api_url}/v0/pipelines/orders?selector=status_with_connectors", token, namespace)
    assert status == 200 and one["connectors"] == {"num_errors": 0}
    for body in (listed[0], one):
        schema_validator_for_info().validate(body)


def test_feldera_sdk_drives_the_lifecycle(running, cluster, namespace, pipelines):
    client = feldera_client(running.api_url, cluster.plane.users["alice"].token, namespace)
    client.pause_pipeline("orders", timeout_s=30)
    assert pipelines.status("orders")["deploymentStatus"] == "Paused"
    client.resume_pipeline("orders", timeout_s=30)
    assert pipelines.status("orders")["deploymentStatus"] == "Running"
    client.stop_pipeline("orders", force=False, timeout_s=60)
    st = pipelines.status("orders")
    assert st["deploymentStatus"] == "Stopped" and st["storageStatus"] == "InUse"
    client.clear_storage("orders", timeout_s=60)
    assert pipelines.status("orders")["storageStatus"] == "Cleared"
    client.start_pipeline("orders", timeout_s=60)
    assert pipelines.status("orders")["deploymentStatus"] == "Running"
    managed = json.loads(cluster.kubectl("get", "pipeline", "orders", "-n", namespace, "-o", "json",
                                         "--show-managed-fields").stdout)["metadata"]["managedFields"]
    assert any(m["manager"] == "pipeline-operator-api" and "f:spec" in json.dumps(m["fieldsV1"]) for m in managed)


def test_actions_not_allowed_now_answer_feldera_error_codes(running, cluster, namespace):
    token = cluster.plane.users["alice"].token
    url = f"{running.api_url}/v0/pipelines/orders"
    status, body = call(f"{url}/clear", token, namespace, "POST")
    assert status == 400 and body["error_code"] == "StorageStatusImmutableUnlessStopped"
    status, body = call(f"{url}/start?initial=sideways", token, namespace, "POST")
    assert status == 405 and body["error_code"] == "UnsupportedPipelineAction"


def test_errors_are_feldera_error_responses(running, cluster, namespace):
    token = cluster.plane.users["alice"].token
    base = f"{running.api_url}/v0/pipelines"
    cases = [
        (f"{base}/nope/events", 404, "UnknownPipelineName"),
        (f"{base}/orders/events/{uuid.uuid4()}", 404, "UnknownPipelineMonitorEvent"),
        (f"{base}/orders/events/not-a-uuid", 400, "InvalidUuidParam"),
        (f"{base}/orders/events?selector=everything", 400, "InvalidSelector"),
        (f"{running.api_url}/v0/api_keys", 501, "NotServed"),  # Feldera's, ruled out by Kubernetes: it says why
        (f"{base}/orders/no_such_route", 404, "NotFound"),  # not Feldera's: a JSON 404, never a bare one
        (f"{base}/orders?selector=everything", 400, "InvalidSelector"),
    ]
    for url, code, error_code in cases:
        status, body = call(url, token, namespace)
        assert (status, body["error_code"]) == (code, error_code), url
        schema_validator("ErrorResponse").validate(body)
    client = feldera_client(running.api_url, token, namespace)
    with pytest.raises(FelderaAPIError) as err:
        client.get_pipeline_events("nope")
    assert err.value.status_code == 404


def test_security_no_token_401_no_rbac_403_other_namespace_403(running, cluster, namespace):
    url = f"{running.api_url}/v0/pipelines/orders/events"
    status, body = call(url, None, namespace)
    assert status == 401 and body["error_code"] == "Unauthorized"
    status, body = call(url, "not-a-real-token", namespace)
    assert status == 401
    status, body = call(url, cluster.plane.users["bob"].token, namespace)
    assert status == 403 and body["error_code"] == "Forbidden"
    other = f"{namespace[:50]}-other"
    cluster.kubectl("create", "namespace", other)
    alice = cluster.plane.users["alice"].token
    for name in ("orders", "does-not-exist"):  # nothing tells alice whether it exists there
        status, body = call(f"{running.api_url}/v0/pipelines/{name}/events", alice, other)
        assert status == 403, (name, body)
    status, _ = call(f"{running.api_url}/v0/pipelines/orders/pause", cluster.plane.users["bob"].token, namespace,
                     "POST")
    assert status == 403


def test_health_readiness_and_metrics(running, cluster, namespace):
    assert call(f"{running.api_url}/healthz")[0] == 200
    assert call(f"{running.api_url}/readyz")[0] == 200
    call(f"{running.api_url}/v0/pipelines/orders/events", cluster.plane.users["alice"].token, namespace)
    # /metrics needs a token allowed to get it (an administrator's here; tests/test_metrics.py checks RBAC).
    metrics = urllib.request.Request(f"{running.api_url}/metrics",
                                     headers={"Authorization": f"Bearer {cluster.plane.users['admin'].token}"})
    with urllib.request.urlopen(metrics, timeout=10) as r:
        text = r.read().decode()
    for metric in ("pipeline_operator_api_requests_total", "pipeline_operator_monitoring_pass_seconds_bucket",
                   "pipeline_operator_monitor_events_total",
                   'pipeline_operator_pipelines{resources_status="Provisioned"} 1.0',
                   "pipeline_operator_event_store_events"):
        assert metric in text, metric
    config = call(f"{running.api_url}/v0/config")[1]
    assert config["edition"] == "Open source" and config["version"]


def test_unauthenticated_api_binds_to_loopback_by_default():
    from pipeline_operator.settings import OperatorSettings
    assert OperatorSettings(api_auth="none").api_listen.startswith("127.0.0.1:")
    assert OperatorSettings(api_auth="none", api_listen="0.0.0.0:9000").api_listen == "0.0.0.0:9000"


def test_oversized_requests_are_refused(running, cluster, namespace):
    token = cluster.plane.users["alice"].token
    request = urllib.request.Request(f"{running.api_url}/v0/pipelines/orders/stop", data=b"x" * (128 * 1024),
                                     headers={"Authorization": f"Bearer {token}", "Feldera-Tenant": namespace},
                                     method="POST")
    try:
        urllib.request.urlopen(request, timeout=10)
        status = 200
    except urllib.error.HTTPError as exc:
        status = exc.code
    assert status in (200, 202, 413)  # the body is never read by /stop: nothing buffers 128 KiB
    status, _ = call(f"{running.api_url}/v0/pipelines/orders/events?selector=" + "a" * 10000, token, namespace)
    assert status in (400, 414)
    running.assert_alive()
