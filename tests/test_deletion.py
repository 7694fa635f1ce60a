"""A deletion that cannot finish: growing retries, one DeletionStuck report, and a deliberate
release of the finalizer (the real API server; pods stood in for by tests/fake_kubelet.py)."""

from __future__ import annotations

import asyncio
import json
import re

import kopf
import kubernetes
import pytest

from pipeline_operator.controller.deletion import delete_pipeline
from pipeline_operator.core.lifecycle import ComputeObservation, ComputeState
from pipeline_operator.identity import PipelineKey
from pipeline_operator.kube.client import KubeClient
from pipeline_operator.reconcile.services import LoopServices
from pipeline_operator.settings import OperatorSettings

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


class ComputeThatStays:
    """A backend whose compute never goes away, however often it is asked to."""

    def __init__(self) -> None:
        self.asked = 0

    async def observe_compute(self, key: PipelineKey) -> ComputeObservation:
        return ComputeObservation(state=ComputeState.TERMINATING)

    async def deprovision(self, key: PipelineKey) -> None:
        self.asked += 1

    def describe_compute(self, key: PipelineKey) -> str:
        return f"the process of {key.name}"


def test_the_delete_handler_takes_one_step_per_call_and_has_kopf_retry_with_growing_delays(
        pipelines, namespace, cluster, tmp_path):
    """Kopf's delete handler, called as Kopf calls it (``retry`` counting its earlier retries, the object's
    memo kept between calls), against the real API server: each call takes one step and raises
    kopf.TemporaryError naming what is left, with a delay of 1 s doubling up to 30 s, never giving up;
    the DeletionStuck condition and Event come once."""
    body = pipelines.create("stays", spec())
    body["metadata"]["deletionTimestamp"] = "2020-01-01T00:00:00Z"  # long past its deletion timeout
    settings = OperatorSettings(namespaces=[namespace], state_dir=tmp_path, deletion_timeout=60)
    backend = ComputeThatStays()

    async def calls(n: int) -> list[float]:
        configuration = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(str(cluster.kubeconfig), client_configuration=configuration)
        kube = KubeClient(configuration, field_manager="deletion-test", workers=2)
        ctx = LoopServices(settings=settings, kube=kube, backend=backend, compiler=None, runtime=None)  # type: ignore[arg-type]
        memo: dict[str, object] = {}
        delays = []
        try:
            for retry in range(n):
                with pytest.raises(kopf.TemporaryError) as raised:
                    await asyncio.wait_for(delete_pipeline(ctx, dict(body), retry=retry, memo=memo), 10)
                assert "the process of stays is still Terminating" in str(raised.value)
                delays.append(raised.value.delay)
        finally:
            await kube.close()
        return delays

    assert asyncio.run(calls(8)) == [1, 2, 4, 8, 16, 30, 30, 30]
    assert backend.asked == 8
    conditions = {c["type"]: c for c in pipelines.status("stays").get("conditions") or []}
    assert conditions["Stalled"]["reason"] == "DeletionStuck" and conditions["Stalled"]["status"] == "True"
    assert len([e for e in events_of(cluster, namespace, "stays") if e["reason"] == "DeletionStuck"]) == 1
    assert asyncio.run(calls(1)) == [1]  # a restarted operator: reported already, not again
    assert len([e for e in events_of(cluster, namespace, "stays") if e["reason"] == "DeletionStuck"]) == 1
