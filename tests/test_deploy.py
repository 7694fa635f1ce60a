"""The kustomize manifests on the real API server."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
import yaml

from pipeline_operator.settings import OperatorSettings, is_database_url
from pipeline_operator_dev import builds, controlplane

from .conftest import Cluster

pytestmark = pytest.mark.apiserver
DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
UNPUBLISHED = "ghcr.io/pipeline-operator/pipeline-operator:0.1.0"
LOCAL_IMAGE = "localhost/pipeline-operator:0.1.0"  # what `make image` builds


def rendered(cluster: Cluster, path: Path) -> list[dict]:
    return list(yaml.safe_load_all(cluster.kubectl("kustomize", str(path)).stdout))


def kustomize(binaries: builds.Binaries, path: Path) -> list[dict]:
    """``kubectl kustomize PATH`` with the real kubectl (its built-in kustomize)."""
    out = controlplane.run_kubectl(binaries.kubectl, None, "kustomize", str(path)).stdout
    return [o for o in yaml.safe_load_all(out) if o]


def images(objects: list[dict]) -> tuple[str, str]:
    """The operator container's image and the pipelines' default image (PIPELINE_OPERATOR_PIPELINE_IMAGE)."""
    deployment = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "pipeline-operator")
    container = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "operator")
    pipeline_image = next(e["value"] for e in container["env"] if e["name"] == "PIPELINE_OPERATOR_PIPELINE_IMAGE")
    return container["image"], pipeline_image


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
                           ("clusterrolebinding", "pipeline-operator-auth-delegator-pipeline-operator-system", None)):
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


def test_kubectl_apply_k_local_image_overlay_runs_the_built_image(crd_installed: Cluster):
    """The README's `kubectl apply -k deploy/overlays/local-image`: the operator runs the image `make image`
    builds, and so do pipelines whose spec gives no image; everything else is the base's."""
    crd_installed.kubectl("apply", "-k", str(DEPLOY / "overlays" / "local-image"))
    deployment = crd_installed.get("deployment", "pipeline-operator", "pipeline-operator-system")
    assert images([deployment]) == (LOCAL_IMAGE, LOCAL_IMAGE)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert "--all-namespaces" in container["args"] and "imagePullPolicy" in container  # defaulted by the server
    assert container["imagePullPolicy"] == "IfNotPresent"  # a loaded image is used, never pulled
    assert crd_installed.get("clusterrole", "pipeline-operator")["metadata"]["name"] == "pipeline-operator"


def test_the_base_names_one_image_for_the_operator_and_its_pipelines(binaries):
    """As applied without an overlay: the placeholder, for both (the base keeps them equal)."""
    assert images(kustomize(binaries, DEPLOY)) == (UNPUBLISHED, UNPUBLISHED)
    for overlay in ("single-namespace", "ephemeral-storage", "high-availability"):
        assert images(kustomize(binaries, DEPLOY / "overlays" / overlay)) == (UNPUBLISHED, UNPUBLISHED)


def test_an_images_entry_of_any_overlay_also_sets_the_pipeline_image(binaries, tmp_path):
    """kustomize's `images:` (so `kustomize edit set image`, Argo CD's and Flux's image overrides) rewrites
    the operator's image and PIPELINE_OPERATOR_PIPELINE_IMAGE together, in overlays of overlays too: the
    local-image overlay, deploy/README.md's overlay of your own, and one over single-namespace with a digest."""
    local = kustomize(binaries, DEPLOY / "overlays" / "local-image")
    assert images(local) == (LOCAL_IMAGE, LOCAL_IMAGE)
    base = kustomize(binaries, DEPLOY / "base")
    assert [(o["kind"], o["metadata"]["name"]) for o in local] == [(o["kind"], o["metadata"]["name"]) for o in base]

    # deploy/README.md's example, as written, in a folder next to deploy/.
    readme = (DEPLOY / "README.md").read_text()
    blocks = [textwrap.dedent(b) for b in re.findall(r"^ *```yaml\n(.*?)^ *```", readme, re.M | re.S)]
    assert len(blocks) == 1, blocks
    example = yaml.safe_load(blocks[0])
    assert example["resources"] == ["../deploy/base"]
    (tmp_path / "deploy").symlink_to(DEPLOY)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "kustomization.yaml").write_text(blocks[0])
    pushed = "registry.example/team/pipeline-operator:0.1.0"
    assert images(kustomize(binaries, tmp_path / "mine")) == (pushed, pushed)

    sha = "sha256:" + "0123456789abcdef" * 4
    digest = f"registry.example/team/pipeline-operator@{sha}"
    (tmp_path / "pinned").mkdir()
    (tmp_path / "pinned" / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": ["../deploy/overlays/single-namespace"],
        "images": [{"name": "ghcr.io/pipeline-operator/pipeline-operator",
                    "newName": "registry.example/team/pipeline-operator", "digest": sha}],
    }))
    objects = kustomize(binaries, tmp_path / "pinned")
    assert images(objects) == (digest, digest)
    assert "Role" in {o["kind"] for o in objects}  # the overlay below it still applies


HA = DEPLOY / "overlays" / "high-availability"
OPERATOR_LABELS = {"app.kubernetes.io/name": "pipeline-operator", "app.kubernetes.io/component": "operator"}


def operator_container(deployment: dict) -> dict:
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "operator")


def test_high_availability_overlay_runs_two_replicas_on_postgresql(crd_installed: Cluster):
    """Two replicas rolled one at a time, a budget, preferred anti-affinity, the event store's URL from the
    ConfigMap and its password from the Secret the user creates, and no ReadWriteOnce claim; the server takes it."""
    objects = rendered(crd_installed, HA)
    by_kind = {o["kind"]: o for o in objects}
    assert "PersistentVolumeClaim" not in by_kind
    deployment = by_kind["Deployment"]
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    pod = spec["template"]["spec"]
    assert OPERATOR_LABELS.items() <= spec["template"]["metadata"]["labels"].items()
    [term] = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"] == {"topologyKey": "kubernetes.io/hostname",
                                       "labelSelector": {"matchLabels": OPERATOR_LABELS}}
    budget = by_kind["PodDisruptionBudget"]
    assert budget["apiVersion"] == "policy/v1" and budget["metadata"]["namespace"] == "pipeline-operator-system"
    assert budget["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": OPERATOR_LABELS}}
    assert pod["volumes"][0] == {"name": "data", "emptyDir": {}}
    assert not [v for v in pod["volumes"] if "persistentVolumeClaim" in v]

    container = operator_container(deployment)
    assert "--event-store=$(EVENT_STORE_URL)" in container["args"] and "--leader-election" in container["args"]
    assert not [a for a in container["args"] if "sqlite" in a]
    env = {e["name"]: e for e in container["env"]}
    config_map = by_kind["ConfigMap"]
    assert env["EVENT_STORE_URL"]["valueFrom"] == {"configMapKeyRef": {"name": config_map["metadata"]["name"],
                                                                       "key": "url"}}
    assert config_map["metadata"]["name"].startswith("pipeline-operator-event-store-")  # a new URL rolls the pods
    assert config_map["metadata"]["namespace"] == "pipeline-operator-system"
    # The URL as shipped is one the operator takes as PostgreSQL (and it holds no password).
    settings = OperatorSettings(event_store=config_map["data"]["url"])
    assert is_database_url(settings.event_store)
    assert env["PGPASSWORD"]["valueFrom"] == {"secretKeyRef": {"name": "pipeline-operator-event-store",
                                                               "key": "password"}}
    assert "Secret" not in by_kind  # the password is never in the repository: the user creates the Secret

    crd_installed.kubectl("create", "namespace", "pipeline-operator-system", check=False)
    crd_installed.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "List", "items": objects}))


def test_an_overlay_on_high_availability_sets_the_url_by_merging_its_config_map(binaries, tmp_path):
    """The overlay's and deploy/README.md's advice: a configMapGenerator entry of the same name with
    `behavior: merge` sets the URL in an overlay of your own, and the Deployment follows the new ConfigMap."""
    (tmp_path / "deploy").symlink_to(DEPLOY)
    (tmp_path / "mine").mkdir()
    url = "postgresql://operator@events.example:5432/events?sslmode=verify-full"
    (tmp_path / "mine" / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": ["../deploy/overlays/high-availability"],
        "configMapGenerator": [{"name": "pipeline-operator-event-store", "behavior": "merge",
                                "literals": [f"url={url}"]}],
    }))
    objects = kustomize(binaries, tmp_path / "mine")
    [config_map] = [o for o in objects if o["kind"] == "ConfigMap"]
    assert config_map["data"] == {"url": url}
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    env = {e["name"]: e for e in operator_container(deployment)["env"]}
    assert env["EVENT_STORE_URL"]["valueFrom"]["configMapKeyRef"]["name"] == config_map["metadata"]["name"]
    shipped = next(o for o in kustomize(binaries, HA) if o["kind"] == "ConfigMap")
    assert shipped["metadata"]["name"] != config_map["metadata"]["name"]


def test_the_base_runs_one_replica_with_its_sqlite_claim(binaries):
    """The base has no PostgreSQL: one replica, Recreate (its claim is ReadWriteOnce), no budget."""
    objects = kustomize(binaries, DEPLOY)
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    claim = next(o for o in objects if o["kind"] == "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert "PodDisruptionBudget" not in {o["kind"] for o in objects}
