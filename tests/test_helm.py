"""The Helm chart: lint, the same objects as deploy/, and install, upgrade and uninstall on a real API server."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline_operator_dev import controlplane

from .conftest import CRD_FILE, Cluster

pytestmark = pytest.mark.apiserver
REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "pipeline-operator"
NAMESPACE = "pipeline-operator-system"


@pytest.fixture(scope="module")
def fresh(binaries):
    """A control plane of its own: cluster-scoped names (ClusterRole, CRD) must not exist yet."""
    plane = controlplane.ControlPlane(binaries).start()
    try:
        yield Cluster(binaries, plane)
    finally:
        plane.stop()


def helm(cluster: Cluster, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {"KUBECONFIG": str(cluster.kubeconfig), "HOME": str(cluster.plane.workdir), "PATH": "/usr/bin:/bin"}
    res = subprocess.run([str(cluster.binaries.helm), *args], capture_output=True, text=True, env=env, timeout=300)
    if check and res.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}")
    return res


def template(cluster: Cluster, *values: str) -> list[dict]:
    out = helm(cluster, "template", "pipeline-operator", str(CHART), "-n", NAMESPACE, *values).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_key(objects: list[dict]) -> dict[tuple[str, str], dict]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def test_chart_files_are_the_repository_sources():
    assert (CHART / "files" / "pipelines.dataflow.dev.yaml").read_text() == CRD_FILE.read_text()
    assert (CHART / "files" / "clusterrole.yaml").read_text() == \
        (REPO / "deploy" / "base" / "rbac" / "clusterrole.yaml").read_text()


def test_helm_lint_strict_passes(fresh):
    res = helm(fresh, "lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in res.stdout


def test_a_typo_in_values_fails(fresh):
    res = helm(fresh, "template", "x", str(CHART), "--set", "eventStor.size=1Gi", check=False)
    assert res.returncode != 0 and "eventStor" in res.stderr


def test_chart_and_kustomize_create_equivalent_objects(fresh):
    chart = by_key(template(fresh))
    kustomized = by_key([o for o in yaml.safe_load_all(fresh.kubectl("kustomize", str(REPO / "deploy")).stdout)
                         if o and o["kind"] != "Namespace"])
    assert set(chart) == set(kustomized)
    for key in (("ClusterRole", "pipeline-operator"),):
        assert chart[key]["rules"] == kustomized[key]["rules"]
    for key in (("ClusterRoleBinding", "pipeline-operator"),
                ("ClusterRoleBinding", "pipeline-operator-auth-delegator")):
        assert chart[key]["roleRef"] == kustomized[key]["roleRef"]
        assert chart[key]["subjects"] == kustomized[key]["subjects"]
    pod_chart = chart[("Deployment", "pipeline-operator")]["spec"]["template"]["spec"]
    pod_kustomize = kustomized[("Deployment", "pipeline-operator")]["spec"]["template"]["spec"]
    container_chart = dict(pod_chart["containers"][0])
    container_chart.pop("imagePullPolicy")
    assert {**pod_chart, "containers": [container_chart]} == pod_kustomize
    assert chart[("Deployment", "pipeline-operator")]["spec"]["strategy"] == {"type": "Recreate"}
    crd = chart[("CustomResourceDefinition", "pipelines.dataflow.dev")]
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert crd["spec"] == kustomized[("CustomResourceDefinition", "pipelines.dataflow.dev")]["spec"]
    for obj in chart.values():
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "Helm" and labels["app.kubernetes.io/name"]


def test_single_namespace_values_make_roles(fresh):
    objects = by_key(template(fresh, "--set", "watch.allNamespaces=false", "--set", "watch.namespaces={team-a}"))
    assert ("Role", "pipeline-operator") in objects and ("ClusterRole", "pipeline-operator") not in objects
    args = objects[("Deployment", "pipeline-operator")]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--all-namespaces" not in args


def test_install_upgrade_uninstall_and_server_side_dry_run(fresh):
    rendered = helm(fresh, "template", "pipeline-operator", str(CHART), "-n", NAMESPACE).stdout
    fresh.kubectl("create", "namespace", NAMESPACE)
    fresh.kubectl("apply", "--dry-run=server", "-f", "-", input=rendered)
    helm(fresh, "install", "pipeline-operator", str(CHART), "-n", NAMESPACE)
    assert fresh.get("deployment", "pipeline-operator", NAMESPACE)["spec"]["replicas"] == 1
    controlplane.wait_established(fresh.kubectl)
    helm(fresh, "upgrade", "pipeline-operator", str(CHART), "-n", NAMESPACE, "--set", "eventStore.persistent=false")
    volumes = fresh.get("deployment", "pipeline-operator", NAMESPACE)["spec"]["template"]["spec"]["volumes"]
    assert volumes[0] == {"name": "data", "emptyDir": {}}
    notes = helm(fresh, "status", "pipeline-operator", "-n", NAMESPACE).stdout
    assert "/v0/pipelines/orders/events" in notes
    helm(fresh, "uninstall", "pipeline-operator", "-n", NAMESPACE)
    assert fresh.kubectl("get", "deployment", "pipeline-operator", "-n", NAMESPACE, check=False).returncode != 0
    assert fresh.get("crd", "pipelines.dataflow.dev")["metadata"]["name"]  # kept
