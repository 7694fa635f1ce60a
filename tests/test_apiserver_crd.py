"""The generated CRD on a real kube-apiserver: Established, valid Pipelines accepted,
invalid ones rejected with a message that names the field."""

from __future__ import annotations

import json

import pytest

from .conftest import Cluster

pytestmark = pytest.mark.apiserver


def pipeline(name: str, namespace: str, spec: dict | None = None) -> dict:
    return {"apiVersion": "dataflow.dev/v1alpha1", "kind": "Pipeline",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec or {}}


def test_crd_reaches_established_and_is_served(crd_installed: Cluster):
    crd = crd_installed.get("crd", "pipelines.dataflow.dev")
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions["Established"] == "True" and conditions["NamesAccepted"] == "True"
    resources = crd_installed.kubectl("api-resources", "--api-group=dataflow.dev", "-o", "wide").stdout
    assert "pipelines" in resources and "pl,fpl" in resources and "dataflow" in resources


def test_valid_pipeline_is_accepted_with_defaults(crd_installed: Cluster, namespace: str):
    spec = {"desiredStatus": "Provisioned", "program": {"sql": "CREATE TABLE t (x INT);"},
            "deployment": {"image": "ghcr.io/example/pipeline:1", "provisioningTimeoutSeconds": 60,
                           "resources": {"requests": {"cpu": 1, "memory": "512Mi"}, "limits": {"cpu": "2"}},
                           "env": [{"name": "RUST_LOG", "value": "info"}]},
            "storage": {"size": "10Gi", "storageClassName": "fast"}}
    crd_installed.apply(pipeline("good", namespace, spec))
    stored = crd_installed.get("pipeline", "good", namespace)
    assert stored["spec"]["desiredStatus"] == "Provisioned"
    assert stored["spec"]["initialRuntimeStatus"] == "Running"  # defaulted by the API server
    assert stored["spec"]["stopMode"] == "Graceful"
    assert stored["spec"]["deployment"]["resources"]["requests"]["cpu"] == 1


def test_network_policy_peers_are_accepted(crd_installed: Cluster, namespace: str):
    peers = [{"podSelector": {"matchLabels": {"app": "dashboard"}}},
             {"namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "Exists"}]},
              "podSelector": {}},
             {"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.5.0/24"]}},
             {"ipBlock": {"cidr": "fd00::/8"}}]
    crd_installed.apply(pipeline("fenced", namespace, {"deployment": {"allowIngressFrom": peers}}))
    assert crd_installed.get("pipeline", "fenced", namespace)["spec"]["deployment"]["allowIngressFrom"] == peers


def test_empty_spec_gets_every_default(crd_installed: Cluster, namespace: str):
    obj = pipeline("bare", namespace)
    del obj["spec"]
    crd_installed.apply(obj)
    spec = crd_installed.get("pipeline", "bare", namespace)["spec"]
    assert spec == {"desiredStatus": "Stopped", "initialRuntimeStatus": "Running", "stopMode": "Graceful",
                    "bootstrapPolicy": "AwaitApproval"}


def test_printer_columns_and_short_name_work_in_kubectl(crd_installed: Cluster, namespace: str):
    crd_installed.apply(pipeline("shown", namespace))
    out = crd_installed.kubectl("get", "pl", "-n", namespace, "-o", "wide").stdout
    header = out.splitlines()[0].split()
    assert header == ["NAME", "STATUS", "DESIRED", "PROGRAM", "STORAGE", "READY", "ERROR", "AGE"]
    assert "shown" in out
    assert "shown" in crd_installed.kubectl("get", "dataflow", "-n", namespace).stdout


@pytest.mark.parametrize(("spec", "field", "detail"), [
    ({"desiredStatus": "Running"}, "spec.desiredStatus", 'Unsupported value: "Running"'),
    ({"initialRuntimeStatus": "Suspended"}, "spec.initialRuntimeStatus", "Unsupported value"),
    ({"runtimeDesiredStatus": "Standby"}, "spec.runtimeDesiredStatus", "Unsupported value"),
    ({"stopMode": "Kill"}, "spec.stopMode", "Unsupported value"),
    ({"storage": {"size": "-10Gi"}}, "spec.storage.size", "should match"),
    ({"storage": {"size": -5}}, "spec.storage.size", "must not be negative"),
    ({"storage": {"size": "ten gigs"}}, "spec.storage.size", "should match"),
    ({"deployment": {"resources": {"limits": {"memory": "-1Gi"}}}},
     "spec.deployment.resources.limits.memory", "should match"),
    ({"deployment": {"provisioningTimeoutSeconds": 0}}, "spec.deployment.provisioningTimeoutSeconds",
     "should be greater than or equal to 1"),
    ({"deployment": {"env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]}},
     "spec.deployment.env[1]", "Duplicate value"),
    ({"deployment": {"env": [{"name": "1BAD"}]}}, "spec.deployment.env[0].name", "should match"),
    ({"program": {"sql": "x" * 131073}}, "spec.program.sql", "Too long"),
    ({"deployment": {"allowIngressFrom": [{}]}}, "spec.deployment.allowIngressFrom[0]",
     "set ipBlock alone, or podSelector and/or namespaceSelector"),
    ({"deployment": {"allowIngressFrom": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}},
     "spec.deployment.allowIngressFrom[0]", "set ipBlock alone"),
    ({"deployment": {"allowIngressFrom": [{"ipBlock": {"cidr": "everywhere"}}]}},
     "spec.deployment.allowIngressFrom[0].ipBlock.cidr", "should match"),
    ({"deployment": {"allowIngressFrom": [{"podSelector": {"matchExpressions": [{"key": "a", "operator": "Is"}]}}]}},
     "spec.deployment.allowIngressFrom[0].podSelector.matchExpressions[0].operator", "Unsupported value"),
    ({"deployment": {"allowIngressFrom": [{"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}]}},
     "spec.deployment.allowIngressFrom[0].podSelector.matchExpressions[0]", "values must be non-empty"),
    ({"deployment": {"allowIngressFrom": [{"namespaceSelector": {"matchLabels": {"team": "no spaces"}}}]}},
     "spec.deployment.allowIngressFrom[0].namespaceSelector.matchLabels.team", "should match"),
])
def test_invalid_pipeline_is_rejected_naming_the_field(crd_installed: Cluster, namespace: str, spec, field, detail):
    res = crd_installed.apply(pipeline("bad", namespace, spec), check=False)
    assert res.returncode != 0, f"accepted an invalid spec: {spec}"
    assert field in res.stderr and detail in res.stderr, res.stderr
    missing = crd_installed.kubectl("get", "pipeline", "bad", "-n", namespace, check=False)
    assert missing.returncode != 0  # nothing was stored


def test_unknown_spec_fields_are_rejected_by_strict_validation(crd_installed: Cluster, namespace: str):
    obj = pipeline("typo", namespace, {"desiredStatuss": "Provisioned"})
    res = crd_installed.kubectl("apply", "--validate=strict", "-f", "-", input=json.dumps(obj), check=False)
    assert res.returncode != 0 and "desiredStatuss" in res.stderr


def test_status_is_a_subresource(crd_installed: Cluster, namespace: str):
    """A write to the main resource cannot change status; the /status subresource can."""
    crd_installed.apply(pipeline("sub", namespace))
    crd_installed.kubectl("patch", "pipeline", "sub", "-n", namespace, "--type=merge",
                          "-p", json.dumps({"status": {"deploymentResourcesStatus": "Provisioned"}}))
    assert "status" not in crd_installed.get("pipeline", "sub", namespace)
    crd_installed.kubectl("patch", "pipeline", "sub", "-n", namespace, "--subresource=status", "--type=merge",
                          "-p", json.dumps({"status": {"deploymentResourcesStatus": "Provisioned",
                                                       "observedGeneration": 1}}))
    assert crd_installed.get("pipeline", "sub", namespace)["status"]["deploymentResourcesStatus"] == "Provisioned"
    bad = crd_installed.kubectl("patch", "pipeline", "sub", "-n", namespace, "--subresource=status",
                                "--type=merge", "-p", json.dumps({"status": {"storageStatus": "Gone"}}),
                                check=False)
    assert bad.returncode != 0 and "status.storageStatus" in bad.stderr


def test_non_admin_user_cannot_create_pipelines_without_rbac(crd_installed: Cluster, namespace: str):
    res = crd_installed.apply(pipeline("denied", namespace), check=False, user="alice")
    assert res.returncode != 0 and "forbidden" in res.stderr.lower()
    crd_installed.kubectl("create", "role", "pipeline-editor", "-n", namespace,
                          "--verb=get,list,create,patch", "--resource=pipelines.dataflow.dev")
    crd_installed.kubectl("create", "rolebinding", "alice-edits", "-n", namespace,
                          "--role=pipeline-editor", "--user=alice")
    crd_installed.apply(pipeline("allowed", namespace), user="alice")
    res = crd_installed.kubectl("get", "pipelines", "-n", namespace, user="bob", check=False)
    assert res.returncode != 0 and "forbidden" in res.stderr.lower()
