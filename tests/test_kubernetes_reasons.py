"""Why a pipeline on the Kubernetes backend is not ready, in Kubernetes' words: the pod and claim states
are written through the real API server as the StatefulSet controller, the scheduler, the kubelet and the
eviction manager write them (no kubelet runs here, so nothing overwrites them)."""

from __future__ import annotations

import json

import pytest

from pipeline_operator.backends.kubernetes import KubernetesOptions, child_name, labels
from pipeline_operator.backends.kubernetes.objects import build_objects
from pipeline_operator.core.lifecycle import ComputeState
from pipeline_operator.models import PipelineSpec, RuntimeDesiredStatus

from .operator_harness import wait_for
from .test_api import call, grant
from .test_kubernetes_backend import RBAC, InProcess, key_of, operator_kubeconfig, spec
from .test_operator_lifecycle import SQL

pytestmark = pytest.mark.apiserver

UNSCHEDULABLE = "0/3 nodes are available: 3 Insufficient memory. preemption: 0/3 nodes are available."
EVICTED = "The node was low on resource: memory. Threshold quantity: 100Mi, available: 42Mi."
LIMITS = {"limits": {"memory": "256Mi"}}


def create_pod(cluster, namespace: str, key, spec_dict: dict) -> str:
    """The pod ``<statefulset>-0`` as the StatefulSet controller makes it from the template."""
    sts = build_objects(key, PipelineSpec.model_validate(spec_dict), {"sql": SQL}, RuntimeDesiredStatus.RUNNING,
                        KubernetesOptions(default_image="registry.example/pipeline:1"))["statefulset"]
    name = f"{child_name(key)}-0"
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": namespace, "labels": labels(key)},
           "spec": sts["spec"]["template"]["spec"]}
    cluster.kubectl("create", "-f", "-", input=json.dumps(pod))
    return name


def write_pod_status(cluster, namespace: str, pod: str, status: dict) -> None:
    """Through the status subresource, as the scheduler and the kubelet write it."""
    cluster.kubectl("patch", "pod", pod, "-n", namespace, "--subresource=status", "--type=merge",
                    "-p", json.dumps({"status": status}))


def _container(state: dict, restarts: int = 0, last: dict | None = None) -> dict:
    return {"containerStatuses": [{"name": "pipeline", "image": "registry.example/pipeline:1", "imageID": "",
                                   "ready": False, "restartCount": restarts, "state": state,
                                   "lastState": last or {}}]}


OOM_LAST = {"terminated": {"exitCode": 137, "reason": "OOMKilled", "startedAt": "2026-01-01T00:00:00Z",
                           "finishedAt": "2026-01-01T00:00:05Z"}}

STATES = {
    "unschedulable": ({"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": UNSCHEDULABLE}]},
        ComputeState.PENDING, f"cannot be scheduled (Unschedulable): {UNSCHEDULABLE}"),
    "image pull": ({"phase": "Pending", **_container({"waiting": {
        "reason": "ImagePullBackOff", "message": 'Back-off pulling image "registry.example/missing:9"'}})},
        ComputeState.PENDING, "container pipeline cannot pull image registry.example/missing:9: ImagePullBackOff: "
                              'Back-off pulling image "registry.example/missing:9"'),
    "oom once": ({"phase": "Running", **_container({"waiting": {
        "reason": "CrashLoopBackOff", "message": "back-off 10s restarting failed container"}}, 1, OOM_LAST)},
        ComputeState.PENDING, "container pipeline is waiting: CrashLoopBackOff: back-off 10s restarting failed "
                              "container; last termination: container pipeline was OOMKilled (exit code 137, "
                              "memory limit 256Mi)"),
    "oom repeatedly": ({"phase": "Running", **_container({"waiting": {
        "reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}}, 3, OOM_LAST)},
        ComputeState.FAILED, "is failing repeatedly (3 restarts): CrashLoopBackOff: back-off 40s restarting "
                             "failed container; last termination: container pipeline was OOMKilled (exit code "
                             "137, memory limit 256Mi)"),
    "evicted": ({"phase": "Failed", "reason": "Evicted", "message": EVICTED},
                ComputeState.FAILED, f"was evicted: {EVICTED}"),
}


@pytest.fixture
def backend(cluster, namespace, crd_installed):
    return InProcess(cluster, namespace, operator_kubeconfig(cluster, namespace, (RBAC / "role.yaml").read_text()))


@pytest.mark.parametrize("case", list(STATES))
def test_the_pods_state_is_explained_in_kubernetes_words(case, backend, pipelines, cluster, namespace):
    status, state, expected = STATES[case]
    deployment = {"resources": LIMITS, **({"image": "registry.example/missing:9"} if case == "image pull" else {})}
    spec_dict = spec(deployment=deployment)
    key = key_of(pipelines.create("explained", spec_dict))
    backend.provision(key, spec_dict)
    pod = create_pod(cluster, namespace, key, spec_dict)
    write_pod_status(cluster, namespace, pod, status)

    async def observe(b):
        return await b.observe_compute(key)
    seen = backend.run(observe)  # a fresh backend, as after a restart: what its caches list
    assert seen.state is state
    assert seen.message == f"pod {pod} {expected}"


def test_an_unbound_claim_is_named_with_its_phase(backend, pipelines, cluster, namespace):
    key = key_of(pipelines.create("unbound", spec()))
    backend.provision(key, spec())

    async def observe(b):
        return await b.observe_compute(key)
    seen = backend.run(observe)
    assert seen.state is ComputeState.PENDING
    assert seen.message == f"PersistentVolumeClaim {child_name(key)}-storage is Pending"


def test_the_schedulers_message_reaches_the_error_the_monitor_event_and_a_kubernetes_event(
        operators, pipelines, cluster, namespace, kstatus):
    # With the administrator's kubeconfig: the HTTP API checks its callers with TokenReviews.
    op = operators(namespace, "--backend", "kubernetes", "--pipeline-image", "registry.example/pipeline:1")
    spec_dict = spec(deployment={"provisioningTimeoutSeconds": 4})
    key = key_of(pipelines.create("crowded", spec_dict))
    kstatus.track(namespace, "crowded", expect="Failed")
    wait_for("the StatefulSet", lambda: cluster.kubectl("get", "statefulset", child_name(key), "-n", namespace,
                                                        check=False).returncode == 0, 20, operator=op)
    pod = create_pod(cluster, namespace, key, spec_dict)
    write_pod_status(cluster, namespace, pod, STATES["unschedulable"][0])

    pipelines.wait_status("crowded", op, deploymentResourcesStatus="Stopping", timeout=40)
    cluster.kubectl("delete", "pod", pod, "-n", namespace, "--wait=false")  # the StatefulSet controller's part
    st = pipelines.wait_status("crowded", op, deploymentStatus="Stopped", deploymentResourcesDesiredStatus="Stopped",
                               timeout=40)
    error = st["deploymentError"]
    assert error["errorCode"] == "AutomatonProvisioningTimeout"
    assert f"pod {pod} cannot be scheduled (Unschedulable): {UNSCHEDULABLE}" in error["message"]
    assert UNSCHEDULABLE in error["details"]["cause"]

    events = json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
    posted = [e for e in events if e["involvedObject"].get("name") == "crowded" and e["type"] == "Warning"]
    assert any(UNSCHEDULABLE in e["message"] for e in posted), [e["message"] for e in posted]

    grant(cluster, namespace, "alice", "get,list")
    wait_for("the API", lambda: call(f"{op.api_url}/readyz")[0] == 200, 10, operator=op)
    status, body = call(f"{op.api_url}/v0/pipelines/crowded/events?selector=all", cluster.plane.users["alice"].token,
                        namespace)
    assert status == 200
    errors = [e["deployment_error"]["message"] for e in body if e.get("deployment_error")]
    assert errors and UNSCHEDULABLE in errors[0]
