"""The Helm chart: lint, the same objects as deploy/, and install, upgrade and uninstall on a real API server."""

from __future__ import annotations

import json
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


def without_metrics_reader(chart: dict) -> None:
    """Take out of the chart's objects the ClusterRole that may read /metrics, which deploy/ keeps with the
    monitoring objects (deploy/monitoring/metrics-reader.yaml): the same rules, named per release namespace."""
    reader = chart.pop(("ClusterRole", f"pipeline-operator-metrics-reader-{NAMESPACE}"))
    assert reader["rules"] == yaml.safe_load((REPO / "deploy" / "monitoring" / "metrics-reader.yaml").read_text())[
        "rules"]


def test_chart_and_kustomize_create_equivalent_objects(fresh):
    """deploy/ watches every namespace; the chart does so with watch.allNamespaces=true. Both with the image
    `make image` builds: the chart's image.repository, deploy/overlays/local-image's `images:`."""
    chart = by_key(template(fresh, "--set", "watch.allNamespaces=true"))
    local_image = REPO / "deploy" / "overlays" / "local-image"
    kustomized = by_key([o for o in yaml.safe_load_all(fresh.kubectl("kustomize", str(local_image)).stdout)
                         if o and o["kind"] != "Namespace"])
    without_metrics_reader(chart)
    assert set(chart) == set(kustomized)
    for key in (("ClusterRole", "pipeline-operator"),):
        assert chart[key]["rules"] == kustomized[key]["rules"]
    for key in (("ClusterRoleBinding", "pipeline-operator"),
                ("ClusterRoleBinding", "pipeline-operator-auth-delegator-pipeline-operator-system")):
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


POSTGRESQL = ("--set", "eventStore.postgresql.url=postgresql://pipeline_operator@postgres.db:5432/events",
              "--set", "eventStore.postgresql.passwordSecret.name=pipeline-operator-event-store")
ROLLING = {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
REPLICAS_MESSAGE = ("needs the PostgreSQL event store: with SQLite (the default) the monitor events are a file in one "
                    "pod's volume, which other replicas can neither share nor serve; set eventStore.postgresql.url "
                    "(and eventStore.postgresql.passwordSecret.name), or replicaCount=1")


def deployment(objects: dict) -> dict:
    return objects[("Deployment", "pipeline-operator")]


def selects_the_operator(selector: dict, objects: dict) -> bool:
    """Whether a label selector matches the operator's pods (a budget or an anti-affinity term that matches
    nothing is silently ignored by Kubernetes)."""
    labels = deployment(objects)["spec"]["template"]["metadata"]["labels"]
    return bool(selector["matchLabels"]) and selector["matchLabels"].items() <= labels.items()


def test_one_replica_with_sqlite_by_default(fresh):
    """SQLite is one pod's file on a ReadWriteOnce claim: one replica, replaced by Recreate, and no budget
    (a budget for one replica would block every drain)."""
    assert yaml.safe_load((CHART / "values.yaml").read_text())["replicaCount"] is None
    objects = by_key(template(fresh))
    spec = deployment(objects)["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    assert "affinity" not in spec["template"]["spec"] and "topologySpreadConstraints" not in spec["template"]["spec"]
    assert not [key for key in objects if key[0] == "PodDisruptionBudget"]
    claim = objects[("PersistentVolumeClaim", "pipeline-operator-data")]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "pipeline-operator-data"}} in \
        spec["template"]["spec"]["volumes"]
    # One replica with PostgreSQL, asked for: Recreate and no budget either.
    one = by_key(template(fresh, *POSTGRESQL, "--set", "replicaCount=1"))
    assert deployment(one)["spec"]["replicas"] == 1 and deployment(one)["spec"]["strategy"] == {"type": "Recreate"}
    assert not [key for key in one if key[0] in ("PodDisruptionBudget", "PersistentVolumeClaim")]


def test_postgresql_runs_two_replicas_rolling_with_a_budget_and_anti_affinity(fresh):
    objects = by_key(template(fresh, *POSTGRESQL))
    spec = deployment(objects)["spec"]
    assert spec["replicas"] == 2 and spec["strategy"] == ROLLING
    assert "--leader-election" in container(objects)["args"]
    budget = objects[("PodDisruptionBudget", "pipeline-operator")]
    assert budget["apiVersion"] == "policy/v1" and budget["metadata"]["namespace"] == NAMESPACE
    assert budget["spec"]["maxUnavailable"] == 1 and set(budget["spec"]) == {"maxUnavailable", "selector"}
    assert selects_the_operator(budget["spec"]["selector"], objects)
    [term] = spec["template"]["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["weight"] == 100 and term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert selects_the_operator(term["podAffinityTerm"]["labelSelector"], objects)
    # No ReadWriteOnce claim for the replicas to fight over.
    assert not [key for key in objects if key[0] == "PersistentVolumeClaim"]
    assert not [v for v in spec["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v]


def test_replica_count_is_taken_with_postgresql(fresh, tmp_path):
    """From --set (an integer) and from a values file (YAML numbers reach templates as floats)."""
    assert deployment(by_key(template(fresh, *POSTGRESQL, "--set", "replicaCount=3")))["spec"]["replicas"] == 3
    values = tmp_path / "values.yaml"
    values.write_text("replicaCount: 3\n")
    objects = by_key(template(fresh, *POSTGRESQL, "-f", str(values)))
    assert deployment(objects)["spec"]["replicas"] == 3 and deployment(objects)["spec"]["strategy"] == ROLLING
    assert objects[("PodDisruptionBudget", "pipeline-operator")]["spec"]["maxUnavailable"] == 1


def test_more_than_one_replica_without_postgresql_is_refused_with_what_to_set(fresh):
    commands = (["template", "x", str(CHART)], ["install", "x", str(CHART), "-n", NAMESPACE, "--dry-run=client"])
    for values in (["--set", "replicaCount=2"], ["--set", "replicaCount=2", "--set", "eventStore.persistent=false"]):
        for command in commands:
            res = helm(fresh, *command, *IMAGE, *values, check=False)
            assert res.returncode != 0 and f"replicaCount=2 {REPLICAS_MESSAGE}" in res.stderr, (command, res.stderr)
    # The local backend's pipelines are processes in the leader's pod: one replica only, even with PostgreSQL.
    local = by_key(template(fresh, *POSTGRESQL, "--set", "backend=local"))
    assert deployment(local)["spec"]["replicas"] == 1 and ("PodDisruptionBudget", "pipeline-operator") not in local
    res = helm(fresh, "template", "x", str(CHART), *IMAGE, *POSTGRESQL, "--set", "backend=local",
               "--set", "replicaCount=2", check=False)
    assert res.returncode != 0 and "replicaCount=2 needs backend=kubernetes" in res.stderr, res.stderr
    for value, path in (("replicaCount=0", "/replicaCount"), ("replicaCount=two", "/replicaCount"),
                        ("podAntiAffinity=sometimes", "/podAntiAffinity")):
        res = helm(fresh, "template", "x", str(CHART), *IMAGE, *POSTGRESQL, "--set", value, check=False)
        assert res.returncode != 0 and path in res.stderr, (value, res.stderr)


def test_pod_anti_affinity_hard_none_or_replaced_and_topology_spread(fresh):
    hard = by_key(template(fresh, *POSTGRESQL, "--set", "podAntiAffinity=hard"))
    [term] = deployment(hard)["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname" and selects_the_operator(term["labelSelector"], hard)
    none = deployment(by_key(template(fresh, *POSTGRESQL, "--set", "podAntiAffinity=none")))
    assert "affinity" not in none["spec"]["template"]["spec"]
    node_affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["operators"]}]}]}}}
    spread = [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway",
               "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "pipeline-operator"}}}]
    pod = deployment(by_key(template(fresh, *POSTGRESQL, "--set", "podAntiAffinity=hard",
                                     "--set-json", f"affinity={json.dumps(node_affinity)}",
                                     "--set-json", f"topologySpreadConstraints={json.dumps(spread)}")))
    assert pod["spec"]["template"]["spec"]["affinity"] == node_affinity  # replaces the anti-affinity entirely
    assert pod["spec"]["template"]["spec"]["topologySpreadConstraints"] == spread
    without_budget = by_key(template(fresh, *POSTGRESQL, "--set", "podDisruptionBudget.enabled=false"))
    assert ("PodDisruptionBudget", "pipeline-operator") not in without_budget
    assert deployment(without_budget)["spec"]["replicas"] == 2


def test_chart_and_the_high_availability_overlay_agree(fresh):
    """deploy/overlays/high-availability is the chart with PostgreSQL, watching every namespace: the same objects
    (the overlay's ConfigMap holds the URL), replicas, strategy, affinity, budget, volumes and password."""
    chart = by_key(template(fresh, "--set", "watch.allNamespaces=true", *POSTGRESQL))
    overlay = REPO / "deploy" / "overlays" / "high-availability"
    kustomized = by_key([o for o in yaml.safe_load_all(fresh.kubectl("kustomize", str(overlay)).stdout)
                         if o and o["kind"] not in ("Namespace", "ConfigMap")])
    without_metrics_reader(chart)
    assert set(chart) == set(kustomized)
    spec_chart, spec_kustomize = deployment(chart)["spec"], deployment(kustomized)["spec"]
    assert spec_chart["replicas"] == spec_kustomize["replicas"] == 2
    assert spec_chart["strategy"] == spec_kustomize["strategy"] == ROLLING
    pod_chart, pod_kustomize = spec_chart["template"]["spec"], spec_kustomize["template"]["spec"]
    assert pod_chart["affinity"] == pod_kustomize["affinity"] and pod_chart["volumes"] == pod_kustomize["volumes"]
    assert chart[("PodDisruptionBudget", "pipeline-operator")]["spec"] == \
        kustomized[("PodDisruptionBudget", "pipeline-operator")]["spec"]
    password = {"name": "PGPASSWORD", "valueFrom": {"secretKeyRef": {"name": "pipeline-operator-event-store",
                                                                     "key": "password"}}}
    assert password in container(chart)["env"] and password in container(kustomized)["env"]
    args_chart = [a for a in container(chart)["args"] if not a.startswith("--event-store=")]
    assert args_chart == [a for a in container(kustomized)["args"] if not a.startswith("--event-store=")]


def test_install_and_upgrade_to_high_availability_on_the_api_server(fresh):
    """Server-side dry-run of the rendered objects, then a real install with SQLite upgraded to PostgreSQL: the claim
    goes, the Deployment rolls with two replicas and gets its budget; going back to replicaCount 2 without
    PostgreSQL is refused and leaves the release as it was."""
    release = ("pipeline-operator", str(CHART), "-n", NAMESPACE, *IMAGE)
    fresh.kubectl("create", "namespace", NAMESPACE, check=False)
    rendered = helm(fresh, "template", *release, *POSTGRESQL).stdout
    fresh.kubectl("apply", "--dry-run=server", "-f", "-", input=rendered)
    helm(fresh, "install", *release)
    assert fresh.get("pvc", "pipeline-operator-data", NAMESPACE)["spec"]["accessModes"] == ["ReadWriteOnce"]
    controlplane.wait_established(fresh.kubectl)
    try:
        notes = helm(fresh, "upgrade", *release, *POSTGRESQL).stdout
        assert "Replicas: 2, sharing the PostgreSQL event store." in notes
        assert f"kubectl -n {NAMESPACE} get lease pipeline-operator" in notes
        spec = fresh.get("deployment", "pipeline-operator", NAMESPACE)["spec"]
        assert spec["replicas"] == 2 and spec["strategy"] == ROLLING
        assert spec["template"]["spec"]["affinity"]["podAntiAffinity"]
        budget = fresh.get("poddisruptionbudget", "pipeline-operator", NAMESPACE)
        assert budget["spec"]["maxUnavailable"] == 1
        # Deleted by the upgrade (it stays Terminating here: no controller manager removes pvc-protection).
        claim = fresh.kubectl("get", "pvc", "pipeline-operator-data", "-n", NAMESPACE, "-o", "json", check=False)
        assert claim.returncode != 0 or json.loads(claim.stdout)["metadata"]["deletionTimestamp"]
        res = helm(fresh, "upgrade", *release, "--set", "replicaCount=2", check=False)
        assert res.returncode != 0 and REPLICAS_MESSAGE in res.stderr
        assert fresh.get("deployment", "pipeline-operator", NAMESPACE)["spec"]["replicas"] == 2
    finally:
        helm(fresh, "uninstall", "pipeline-operator", "-n", NAMESPACE)


def test_two_shards_install_side_by_side_as_docs_sharding_says(fresh):
    """docs/sharding.md: one release per namespace set, each in its own namespace; the second leaves the
    CRD to the first. Nothing cluster-wide of one release collides with the other's."""
    for ns in ("shard-a", "shard-b", "team-1", "team-3"):
        fresh.kubectl("create", "namespace", ns, check=False)
    # The CRD is kept by an uninstall and owned by its release: one left by another test here would refuse
    # the first shard. This test starts, and leaves the control plane, without it.
    fresh.kubectl("delete", "crd", "pipelines.dataflow.dev", "--ignore-not-found")
    try:
        helm(fresh, "install", "pipeline-operator", str(CHART), "-n", "shard-a", *IMAGE,
             "--set", "watch.namespaces={team-1}")
        helm(fresh, "install", "pipeline-operator", str(CHART), "-n", "shard-b", *IMAGE,
             "--set", "watch.namespaces={team-3}", "--set", "crd.install=false")
        for shard, team in (("shard-a", "team-1"), ("shard-b", "team-3")):
            binding = fresh.get("clusterrolebinding", f"pipeline-operator-auth-delegator-{shard}")
            assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "pipeline-operator",
                                            "namespace": shard}]
            rules = fresh.get("role", "pipeline-operator", team)["rules"]
            assert {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                    "resourceNames": ["pipeline-operator-shard"], "verbs": ["get", "update"]} in rules
    finally:
        for shard in ("shard-a", "shard-b"):
            helm(fresh, "uninstall", "pipeline-operator", "-n", shard, check=False)
        fresh.kubectl("delete", "crd", "pipelines.dataflow.dev", "--ignore-not-found")
