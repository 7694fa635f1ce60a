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
# The default image.repository is a placeholder that no registry serves: every render names an image.
REPOSITORY = "localhost/pipeline-operator"
IMAGE = ("--set", f"image.repository={REPOSITORY}")
UNPUBLISHED = "ghcr.io/pipeline-operator/pipeline-operator"


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
    out = helm(cluster, "template", "pipeline-operator", str(CHART), "-n", NAMESPACE, *IMAGE, *values).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_key(objects: list[dict]) -> dict[tuple[str, str], dict]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def test_chart_files_are_the_repository_sources():
    assert (CHART / "files" / "pipelines.dataflow.dev.yaml").read_text() == CRD_FILE.read_text()
    assert (CHART / "files" / "clusterrole.yaml").read_text() == \
        (REPO / "deploy" / "base" / "rbac" / "clusterrole.yaml").read_text()


def test_helm_lint_strict_passes(fresh):
    res = helm(fresh, "lint", "--strict", str(CHART), *IMAGE)
    assert "0 chart(s) failed" in res.stdout


def test_a_typo_in_values_fails(fresh):
    res = helm(fresh, "template", "x", str(CHART), *IMAGE, "--set", "eventStor.size=1Gi", check=False)
    assert res.returncode != 0 and "eventStor" in res.stderr


def test_chart_and_kustomize_create_equivalent_objects(fresh):
    """deploy/ watches every namespace; the chart does so with watch.allNamespaces=true. Both with the image
    `make image` builds: the chart's image.repository, deploy/overlays/local-image's `images:`."""
    chart = by_key(template(fresh, "--set", "watch.allNamespaces=true"))
    local_image = REPO / "deploy" / "overlays" / "local-image"
    kustomized = by_key([o for o in yaml.safe_load_all(fresh.kubectl("kustomize", str(local_image)).stdout)
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
    assert container_chart["image"] == f"{REPOSITORY}:0.1.0"
    assert chart[("Deployment", "pipeline-operator")]["spec"]["strategy"] == {"type": "Recreate"}
    crd = chart[("CustomResourceDefinition", "pipelines.dataflow.dev")]
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert crd["spec"] == kustomized[("CustomResourceDefinition", "pipelines.dataflow.dev")]["spec"]
    for obj in chart.values():
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "Helm" and labels["app.kubernetes.io/name"]


IMAGE_MESSAGE = (f"image.repository is {UNPUBLISHED}, which no registry serves yet: build the image with "
                 "`make image`, load or push it (see README, Installing), and set image.repository (and image.tag)")


def env_value(c: dict, name: str) -> str:
    return next(e["value"] for e in c["env"] if e["name"] == name)


def test_the_unpublished_default_image_is_refused_with_what_to_do(fresh):
    """The default image.repository names an image no registry serves: template, install and lint's render
    fail with a message saying how to get an image and which values to set."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert yaml.safe_load((CHART / "values.yaml").read_text())["image"] == \
        {"repository": UNPUBLISHED, "tag": "", "pullPolicy": "IfNotPresent"}
    for command in (["template", "x", str(CHART)], ["install", "x", str(CHART), "-n", NAMESPACE, "--dry-run=client"],
                    ["template", "x", str(CHART), "--set", f"image.repository={UNPUBLISHED}",
                     "--set", "image.tag=0.1.0"]):
        res = helm(fresh, *command, check=False)
        assert res.returncode != 0 and IMAGE_MESSAGE in res.stderr, (command, res.stderr)
        assert "--set image.repository=localhost/pipeline-operator" in res.stderr
        assert f"kind load image-archive dist/image/pipeline-operator-{chart['appVersion']}.tar" in res.stderr
        assert not res.stdout.strip() or "kind: Deployment" not in res.stdout

    # An image repository given: the tag defaults to the chart's appVersion, and pipelines whose spec gives
    # no image run the operator's image (the allowlist's default is then that repository).
    c = container(by_key(template(fresh)))
    assert chart["appVersion"] == "0.1.0" and c["image"] == f"{REPOSITORY}:{chart['appVersion']}"
    assert env_value(c, "PIPELINE_OPERATOR_PIPELINE_IMAGE") == f"{REPOSITORY}:0.1.0"
    assert not any(a.startswith(("--pipeline-image=", "--pipeline-image-prefix=")) for a in c["args"])
    c = container(by_key(template(fresh, "--set", "image.repository=registry.example/team/pipeline-operator",
                                  "--set", "image.tag=0.2.0")))
    assert c["image"] == env_value(c, "PIPELINE_OPERATOR_PIPELINE_IMAGE") == \
        "registry.example/team/pipeline-operator:0.2.0"
    c = container(by_key(template(fresh, "--set", "pipelineImage=registry.example/pipelines:7")))
    assert c["image"] == f"{REPOSITORY}:0.1.0"
    assert env_value(c, "PIPELINE_OPERATOR_PIPELINE_IMAGE") == "registry.example/pipelines:7"
    notes = helm(fresh, "install", "x", str(CHART), "-n", NAMESPACE, *IMAGE, "--dry-run=client").stdout
    assert f"Image: {REPOSITORY}:0.1.0 (pull policy IfNotPresent)" in notes


def test_the_pipeline_image_setting_is_the_one_the_operator_reads():
    """The chart and deploy/ pass the pipelines' default image as this environment variable."""
    import os
    import sys
    code = ("from pipeline_operator.settings import OperatorSettings\n"
            "s = OperatorSettings()\nprint(s.pipeline_image, s.image_prefixes())\n")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_OPERATOR_")},
           "PIPELINE_OPERATOR_PIPELINE_IMAGE": f"{REPOSITORY}:0.1.0"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.split() == [f"{REPOSITORY}:0.1.0", f"['{REPOSITORY}']"]


def test_single_namespace_values_make_roles(fresh):
    objects = by_key(template(fresh, "--set", "watch.allNamespaces=false", "--set", "watch.namespaces={team-a}"))
    assert ("Role", "pipeline-operator") in objects and ("ClusterRole", "pipeline-operator") not in objects
    args = objects[("Deployment", "pipeline-operator")]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--all-namespaces" not in args


def container(objects: dict) -> dict:
    return objects[("Deployment", "pipeline-operator")]["spec"]["template"]["spec"]["containers"][0]


def test_per_namespace_roles_are_the_default_with_the_release_namespace(fresh):
    objects = by_key(template(fresh))
    role = objects[("Role", "pipeline-operator")]
    assert role["metadata"]["namespace"] == NAMESPACE and ("ClusterRole", "pipeline-operator") not in objects
    assert objects[("RoleBinding", "pipeline-operator")]["metadata"]["namespace"] == NAMESPACE
    args = container(objects)["args"]
    assert f"--namespace={NAMESPACE}" in args and "--all-namespaces" not in args
    notes = helm(fresh, "install", "x", str(CHART), "-n", NAMESPACE, *IMAGE, "--dry-run=client").stdout
    assert f"watching {NAMESPACE}." in notes and "--audience pipeline-operator" in notes


def test_unauthenticated_api_is_refused_unless_exposed_on_purpose(fresh):
    res = helm(fresh, "template", "x", str(CHART), *IMAGE, "--set", "api.auth=none", check=False)
    assert res.returncode != 0 and "api.exposeUnauthenticated=true" in res.stderr and "api.auth" in res.stderr
    objects = by_key(template(fresh, "--set", "api.auth=none", "--set", "api.exposeUnauthenticated=true"))
    assert "--api-auth=none" in container(objects)["args"]


def test_operator_pod_namespace_labels_and_pipeline_flags(fresh):
    objects = by_key(template(fresh, "--set", "pipelines.imagePrefixes={ghcr.io/acme/,registry.example/p}",
                              "--set", "pipelines.imagePullPolicy=Always",
                              "--set", "pipelines.resources.limits.cpu=2", "--set", "pipelines.networkPolicies=false",
                              "--set", "api.audience=acme-pipelines"))
    c = container(objects)
    assert {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}} in c["env"]
    labels = objects[("Deployment", "pipeline-operator")]["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "pipeline-operator"  # the default --operator-pod-labels
    for flag in ("--pipeline-image-prefix=ghcr.io/acme/", "--pipeline-image-prefix=registry.example/p",
                 "--pipeline-image-pull-policy=Always", "--pipeline-cpu-request=250m",
                 "--pipeline-memory-request=512Mi", "--pipeline-cpu-limit=2", "--pipeline-memory-limit=2Gi",
                 "--no-network-policies", "--api-audience=acme-pipelines"):
        assert flag in c["args"], flag
    defaults = container(by_key(template(fresh)))["args"]
    assert "--network-policies" in defaults and "--api-audience=pipeline-operator" in defaults


def test_leader_election_and_its_lease_role_in_the_release_namespace(fresh):
    objects = by_key(template(fresh))
    c = container(objects)
    assert "--leader-election" in c["args"]
    assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in c["env"]
    role = objects[("Role", "pipeline-operator-leader-election")]
    assert role["metadata"]["namespace"] == NAMESPACE
    assert role["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                              "verbs": ["get", "create", "update"]}]
    binding = objects[("RoleBinding", "pipeline-operator-leader-election")]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "pipeline-operator", "namespace": NAMESPACE}]


def test_postgresql_event_store_with_the_password_from_a_secret(fresh):
    url = "postgresql://pipeline_operator@postgres.db:5432/events"
    objects = by_key(template(fresh, "--set", f"eventStore.postgresql.url={url}",
                              "--set", "eventStore.postgresql.passwordSecret.name=events-db"))
    c = container(objects)
    assert f"--event-store={url}" in c["args"] and not any("secret" in a.lower() for a in c["args"])
    assert {"name": "PGPASSWORD", "valueFrom": {"secretKeyRef": {"name": "events-db", "key": "password"}}} in c["env"]
    assert ("PersistentVolumeClaim", "pipeline-operator-data") not in objects  # no SQLite file to keep
    volumes = objects[("Deployment", "pipeline-operator")]["spec"]["template"]["spec"]["volumes"]
    assert {"name": "data", "emptyDir": {}} in volumes
    sqlite = container(by_key(template(fresh)))
    assert "--event-store=/var/lib/pipeline-operator/events.sqlite" in sqlite["args"]
    assert not [e for e in sqlite["env"] if e["name"] == "PGPASSWORD"]
    # A password in the URL would be on the command line: the values schema refuses it.
    res = helm(fresh, "template", "x", str(CHART), *IMAGE, "--set",
               "eventStore.postgresql.url=postgresql://po:hunter2@db/events", check=False)
    assert res.returncode != 0 and "/eventStore/postgresql/url" in res.stderr


def test_chart_flags_are_accepted_by_the_operator(fresh, tmp_path):
    """Every flag the chart renders (all values set) parses as an operator setting."""
    import sys
    args = container(by_key(template(
        fresh, "--set", "pipelines.imagePrefixes={ghcr.io/acme/}", "--set", "api.tls.secretName=tls",
        "--set", "pipelines.networkPolicies=false")))["args"]
    code = ("import sys\nfrom pipeline_operator import cli\n"
            "cli.main(['run', '--help'], prog_name='pipeline-operator', standalone_mode=False)\n")
    help_text = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for arg in args[1:]:
        flag = arg.split("=", 1)[0]
        assert flag in help_text, flag


def test_tls_from_a_secret(fresh):
    c = container(by_key(template(fresh, "--set", "api.tls.secretName=api-cert")))
    assert "--api-tls-cert=/etc/pipeline-operator/tls/tls.crt" in c["args"]
    assert "--api-tls-key=/etc/pipeline-operator/tls/tls.key" in c["args"]
    assert {"name": "tls", "mountPath": "/etc/pipeline-operator/tls", "readOnly": True} in c["volumeMounts"]
    assert c["readinessProbe"]["httpGet"]["scheme"] == "HTTPS" and c["livenessProbe"]["httpGet"]["scheme"] == "HTTPS"
    objects = by_key(template(fresh, "--set", "api.tls.secretName=api-cert"))
    volumes = objects[("Deployment", "pipeline-operator")]["spec"]["template"]["spec"]["volumes"]
    assert {"name": "tls", "secret": {"secretName": "api-cert"}} in volumes
    assert not any(kind == "Certificate" for kind, _ in objects)
    plain = container(by_key(template(fresh)))
    assert not any(a.startswith("--api-tls") for a in plain["args"]) and "scheme" not in plain["readinessProbe"]


def test_cert_manager_certificate_only_where_cert_manager_is_served(fresh):
    values = ["--set", "api.tls.certManager.enabled=true", "--set", "api.tls.certManager.issuerRef.name=ca",
              "--set", "api.tls.certManager.issuerRef.kind=ClusterIssuer"]
    with_cm = by_key(template(fresh, *values, "--api-versions", "cert-manager.io/v1"))
    cert = with_cm[("Certificate", "pipeline-operator")]
    assert cert["spec"]["secretName"] == "pipeline-operator-tls"
    assert cert["spec"]["issuerRef"] == {"name": "ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    assert f"pipeline-operator.{NAMESPACE}.svc" in cert["spec"]["dnsNames"]
    assert "--api-tls-cert=/etc/pipeline-operator/tls/tls.crt" in container(with_cm)["args"]
    without = by_key(template(fresh, *values))
    assert ("Certificate", "pipeline-operator") not in without
    res = helm(fresh, "template", "x", str(CHART), *IMAGE, "--set", "api.tls.certManager.enabled=true",
               check=False)
    assert res.returncode != 0 and "api.tls.certManager.issuerRef.name" in res.stderr


def test_install_upgrade_uninstall_and_server_side_dry_run(fresh):
    rendered = helm(fresh, "template", "pipeline-operator", str(CHART), "-n", NAMESPACE, *IMAGE).stdout
    fresh.kubectl("create", "namespace", NAMESPACE)
    fresh.kubectl("apply", "--dry-run=server", "-f", "-", input=rendered)
    helm(fresh, "install", "pipeline-operator", str(CHART), "-n", NAMESPACE, *IMAGE)
    assert fresh.get("deployment", "pipeline-operator", NAMESPACE)["spec"]["replicas"] == 1
    controlplane.wait_established(fresh.kubectl)
    helm(fresh, "upgrade", "pipeline-operator", str(CHART), "-n", NAMESPACE, *IMAGE,
         "--set", "eventStore.persistent=false")
    volumes = fresh.get("deployment", "pipeline-operator", NAMESPACE)["spec"]["template"]["spec"]["volumes"]
    assert volumes[0] == {"name": "data", "emptyDir": {}}
    notes = helm(fresh, "status", "pipeline-operator", "-n", NAMESPACE).stdout
    assert "/v0/pipelines/orders/events" in notes
    helm(fresh, "uninstall", "pipeline-operator", "-n", NAMESPACE)
    assert fresh.kubectl("get", "deployment", "pipeline-operator", "-n", NAMESPACE, check=False).returncode != 0
    assert fresh.get("crd", "pipelines.dataflow.dev")["metadata"]["name"]  # kept
