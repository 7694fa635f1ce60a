"""Two replicas as the chart runs them with PostgreSQL: the Kubernetes backend, leader election and
a shared event store. The standby is ready and its HTTP API serves everything a user does (create,
start, pause through the pipeline, read pipelines and events) while only the leader reconciles;
when the leader is killed, the standby leads with the same history, no event lost or twice."""

from __future__ import annotations

import json
import time

import pytest
import yaml

from .operator_harness import wait_for
from .test_api import http_json
from .test_events_follow import Stream
from .test_kubernetes_backend import RBAC, operator_kubeconfig
from .test_leader_election import LEASE_ARGS, readyz
from .test_operator_lifecycle import FAST_PIPELINE, SQL

pytestmark = [pytest.mark.apiserver]


def rbac_with_the_lease() -> str:
    """deploy/'s Role for the pipelines' namespace plus its leader-election Role's rules (one namespace here)."""
    role = yaml.safe_load((RBAC / "role.yaml").read_text())
    election = next(d for d in yaml.safe_load_all((RBAC / "leader-election.yaml").read_text())
                    if d and d["kind"] == "Role")
    role["rules"] += election["rules"]
    return yaml.safe_dump(role)


def api(op, path: str, method: str = "GET", body: dict | None = None) -> tuple[int, object]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if data is not None else {}
    return http_json(f"{op.api_url}{path}", method, headers, data, timeout=30)


@pytest.fixture
def two_replicas(operators, cluster, namespace, kubelet, postgres_url):
    kubeconfig = operator_kubeconfig(cluster, namespace, rbac_with_the_lease())
    args = ["--backend", "kubernetes", "--pipeline-image", "registry.example/pipeline:1",
            "--pipeline-image-prefix", "registry.example/",
            "--pipeline-debug-routes", "--event-store", postgres_url, "--api-auth", "none",
            "--api-default-namespace", namespace, "--leader-election", "--leader-election-namespace", namespace,
            *LEASE_ARGS]
    first = operators(namespace, *args, kubeconfig=kubeconfig)
    wait_for("the first replica to lead", lambda: readyz(first)[0] == 200 or None, timeout=60, operator=first)
    second = operators(namespace, *args, kubeconfig=kubeconfig)
    wait_for("the second replica to be ready", lambda: readyz(second)[0] == 200 or None, timeout=60,
             operator=second)
    assert "standing by: the HTTP API serves the pipelines" in second.log()
    assert "watching pipelines" not in second.log()
    return first, second


def test_the_standby_is_ready_and_serves_the_api_while_the_leader_reconciles(two_replicas, pipelines, namespace):
    leader, standby = two_replicas
    # Created and started through the standby: the leader's loop acts, the standby's answer waits for it.
    code, created = api(standby, "/v0/pipelines", "POST", {"name": "orders", "program_code": SQL,
                                                          "runtime_config": {}})
    assert code == 201, created
    assert pipelines.get("orders")["spec"]["program"]["sql"] == SQL
    pipelines.patch_spec("orders", {"deployment": {"env": FAST_PIPELINE}})
    code, answer = api(standby, "/v0/pipelines/orders/start", "POST")
    assert code == 202, answer
    wait_for("Running, as the standby serves it",
             lambda: api(standby, "/v0/pipelines/orders?selector=status")[1].get("deployment_status") == "Running"
             or None, timeout=60, operator=leader)
    # A live event stream from the standby: what the leader records reaches it through the shared store.
    stream = Stream(standby.api_url, "", namespace)
    replayed = stream.until(lambda e: e["deployment_runtime_status"] == "Running")
    # Paused through the standby: forwarded to the pipeline with its control token, which the standby
    # reads from the pipeline's Secret (it never provisioned the pipeline).
    code, answer = api(standby, "/v0/pipelines/orders/pause", "POST")
    assert code == 202, answer
    followed = stream.until(lambda e: e["deployment_runtime_status"] == "Paused")
    stream.response.close()
    stored = api(leader, "/v0/pipelines/orders/events")[1]
    sent = [e["event_id"] for e in replayed + followed]
    assert sent == [e["event_id"] for e in reversed(stored)][:len(sent)]  # the store's order, no gap, no repeat
    wait_for("Paused", lambda: api(standby, "/v0/pipelines/orders?selector=status")[1].get("deployment_status")
             == "Paused" or None, timeout=30, operator=leader)
    # Both replicas serve the same pipeline and the same events (one shared store, written by the leader).
    for path in ("/v0/pipelines/orders?selector=status", "/v0/pipelines/orders/events?selector=status"):
        assert api(standby, path) == api(leader, path)
    code, events = api(standby, "/v0/pipelines/orders/events")
    assert code == 200 and len(events) >= 3
    assert events[0]["deployment_resources_status"] == "Provisioned"
    listed = api(standby, "/v0/pipelines?selector=status")[1]
    assert [p["name"] for p in listed] == ["orders"]
    # Only the leader acted: the standby made no status write and posted no Event.
    assert "watching pipelines" not in standby.log()
    assert "-> resources" not in standby.log()


def test_the_standby_leads_after_the_leader_is_killed_with_the_same_history(two_replicas, pipelines):
    leader, standby = two_replicas
    pipelines.create("orders", {"desiredStatus": "Provisioned", "program": {"sql": SQL},
                                "deployment": {"env": FAST_PIPELINE}})
    pipelines.wait_status("orders", leader, deploymentStatus="Running", timeout=60)
    before = api(standby, "/v0/pipelines/orders/events")[1]
    assert isinstance(before, list) and before
    leader.kill()
    killed_at = time.monotonic()
    status = pipelines.a_later_pass("orders", standby, timeout=60)
    assert time.monotonic() - killed_at < 20
    assert status["deploymentStatus"] == "Running"
    history = [e["eventId"] for e in status["history"]]

    def stored() -> list[str] | None:  # the store's append follows the status write: wait for the status's newest
        ids = [e["event_id"] for e in api(standby, "/v0/pipelines/orders/events")[1]]
        return ids if history[0] in ids else None
    ids = wait_for("the status's newest event in the store", stored, timeout=10, operator=standby)
    assert len(ids) == len(set(ids)), "an event twice"
    assert {e["event_id"] for e in before} <= set(ids), "an event lost"
    # The history in the status is the store's events, one for one, from the status's newest on.
    newest = ids.index(history[0])
    assert history == ids[newest:newest + len(history)]
