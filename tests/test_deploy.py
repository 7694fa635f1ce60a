"""The kustomize manifests on the real API server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from .conftest import Cluster

pytestmark = pytest.mark.apiserver
DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def rendered(cluster: Cluster, path: Path) -> list[dict]:
    return list(yaml.safe_load_all(cluster.kubectl("kustomize", str(path)).stdout))


def test_kubectl_apply_k_deploy_works(crd_installed: Cluster):
    crd_installed.kubectl("apply", "-k", str(DEPLOY))
    deployment = crd_installed.get("deployment", "pipeline-operator", "pipeline-operator-system")
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["resources"]["requests"] and container["resources"]["limits"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/var/lib/pipeline-operator" in mounts
    assert "--event-store=/var/lib/pipeline-operator/events.sqlite" in container["args"]
    # The pipelines' NetworkPolicies admit the operator's pods from this namespace, by this label.
    pod_namespace = {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}
    assert {"name": "POD_NAMESPACE", "valueFrom": pod_namespace} in container["env"]
    assert spec["template"]["metadata"]["labels"]["app.kubernetes.io/name"] == "pipeline-operator"
    assert "--network-policies" in container["args"] and "--api-audience=pipeline-operator" in container["args"]
    for kind, name, ns in (("serviceaccount", "pipeline-operator", "pipeline-operator-system"),
                           ("service", "pipeline-operator", "pipeline-operator-system"),
                           ("pvc", "pipeline-operator-data", "pipeline-operator-system"),
                           ("clusterrole", "pipeline-operator", None),
                           ("clusterrolebinding", "pipeline-operator-auth-delegator", None)):
        assert crd_installed.get(kind, name, ns)["metadata"]["name"] == name


@pytest.mark.parametrize("overlay", ["single-namespace", "ephemeral-storage"])
def test_overlays_pass_server_side_dry_run(crd_installed: Cluster, overlay):
    path = DEPLOY / "overlays" / overlay
    objects = rendered(crd_installed, path)
    kinds = {o["kind"] for o in objects}
    if overlay == "single-namespace":
        assert "Role" in kinds and "ClusterRole" not in kinds
        crd_installed.kubectl("create", "namespace", "data-team", check=False)
    else:
        assert "PersistentVolumeClaim" not in kinds
        volume = next(o for o in objects if o["kind"] == "Deployment")["spec"]["template"]["spec"]["volumes"][0]
        assert volume == {"name": "data", "emptyDir": {}}
    crd_installed.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "List", "items": objects}))


def test_single_namespace_role_matches_the_base_rules():
    base = yaml.safe_load((DEPLOY / "base" / "rbac" / "role.yaml").read_text())
    overlay = yaml.safe_load((DEPLOY / "overlays" / "single-namespace" / "role.yaml").read_text())
    assert overlay["rules"] == base["rules"] and overlay["metadata"]["namespace"] == "data-team"
