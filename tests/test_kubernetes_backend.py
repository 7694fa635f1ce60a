"""The Kubernetes backend on the real API server, the operator running with its own RBAC
(a service-account token bound to deploy/base/rbac), pods stood in for by tests/fake_kubelet.py."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import kubernetes
import pytest
import yaml

from pipeline_operator.backends.kubernetes import KubernetesBackend, KubernetesOptions, child_name
from pipeline_operator.backends.kubernetes.children import WATCHED
from pipeline_operator.backends.kubernetes.objects import build_objects, container_resources, image_allowed
from pipeline_operator.core.lifecycle import ComputeState
from pipeline_operator.identity import PipelineKey
from pipeline_operator.kube.client import KubeClient
from pipeline_operator.models import BootstrapPolicy, PipelineSpec, RuntimeDesiredStatus
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
def k8s_operator(operators, cluster, namespace, kubelet):
    def start(role_text: str | None = None, *args: str):
        kubeconfig = operator_kubeconfig(cluster, namespace, role_text or (RBAC / "role.yaml").read_text())
        return operators(namespace, "--backend", "kubernetes", "--pipeline-image", "registry.example/pipeline:1",
                         "--pipeline-image-prefix", "registry.example/", *args, kubeconfig=kubeconfig)
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
    # Feldera's launch contract: the PipelineConfig in the ConfigMap, Feldera's arguments, its environment.
    data = cluster.get("configmap", name, namespace)["data"]
    assert set(data) == {"config.json", "config.yaml"}
    config = json.loads(data["config.json"])
    assert json.loads(data["config.yaml"]) == config
    assert config["name"] == f"pipeline-{uid}" and config["given_name"] == "shaped" and config["workers"] == 8
    assert config["storage_config"] == {"path": "/storage", "cache": "page_cache"}
    assert [t["name"] for t in config["program_ir"]["program_schema"]["inputs"]] == ["orders"]
    command = container["command"]
    assert command[:2] == ["pipeline-operator", "pipeline-process"]
    flags = dict(zip(command[2::2], command[3::2], strict=True))
    assert flags.keys() == {"--config-file", "--bind-address", "--initial", "--deployment-id", "--default-port",
                            "--bootstrap-policy"}
    assert flags["--config-file"] == "/config/config.yaml" and flags["--default-port"] == "8080"
    assert flags["--initial"] == "running" and flags["--bind-address"] == "0.0.0.0"
    assert container["workingDir"] == "/work" and {"name": "TOKIO_WORKER_THREADS", "value": "8"} in container["env"]


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
            rule["verbs"].remove("create")
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
        for ns in ("team-a", "team-b"):
            cluster.kubectl("create", "namespace", ns)
            kubelet = FakeKubelet(plane.kubeconfig, ns, tmp_path / f"kubelet-{ns}")
            kubelet.start()
            kubelets.append(kubelet)
        op = OperatorProcess(None, None, tmp_path / "state", ["--backend", "kubernetes"], kubeconfig).start()
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


# -- the backend itself, in process, on the real API server with the operator's Role ------------------------------


def _token_of(secret: dict) -> str:
    return base64.b64decode(secret["data"]["token"]).decode()


class InProcess:
    """A KubernetesBackend bound to the operator's Role in one namespace (nothing else runs)."""

    def __init__(self, cluster, namespace: str, kubeconfig: Path, **options) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.kubeconfig = kubeconfig
        self.options = KubernetesOptions(default_image="registry.example/pipeline:1", **options)

    def run(self, fn, options: KubernetesOptions | None = None, on_child_change=None, on_restored=None):
        """``fn(backend)`` on a fresh, started backend (as after an operator restart), closed afterwards."""
        async def main():
            configuration = kubernetes.client.Configuration()
            kubernetes.config.load_kube_config(str(self.kubeconfig), client_configuration=configuration)
            kube = KubeClient(configuration)
            backend = KubernetesBackend(kube, options or self.options, [self.namespace], on_child_change,
                                        on_restored)
            try:
                await backend.start()
                return await fn(backend)
            finally:
                await backend.close()
                await kube.close()
        return asyncio.run(main())

    def provision(self, key: PipelineKey, spec_dict: dict, options: KubernetesOptions | None = None):
        async def go(backend):
            await backend.provision(key, PipelineSpec.model_validate(spec_dict), {"sql": SQL},
                                    RuntimeDesiredStatus.RUNNING, BootstrapPolicy.AWAIT_APPROVAL)
            return await backend.observe_compute(key), backend.token(key)
        return self.run(go, options)

    def deprovision(self, key: PipelineKey) -> None:
        async def go(backend):
            await backend.deprovision(key)
        self.run(go)

    def token(self, key: PipelineKey) -> str | None:
        async def go(backend):
            await backend.observe_compute(key)
            return backend.token(key)
        return self.run(go)

    def get(self, kind: str, name: str) -> dict | None:
        res = self.cluster.kubectl("get", kind, name, "-n", self.namespace, "-o", "json", check=False)
        return json.loads(res.stdout) if res.returncode == 0 else None


@pytest.fixture
def in_process(cluster, namespace, crd_installed):
    kubeconfig = operator_kubeconfig(cluster, namespace, (RBAC / "role.yaml").read_text())
    return lambda **options: InProcess(cluster, namespace, kubeconfig, **options)


def key_of(created: dict) -> PipelineKey:
    meta = created["metadata"]
    return PipelineKey(meta["namespace"], meta["name"], meta["uid"])


def test_control_token_secret_lives_with_the_compute_and_the_operator_knows_it(in_process, pipelines):
    backend = in_process(debug_routes=True)
    key = key_of(pipelines.create("guarded", spec()))
    name = child_name(key)
    _, known = backend.provision(key, spec())
    secret = backend.get("secret", f"{name}-token")
    assert secret is not None and secret["metadata"]["ownerReferences"][0]["uid"] == key.uid
    assert secret["metadata"]["labels"]["dataflow.dev/pipeline-uid"] == key.uid
    token = _token_of(secret)
    assert len(token) >= 32 and known == token
    container = backend.get("statefulset", name)["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "PIPELINE_CONTROL_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": f"{name}-token", "key": "token"}}} in container["env"]
    assert {"name": "PIPELINE_DEBUG_ROUTES", "value": "1"} in container["env"]
    # Provisioning again (a retry) keeps the token; an operator restart reads it back from the Secret.
    assert backend.provision(key, spec())[1] == token and _token_of(backend.get("secret", f"{name}-token")) == token
    assert backend.token(key) == token
    # Stopped: the Secret goes with the compute; the next start has a new token, and the operator knows it.
    backend.deprovision(key)
    assert backend.get("secret", f"{name}-token") is None and backend.get("statefulset", name) is None
    _, again = backend.provision(key, spec())
    assert again == _token_of(backend.get("secret", f"{name}-token")) and again != token
    assert backend.token(key) == again


def test_debug_routes_are_off_unless_enabled(in_process, pipelines):
    backend = in_process()
    key = key_of(pipelines.create("plain", spec()))
    backend.provision(key, spec())
    container = backend.get("statefulset", child_name(key))["spec"]["template"]["spec"]["containers"][0]
    assert "--debug-routes" not in container["command"]
    assert "PIPELINE_DEBUG_ROUTES" not in [e["name"] for e in container["env"]]


def test_a_spec_cannot_choose_the_control_token_or_debug_routes(in_process, pipelines):
    backend = in_process()
    body = spec(deployment={"env": [{"name": "PIPELINE_CONTROL_TOKEN", "value": "chosen"},
                                    {"name": "PIPELINE_DEBUG_ROUTES", "value": "1"}]})
    key = key_of(pipelines.create("chooser", body))
    backend.provision(key, body)
    env = backend.get("statefulset", child_name(key))["spec"]["template"]["spec"]["containers"][0]["env"]
    assert [e for e in env if e["name"] == "PIPELINE_CONTROL_TOKEN"] == [
        {"name": "PIPELINE_CONTROL_TOKEN", "valueFrom": {"secretKeyRef": {"name": f"{child_name(key)}-token",
                                                                           "key": "token"}}}]
    assert not [e for e in env if e["name"] == "PIPELINE_DEBUG_ROUTES"]


def test_network_policy_admits_the_operator_and_the_listed_peers_only(in_process, pipelines):
    backend = in_process(network_policies=True, operator_namespace="pipeline-operator-system",
                         operator_pod_labels={"app.kubernetes.io/name": "pipeline-operator"})
    peers = [{"podSelector": {"matchLabels": {"app": "dashboard"}}},
             {"namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "In", "values": ["data"]}]}},
             {"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.5.0/24"]}}]
    body = spec(deployment={"env": FAST_PIPELINE, "allowIngressFrom": peers})
    key = key_of(pipelines.create("fenced", body))
    name = child_name(key)
    backend.provision(key, body)
    policy = backend.get("networkpolicy", name)
    assert policy is not None
    assert policy["metadata"]["ownerReferences"][0]["uid"] == key.uid
    assert policy["spec"] == {
        "podSelector": {"matchLabels": {"app.kubernetes.io/instance": name, "dataflow.dev/pipeline-uid": key.uid}},
        "policyTypes": ["Ingress"],
        "ingress": [{"ports": [{"port": 8080, "protocol": "TCP"}], "from": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "pipeline-operator-system"}},
             "podSelector": {"matchLabels": {"app.kubernetes.io/name": "pipeline-operator"}}},
            *peers]}]}
    pod_labels = backend.get("statefulset", name)["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    backend.deprovision(key)
    assert backend.get("networkpolicy", name) is None


def test_network_policy_defaults_to_the_pipelines_namespace_and_is_off_when_disabled(in_process, pipelines,
                                                                                      namespace):
    on = in_process(network_policies=True, operator_pod_labels={"app.kubernetes.io/name": "pipeline-operator"})
    key = key_of(pipelines.create("local-op", spec()))
    on.provision(key, spec())
    peer = on.get("networkpolicy", child_name(key))["spec"]["ingress"][0]["from"][0]
    assert peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
    off = in_process(network_policies=False)
    key = key_of(pipelines.create("open", spec()))
    off.provision(key, spec())
    assert off.get("networkpolicy", child_name(key)) is None and off.get("statefulset", child_name(key))


@pytest.mark.parametrize(("image", "prefixes", "allowed"), [
    ("ghcr.io/x/op", ["ghcr.io/x/op"], True),
    ("ghcr.io/x/op:1", ["ghcr.io/x/op"], True),
    ("ghcr.io/x/op@sha256:" + "a" * 64, ["ghcr.io/x/op"], True),
    ("ghcr.io/x/op-evil", ["ghcr.io/x/op"], False),
    ("ghcr.io/x/op/sub:1", ["ghcr.io/x/op"], False),
    ("ghcr.io/x/anything:2", ["ghcr.io/x/"], True),
    ("ghcr.io/x/", ["ghcr.io/x/"], False),
    ("ghcr.io/xy/op", ["ghcr.io/x/"], False),
    ("docker.io/evil", ["ghcr.io/x/op", "registry.example/"], False),
    ("registry.example/pipeline:1", ["ghcr.io/x/op", "registry.example/"], True),
    ("anything/at:all", ["*"], True),
])
def test_image_allowlist_matches_on_a_boundary(image, prefixes, allowed):
    assert image_allowed(image, prefixes) is allowed


def test_a_disallowed_image_creates_nothing_and_fails_naming_the_image_and_the_flag(in_process, pipelines):
    backend = in_process(image_prefixes=("registry.example/pipeline",))
    body = spec(deployment={"image": "registry.example/pipeline-evil:1"})
    key = key_of(pipelines.create("evil", body))
    observed, _ = backend.provision(key, body)
    assert observed.state is ComputeState.FAILED
    assert "'registry.example/pipeline-evil:1'" in observed.message and "registry.example/pipeline" in observed.message
    assert "--pipeline-image-prefix" in observed.message and "pipelines.imagePrefixes" in observed.message
    for kind in ("statefulset", "service", "configmap", "secret", "networkpolicy"):
        assert backend.get(kind, child_name(key)) is None and backend.get(kind, f"{child_name(key)}-token") is None
    assert backend.get("pvc", f"{child_name(key)}-storage") is None
    good = spec(deployment={"image": "registry.example/pipeline:2"})
    key = key_of(pipelines.create("good", good))
    assert backend.provision(key, good)[0].state is not ComputeState.FAILED


def test_default_resources_per_key_and_pull_policy(in_process, pipelines):
    backend = in_process(image_pull_policy="Always", default_requests={"cpu": "250m", "memory": "512Mi"},
                         default_limits={"memory": "2Gi"})
    bare = key_of(pipelines.create("bare", spec()))
    backend.provision(bare, spec())
    container = backend.get("statefulset", child_name(bare))["spec"]["template"]["spec"]["containers"][0]
    assert container["imagePullPolicy"] == "Always"
    assert container["resources"] == {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}}
    body = spec(deployment={"env": FAST_PIPELINE, "resources": {"limits": {"memory": "4Gi"}}})
    limited = key_of(pipelines.create("limited", body))
    backend.provision(limited, body)
    container = backend.get("statefulset", child_name(limited))["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"] == {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "4Gi"}}


@pytest.mark.parametrize(("resources", "expected"), [
    # A default request above the spec's limit becomes the limit; a default limit below the spec's request,
    # the request (Kubernetes refuses a request above its limit).
    ({"limits": {"memory": "256Mi"}}, {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "256Mi"}}),
    ({"requests": {"memory": "8Gi"}}, {"requests": {"cpu": "250m", "memory": "8Gi"}, "limits": {"memory": "8Gi"}}),
    ({"requests": {"cpu": 2, "memory": "1Gi"}, "limits": {"cpu": "4", "memory": "1Gi"}},
     {"requests": {"cpu": "2", "memory": "1Gi"}, "limits": {"cpu": "4", "memory": "1Gi"}}),
])
def test_default_resources_never_contradict_the_spec(resources, expected):
    options = KubernetesOptions(default_image="x", default_requests={"cpu": "250m", "memory": "512Mi"},
                                default_limits={"memory": "2Gi"})
    assert container_resources(PipelineSpec.model_validate({"deployment": {"resources": resources}}),
                               options) == expected


def test_felderas_runtime_config_sizes_and_configures_the_pod():
    """runtime_config.resources (cores, MB) are the container's requests and limits where deployment.resources
    says nothing, and the claim's size and class where spec.storage says nothing; runtime_config.env and workers
    reach the process."""
    options = KubernetesOptions(default_image="x", default_requests={"cpu": "250m", "memory": "512Mi"})
    spec = PipelineSpec.model_validate({
        "runtimeConfig": {"workers": 3, "env": {"FOO": "bar", "PIPELINE_CONTROL_TOKEN": "chosen"},
                          "resources": {"cpu_cores_min": 0.5, "cpu_cores_max": 2, "memory_mb_min": 1024,
                                        "memory_mb_max": 4096, "storage_mb_max": 20000, "storage_class": "fast"}},
        "deployment": {"resources": {"limits": {"memory": "8Gi"}}, "env": [{"name": "FOO", "value": "kube"}]}})
    assert container_resources(spec, options) == {"requests": {"cpu": "500m", "memory": "1024M"},
                                                  "limits": {"cpu": "2", "memory": "8Gi"}}
    key = PipelineKey("ns", "sized", "0123456789abcdef")
    objects = build_objects(key, spec, {"sql": SQL}, RuntimeDesiredStatus.RUNNING, options)
    container = objects["statefulset"]["spec"]["template"]["spec"]["containers"][0]
    config = json.loads(objects["configmap"]["data"]["config.json"])
    assert config["workers"] == 3 and config["env"] == {"FOO": "bar", "PIPELINE_CONTROL_TOKEN": "chosen"}
    assert {"name": "TOKIO_WORKER_THREADS", "value": "3"} in container["env"]
    assert [e for e in container["env"] if e["name"] == "FOO"] == [{"name": "FOO", "value": "kube"}]
    assert [e["name"] for e in container["env"]].count("PIPELINE_CONTROL_TOKEN") == 1  # the Secret's only
    assert objects["pvc"]["spec"]["resources"]["requests"]["storage"] == "20000M"
    assert objects["pvc"]["spec"]["storageClassName"] == "fast"
    plain = build_objects(key, PipelineSpec(), {"sql": SQL}, RuntimeDesiredStatus.RUNNING, options)
    assert json.loads(plain["configmap"]["data"]["config.json"])["workers"] == 8  # Feldera's default
    assert {"name": "TOKIO_WORKER_THREADS", "value": "8"} in plain["statefulset"]["spec"]["template"]["spec"][
        "containers"][0]["env"]


def test_child_names_fit_a_statefulset_and_stay_stable():
    short = PipelineKey("ns", "orders", "0123456789abcdef")
    assert child_name(short) == "orders-01234567"  # existing installations keep their objects
    assert child_name(PipelineKey("ns", "9lives", "0123456789abcdef")) == "p-9lives-01234567"
    exact = PipelineKey("ns", "a" * 43, "0123456789abcdef")
    assert child_name(exact) == "a" * 43 + "-01234567"  # 52 characters: kept
    long = PipelineKey("ns", "x" * 253, "0123456789abcdef")
    names = {child_name(long), child_name(PipelineKey("other", "x" * 253, long.uid)),
             child_name(PipelineKey("ns", "x" * 253, "fedcba9876543210")),
             child_name(PipelineKey("ns", "x" * 252 + "y", long.uid)),
             child_name(PipelineKey("ns", "a" * 44, long.uid))}
    assert len(names) == 5
    for n in names:
        assert len(n) <= 52 and n[0].isalpha() and n[-1].isalnum() and n == n.lower()
    assert child_name(long) == child_name(PipelineKey("ns", "x" * 253, "0123456789abcdef"))
    assert len(child_name(PipelineKey("ns", "a" * 44, long.uid))) == 52


def test_a_253_character_pipeline_gets_all_its_objects(in_process, pipelines):
    backend = in_process(network_policies=True)
    long_name = "orders." + "x" * 246
    assert len(long_name) == 253
    key = key_of(pipelines.create(long_name, spec()))
    name = child_name(key)
    assert len(name) <= 52
    backend.provision(key, spec())
    for kind, child in (("statefulset", name), ("service", name), ("configmap", name), ("networkpolicy", name),
                        ("secret", f"{name}-token"), ("pvc", f"{name}-storage")):
        assert backend.get(kind, child) is not None, kind


def test_an_object_only_labelled_as_ours_is_neither_adopted_nor_deleted(in_process, pipelines, cluster, namespace):
    backend = in_process()
    key = key_of(pipelines.create("squatted", spec()))
    name = child_name(key)
    foreign = {"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": name, "namespace": namespace,
                            "labels": {"dataflow.dev/pipeline-uid": key.uid}}, "data": {"keep": "me"}}
    cluster.apply(foreign)
    observed, _ = backend.provision(key, spec())
    assert observed.state is ComputeState.FAILED
    assert f"ConfigMap {namespace}/{name} exists and does not belong to this pipeline" in observed.message
    assert "delete or rename it" in observed.message
    backend.deprovision(key)
    assert backend.get("configmap", name)["data"] == {"keep": "me"}


def test_the_rbac_rules_grant_what_the_backend_uses_and_no_events_k8s_io():
    rules = yaml.safe_load((RBAC / "clusterrole.yaml").read_text())["rules"]
    groups = {g for r in rules for g in r["apiGroups"]}
    assert "events.k8s.io" not in groups
    granted = {(g, res): set(r["verbs"]) for r in rules for g in r["apiGroups"] for res in r["resources"]}
    # The children are watched: the backend's informers, each list+watch, cover exactly these.
    watched = {(path.split("/")[2] if path.startswith("/apis/") else "", resource)
               for path, resource in WATCHED.values()}
    assert watched == {("apps", "statefulsets"), ("", "services"), ("", "configmaps"), ("", "persistentvolumeclaims"),
                       ("", "secrets"), ("networking.k8s.io", "networkpolicies"), ("", "pods")}
    # update: a child someone changed is put back.
    for group, resource in watched - {("", "pods"), ("", "persistentvolumeclaims")}:
        assert granted[(group, resource)] == {"get", "list", "watch", "create", "update", "delete"}, resource
    # patch: a retained claim is released from its deleted Pipeline and adopted by the next one of that name, and
    # its labels are put back.
    assert granted[("", "persistentvolumeclaims")] == {"get", "list", "watch", "create", "delete", "patch"}
    assert granted[("", "pods")] == {"list", "watch"}  # never written, never read one by one


def test_a_monitoring_pass_reads_nothing_from_the_api_and_a_childs_change_names_its_pipeline(in_process, pipelines):
    backend = in_process()
    key = key_of(pipelines.create("cached", spec()))
    woken: list[str] = []

    async def go(b: KubernetesBackend):
        await b.provision(key, PipelineSpec.model_validate(spec()), {"sql": SQL}, RuntimeDesiredStatus.RUNNING,
                          BootstrapPolicy.AWAIT_APPROVAL)
        after_provisioning = b.stats()
        # The next pass sees every child just created (written through, not waiting for the watch).
        first = await b.observe_compute(key)
        for _ in range(20):
            await b.observe_compute(key)
            await b.storage_exists(key)
        await b.provision(key, PipelineSpec.model_validate(spec()), {"sql": SQL}, RuntimeDesiredStatus.RUNNING,
                          BootstrapPolicy.AWAIT_APPROVAL)  # a provisioning pass again: everything is in place
        return after_provisioning, first, b.stats()
    after_provisioning, first, after_passes = backend.run(go, on_child_change=woken.append)
    assert first.state is ComputeState.PENDING and "PersistentVolumeClaim" in first.message, first
    assert after_provisioning["creates"] == 5 and after_provisioning["reads"] == 0
    assert after_passes["reads"] == after_provisioning["reads"]
    assert after_passes["creates"] == after_provisioning["creates"]
    assert {name: figures["lists"] for name, figures in after_passes["informers"].items()} == {
        "statefulsets": 1, "services": 1, "configmaps": 1, "persistentvolumeclaims": 1, "secrets": 1,
        "networkpolicies": 1, "pods": 1}
    assert after_passes["restored"] == 0
    assert key.uid in woken  # its children's ADDED events


def test_an_existing_child_the_cache_has_not_seen_is_checked_with_one_read_adopted_and_put_back(
        in_process, pipelines, cluster, namespace):
    backend = in_process()
    key = key_of(pipelines.create("adopting", spec()))
    name = child_name(key)
    # Ours (label and controller reference) but without the label the watches select: only a read finds it.
    owner = {"apiVersion": "dataflow.dev/v1alpha1", "kind": "Pipeline", "name": "adopting", "uid": key.uid,
             "controller": True}
    cluster.apply({"apiVersion": "v1", "kind": "ConfigMap", "data": {"kept": "yes"},
                   "metadata": {"name": name, "namespace": namespace, "ownerReferences": [owner],
                                "labels": {"dataflow.dev/pipeline-uid": key.uid}}})

    async def go(b: KubernetesBackend):
        body = PipelineSpec.model_validate(spec())
        await b.provision(key, body, {"sql": SQL}, RuntimeDesiredStatus.RUNNING, BootstrapPolicy.AWAIT_APPROVAL)
        first = b.stats()
        await b.provision(key, body, {"sql": SQL}, RuntimeDesiredStatus.RUNNING, BootstrapPolicy.AWAIT_APPROVAL)
        return first, b.stats(), await b.observe_compute(key)
    restored: list[str] = []
    first, second, observed = backend.run(go, on_restored=lambda k, message: restored.append(message))
    assert first["reads"] == 1  # the ConfigMap whose create was answered 409
    assert second["reads"] == first["reads"] and second["creates"] == first["creates"]  # remembered
    assert observed.state is not ComputeState.FAILED, observed
    # Adopted (it is the pipeline's), then put back as the operator writes it: the program, its labels.
    configmap = backend.get("configmap", name)
    assert set(configmap["data"]) == {"config.json", "config.yaml"}
    assert configmap["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "pipeline-operator"
    assert restored == [f"ConfigMap {name} data, metadata.labels were changed; put back"]


def test_an_api_server_outage_makes_observing_unavailable_not_a_conclusion(binaries):
    """A control plane of its own: this test stops its API server."""
    from pipeline_operator.kube.client import Unavailable
    plane = controlplane.ControlPlane(binaries).start()
    try:
        plane.kubectl("create", "namespace", "outage")
        key = PipelineKey("outage", "lonely", "0123456789abcdef")

        async def go() -> None:
            configuration = kubernetes.client.Configuration()
            kubernetes.config.load_kube_config(str(plane.kubeconfig), client_configuration=configuration)
            kube = KubeClient(configuration)
            backend = KubernetesBackend(kube, KubernetesOptions(default_image="registry.example/pipeline:1"),
                                        ["outage"])
            try:
                await backend.start()
                assert (await backend.observe_compute(key)).state is ComputeState.ABSENT
                await asyncio.to_thread(plane.stop_apiserver)
                try:
                    # Each kind's watch notices the outage on its own, when its stream ends: storage may answer
                    # from its cache a moment longer than compute does.
                    for observing in (backend.observe_compute, backend.storage_exists):
                        deadline = asyncio.get_running_loop().time() + 60
                        while True:
                            try:
                                await observing(key)
                            except Unavailable as exc:
                                assert "the Kubernetes API server is unreachable" in str(exc), exc
                                break
                            assert asyncio.get_running_loop().time() < deadline, f"{observing} never became unavailable"
                            await asyncio.sleep(0.1)
                finally:
                    await asyncio.to_thread(plane.start_apiserver)
                for _ in range(600):
                    try:
                        observed = await backend.observe_compute(key)
                        break
                    except Unavailable:
                        await asyncio.sleep(0.1)
                assert observed.state is ComputeState.ABSENT
                assert backend.stats()["reads"] == 0
            finally:
                await backend.close()
                await kube.close()
        asyncio.run(go())
    finally:
        plane.stop()
