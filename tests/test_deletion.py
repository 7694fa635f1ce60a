"""A deletion that cannot finish: growing retries, one DeletionStuck report, and a deliberate
release of the finalizer (the real API server; pods stood in for by tests/fake_kubelet.py)."""

from __future__ import annotations

import json
import re

import pytest

from .operator_harness import wait_for
from .test_kubernetes_backend import k8s_operator, spec  # noqa: F401 - k8s_operator: a fixture

pytestmark = pytest.mark.apiserver
HOLD = "test.dataflow.dev/hold"  # stands in for kubernetes.io/pvc-protection: the claim never goes away


def events_of(cluster, namespace: str, name: str) -> list[dict]:
    items = json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
    return [e for e in items if e["involvedObject"].get("name") == name
            and e["involvedObject"].get("kind") == "Pipeline"]


def test_a_stuck_deletion_is_reported_once_and_released_by_the_annotation(
        k8s_operator, pipelines, namespace, cluster):  # noqa: F811
    op = k8s_operator(None, "--deletion-timeout", "3", "--verbose")
    uid = pipelines.create("held", spec())["metadata"]["uid"]
    pipelines.wait_status("held", op, deploymentStatus="Running", timeout=40)
    claim = f"held-{uid[:8]}-storage"
    cluster.kubectl("patch", "pvc", claim, "-n", namespace, "--type=json",
                    "-p", json.dumps([{"op": "add", "path": "/metadata/finalizers/-", "value": HOLD}]))
    pipelines.delete("held", wait=False)

    def stalled() -> dict | None:
        conditions = {c["type"]: c for c in pipelines.status("held").get("conditions") or []}
        stall = conditions.get("Stalled")
        return stall if stall and stall["status"] == "True" and stall["reason"] == "DeletionStuck" else None
    condition = wait_for("the DeletionStuck condition", stalled, 60, operator=op)
    assert f"PersistentVolumeClaim {namespace}/{claim}" in condition["message"]
    assert "dataflow.dev/release-finalizer=true" in condition["message"]

    tries = re.compile(r"held: deleting, try (\d+):")
    first = max(int(n) for n in tries.findall(op.log()))
    wait_for("two more tries after the report", lambda: max(int(n) for n in tries.findall(op.log())) >= first + 2,
             90, operator=op)
    stuck = [e for e in events_of(cluster, namespace, "held") if e["reason"] == "DeletionStuck"]
    assert len(stuck) == 1 and stuck[0]["type"] == "Warning" and claim in stuck[0]["message"]
    assert not [e for e in events_of(cluster, namespace, "held") if e["type"] not in ("Normal", "Warning")]
    assert cluster.kubectl("get", "pipeline", "held", "-n", namespace, check=False).returncode == 0

    pipelines.annotate("held", "dataflow.dev/release-finalizer", "true")
    wait_for("the Pipeline to be released",
             lambda: cluster.kubectl("get", "pipeline", "held", "-n", namespace, check=False).returncode != 0,
             60, operator=op)
    released = [e for e in events_of(cluster, namespace, "held") if e["reason"] == "FinalizerReleased"]
    assert len(released) == 1 and claim in released[0]["message"]
    assert "release-finalizer annotation" in op.log() and claim in op.log()
    assert "Traceback" not in op.log()
    cluster.kubectl("patch", "pvc", claim, "-n", namespace, "--type=merge", "-p", '{"metadata":{"finalizers":null}}')
