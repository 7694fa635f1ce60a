"""The Kubernetes backend on the real API server, the operator running with its own RBAC
(a service-account token bound to deploy/base/rbac), pods stood in for by tests/fake_kubelet.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipeline_operator_dev import controlplane

from .fake_kubelet import FakeKubelet
from .operator_harness import sequence, wait_for
from .test_operator_lifecycle import FAST_PIPELINE, SQL

pytestmark = pytest.mark.apiserver
RBAC = Path(__file__).resolve().parent.parent / "deploy" / "base" / "rbac"


def operator_kubeconfig(cluster, namespace: str, role_text: str) -> Path:
    """A kubeconfig with the token of a service account bound to ``role_text`` in ``namespace``."""
    cluster.kubectl("create", "serviceaccount", "pipeline-operator", "-n", namespace)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=role_text)
    cluster.kubectl("create", "rolebinding", "pipeline-operator", "-n", namespace, "--role=pipeline-operator",
                    f"--serviceaccount={namespace}:pipeline-operator")
    token = cluster.kubectl("create", "token", "pipeline-operator", "-n", namespace, "--duration=2h").stdout.strip()
    return controlplane.write_kubeconfig(cluster.plane.workdir / f"kubeconfig-op-{namespace}", cluster.plane.server,
                                         token, cluster.plane.ca_file, user="pipeline-operator")


@pytest.fixture
def kubelet(cluster, namespace, tmp_path):
    k = FakeKubelet(cluster.kubeconfig, namespace, tmp_path / "kubelet")
    k.start()
    yield k
    k.stop()
    assert not k.errors, k.errors


@pytest.fixture
def k8s_operator(operators, cluster, namespace, kubelet):
    def start(role_text: str | None = None, *args: str):
        kubeconfig = operator_kubeconfig(cluster, namespace, role_text or (RBAC / "role.yaml").read_text())
        return operators(namespace, "--backend", "kubernetes", "--dev-endpoint-overrides", str(kubelet.overrides),
                         "--pipeline-image", "registry.example/pipeline:1", *args, kubeconfig=kubeconfig)
    return start


def spec(**extra) -> dict:
    return {"desiredStatus": "Provisioned", "program": {"sql": SQL}, "deployment": {"env": FAST_PIPELINE}, **extra}


def children(cluster, namespace: str) -> dict[str, list[str]]:
    out = {}
    for kind in ("statefulsets", "services", "configmaps", "persistentvolumeclaims"):
        items = json.loads(cluster.kubectl("get", kind, "-n", namespace, "-o", "json").stdout)["items"]
        out[kind] = sorted(i["metadata"]["name"] for i in items if i["metadata"]["name"] != "kube-root-ca.crt")
    return out


def test_rbac_role_and_clusterrole_have_the_same_rules():
    role = yaml.safe_load((RBAC / "role.yaml").read_text())
    cluster_role = yaml.safe_load((RBAC / "clusterrole.yaml").read_text())
    assert role["kind"] == "Role" and cluster_role["kind"] == "ClusterRole"
    assert role["rules"] == cluster_role["rules"]


def test_full_lifecycle_on_the_kubernetes_backend(k8s_operator, pipelines, namespace, cluster, kstatus):
    op = k8s_operator()
    uid = pipelines.create("orders", spec(storage={"size": "2Gi"}))["metadata"]["uid"]
    kstatus.track(namespace, "orders", expect="Current")
    st = pipelines.wait_status("orders", op, deploymentStatus="Running", timeout=40)
    name = f"orders-{uid[:8]}"
    assert children(cluster, namespace) == {"statefulsets": [name], "services": [name], "configmaps": [name],
                                             "persistentvolumeclaims": [f"{name}-storage"]}
    pipelines.patch_spec("orders", {"runtimeDesiredStatus": "Paused"})
    pipelines.wait_status("orders", op, deploymentStatus="Paused")
    pipelines.patch_spec("orders", {"runtimeDesiredStatus": "Running"})
    pipelines.wait_status("orders", op, deploymentStatus="Running")

    pipelines.patch_spec("orders", {"desiredStatus": "Stopped"})
    st = pipelines.wait_status("orders", op, deploymentStatus="Stopped", deploymentResourcesDesiredStatus="Stopped")
    assert st["storageStatus"] == "InUse" and len(st["storageStatusDetails"]["checkpoints"]) == 1
    assert children(cluster, namespace) == {"statefulsets": [], "services": [], "configmaps": [],
                                             "persistentvolumeclaims": [f"{name}-storage"]}

    pipelines.patch_spec("orders", {"desiredStatus": "Provisioned"})
    st = pipelines.wait_status("orders", op, deploymentStatus="Running", timeout=40)
    assert ("Provisioned", "Replaying") in sequence(st["history"], "deploymentResourcesStatus",
                                                    "deploymentRuntimeStatus")
    pipelines.patch_spec("orders", {"desiredStatus": "Stopped", "stopMode": "Force"})
    pipelines.wait_status("orders", op, deploymentStatus="Stopped")
    pipelines.annotate("orders", "dataflow.dev/clear-storage", "1")
    pipelines.wait_status("orders", op, storageStatus="Cleared", timeout=40)
    assert children(cluster, namespace)["persistentvolumeclaims"] == []

    pipelines.patch_spec("orders", {"desiredStatus": "Provisioned"})
    pipelines.wait_status("orders", op, deploymentStatus="Running", timeout=40)
    kstatus.tracked.clear()
    pipelines.delete("orders")
    assert cluster.kubectl("get", "pipeline", "orders", "-n", namespace, check=False).returncode != 0
    assert children(cluster, namespace) == {"statefulsets": [], "services": [], "configmaps": [],
                                             "persistentvolumeclaims": []}


def test_created_objects_field_by_field(k8s_operator, pipelines, namespace, cluster, kstatus):
    op = k8s_operator()
    obj = {"desiredStatus": "Provisioned", "program": {"sql": SQL},
           "deployment": {"image": "registry.example/custom:2", "env": [{"name": "RUST_LOG", "value": "info"}],
                          "resources": {"requests": {"cpu": 1, "memory": "512Mi"}, "limits": {"memory": "1Gi"}}},
           "storage": {"size": "5Gi", "storageClassName": "fast"}}
    created = pipelines.create("shaped", obj, annotations={"argocd.argoproj.io/tracking-id": "x"})
    cluster.kubectl("label", "pipeline", "shaped", "-n", namespace, "team=data")
    uid = created["metadata"]["uid"]
    kstatus.track(namespace, "shaped", expect="Current")
    pipelines.wait_status("shaped", op, deploymentStatus="Running", timeout=40)
    name = f"shaped-{uid[:8]}"
    owner = {"apiVersion": "dataflow.dev/v1alpha1", "kind": "Pipeline", "name": "shaped", "uid": uid,
             "controller": True, "blockOwnerDeletion": True}
    for kind, child in (("statefulset", name), ("service", name), ("configmap", name), ("pvc", f"{name}-storage")):
        meta = cluster.get(kind, child, namespace)["metadata"]
        assert meta["ownerReferences"] == [owner], kind
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "pipeline-operator"
        assert meta["labels"]["app.kubernetes.io/instance"] == name
        assert meta["labels"]["dataflow.dev/pipeline-uid"] == uid
        assert "team" not in meta["labels"] and "argocd.argoproj.io/tracking-id" not in (meta.get("annotations") or {})
    sts = cluster.get("statefulset", name, namespace)
    assert sts["spec"]["replicas"] == 1 and sts["spec"]["serviceName"] == name
    pod = sts["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "registry.example/custom:2"
    assert container["resources"] == {"requests": {"cpu": "1", "memory": "512Mi"}, "limits": {"memory": "1Gi"}}
    assert {"name": "RUST_LOG", "value": "info"} in container["env"]
    assert container["securityContext"] == {"runAsNonRoot": True, "readOnlyRootFilesystem": True,
                                            "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                            "seccompProfile": {"type": "RuntimeDefault"}}
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
    claim = next(v for v in pod["volumes"] if v["name"] == "storage")["persistentVolumeClaim"]["claimName"]
    assert claim == f"{name}-storage"
    pvc = cluster.get("pvc", f"{name}-storage", namespace)
    assert pvc["spec"]["resources"]["requests"]["storage"] == "5Gi" and pvc["spec"]["storageClassName"] == "fast"
    svc = cluster.get("service", name, namespace)
    assert svc["spec"]["ports"][0]["port"] == 8080 and svc["spec"]["selector"]["app.kubernetes.io/instance"] == name
    program = json.loads(cluster.get("configmap", name, namespace)["data"]["program.json"])
    assert program["sql"] == SQL and program["tables"] == ["orders"]


def test_a_claim_that_stays_pending_times_out_naming_the_cause(k8s_operator, pipelines, namespace, kstatus):
    op = k8s_operator()
    pipelines.create("stuck", spec(storage={"storageClassName": "unavailable"},
                                   deployment={"provisioningTimeoutSeconds": 3}))
    kstatus.track(namespace, "stuck", expect="Failed")
    st = pipelines.wait_status("stuck", op, deploymentStatus="Stopped", deploymentResourcesDesiredStatus="Stopped",
                               timeout=30)
    assert st["deploymentError"]["errorCode"] == "AutomatonProvisioningTimeout"
    assert "PersistentVolumeClaim" in st["deploymentError"]["message"] and "Pending" in st["deploymentError"]["message"]


def test_statefulset_deleted_behind_the_operators_back_is_a_resource_error(
        k8s_operator, pipelines, namespace, cluster, kstatus):
    op = k8s_operator()
    uid = pipelines.create("victim", spec())["metadata"]["uid"]
    kstatus.track(namespace, "victim", expect="Failed")
    pipelines.wait_status("victim", op, deploymentStatus="Running", timeout=40)
    cluster.kubectl("delete", "statefulset", f"victim-{uid[:8]}", "-n", namespace)
    st = pipelines.wait_status("victim", op, deploymentStatus="Stopped", timeout=30)
    assert st["deploymentError"]["errorCode"] == "RunnerCheckError"
    assert "deleted outside the operator" in st["deploymentError"]["message"]


def test_a_missing_permission_is_a_stalled_condition_not_a_crash(k8s_operator, pipelines, namespace, cluster):
    role = yaml.safe_load((RBAC / "role.yaml").read_text())
    for rule in role["rules"]:
        if rule["resources"] == ["statefulsets"]:
            rule["verbs"] = ["get", "delete"]  # no create
    op = k8s_operator(yaml.safe_dump(role))
    pipelines.create("denied", spec())

    def stalled():
        conditions = {c["type"]: c for c in pipelines.status("denied").get("conditions", [])}
        cond = conditions.get("Stalled")
        return cond if cond and cond["status"] == "True" else None
    cond = wait_for("a Stalled condition", stalled, 30, operator=op)
    assert cond["reason"] == "PermissionDenied" and "create statefulsets" in cond["message"]
    op.assert_alive()
    assert "may not create statefulsets" in op.log() and "Traceback" not in op.log()
    from .kstatus import compute
    assert compute(pipelines.get("denied"))[0] == "Failed"


def test_a_single_pod_restart_does_not_stop_the_pipeline(k8s_operator, pipelines, namespace, kubelet, kstatus):
    op = k8s_operator()
    uid = pipelines.create("hardy", spec())["metadata"]["uid"]
    kstatus.track(namespace, "hardy", expect="Current")
    before = pipelines.wait_status("hardy", op, deploymentStatus="Running", timeout=40)["history"][0]["eventId"]
    kubelet.kill_pod(f"hardy-{uid[:8]}")  # the container dies once; the kubelet restarts it
    wait_for("the restart", lambda: kubelet.restarts.get(f"hardy-{uid[:8]}", 0) >= 1, 10)

    def back_to_running() -> dict | None:
        st = pipelines.status("hardy")
        since = [h for h in st["history"] if h["eventId"] > before]  # UUIDv7: later ids sort later
        noticed = any(h["deploymentRuntimeStatus"] != "Running" for h in since)
        return st if noticed and st["deploymentStatus"] == "Running" else None
    st = wait_for("the pipeline to notice the restart and run again", back_to_running, 40, operator=op)
    assert st["deploymentResourcesStatus"] == "Provisioned" and "deploymentError" not in st
    assert kubelet.restarts[f"hardy-{uid[:8]}"] == 1


def test_a_crash_looping_pod_stops_the_pipeline_with_the_kubelets_reason(
        k8s_operator, pipelines, namespace, kubelet, kstatus):
    op = k8s_operator()
    env = [*FAST_PIPELINE, {"name": "PIPELINE_EXIT_AFTER_SECONDS", "value": "0.5"}]
    pipelines.create("doomed", spec(deployment={"env": env, "provisioningTimeoutSeconds": 120}))
    kstatus.track(namespace, "doomed", expect="Failed")
    st = pipelines.wait_status("doomed", op, deploymentStatus="Stopped", deploymentResourcesDesiredStatus="Stopped",
                               timeout=60)
    error = st["deploymentError"]
    assert "failing repeatedly" in error["message"] and "CrashLoopBackOff" in error["message"]


def test_all_namespaces_with_the_cluster_role(binaries, tmp_path):
    """A control plane of its own (no other test's Pipelines), the operator bound to the ClusterRole."""
    from .conftest import CRD_FILE, Cluster, _kill_pipeline_processes_under
    from .operator_harness import OperatorProcess, Pipelines
    plane = controlplane.ControlPlane(binaries).start()
    kubelets: list[FakeKubelet] = []
    op = None
    try:
        cluster = Cluster(binaries, plane)
        cluster.kubectl("apply", "-f", str(CRD_FILE))
        controlplane.wait_established(cluster.kubectl)
        cluster.kubectl("create", "namespace", "pipeline-operator-system")
        cluster.kubectl("create", "serviceaccount", "pipeline-operator", "-n", "pipeline-operator-system")
        cluster.kubectl("apply", "-f", str(RBAC / "clusterrole.yaml"))
        cluster.kubectl("create", "clusterrolebinding", "pipeline-operator", "--clusterrole=pipeline-operator",
                        "--serviceaccount=pipeline-operator-system:pipeline-operator")
        token = cluster.kubectl("create", "token", "pipeline-operator", "-n", "pipeline-operator-system").stdout.strip()
        kubeconfig = controlplane.write_kubeconfig(tmp_path / "kubeconfig-op", plane.server, token, plane.ca_file)
        overrides = tmp_path / "endpoints.json"
        for ns in ("team-a", "team-b"):
            cluster.kubectl("create", "namespace", ns)
            kubelet = FakeKubelet(plane.kubeconfig, ns, tmp_path / f"kubelet-{ns}")
            kubelet.overrides = overrides  # one file for both namespaces
            kubelet.start()
            kubelets.append(kubelet)
        op = OperatorProcess(None, None, tmp_path / "state", ["--backend", "kubernetes", "--dev-endpoint-overrides",
                                                                str(overrides)], kubeconfig).start()
        for ns in ("team-a", "team-b"):
            Pipelines(cluster, ns).create("orders", spec())
        for ns in ("team-a", "team-b"):
            Pipelines(cluster, ns).wait_status("orders", op, deploymentStatus="Running", timeout=60)
    finally:
        if op is not None:
            op.stop()
        for kubelet in kubelets:
            kubelet.stop()
        _kill_pipeline_processes_under(tmp_path)
        plane.stop()
