"""The generated CRD on a real kube-apiserver: Established, valid Pipelines accepted,
invalid ones rejected with a message that names the field."""

from __future__ import annotations

import datetime as dt
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
                    "bootstrapPolicy": "AwaitApproval", "silentBootstrap": False}


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
    ({"tags": ["x" * 257]}, "spec.tags[0]", "Too long"),
    ({"runtimeConfig": {"workers": -1}}, "spec.runtimeConfig.workers", "greater than or equal to 0"),
    ({"runtimeConfig": {"workers": 70000}}, "spec.runtimeConfig.workers", "less than or equal to 65535"),
    ({"runtimeConfig": {"workers": "eight"}}, "spec.runtimeConfig.workers", "must be of type integer"),
    ({"runtimeConfig": {"storage": {"compression": "zstd"}}}, "spec.runtimeConfig.storage.compression",
     "Unsupported value"),
    ({"runtimeConfig": {"storage": {"backend": {"name": "object", "config": {"region": "x"}}}}},
     "spec.runtimeConfig.storage.backend", "the object backend needs config.url"),
    ({"runtimeConfig": {"storage": {"backend": {"name": "file"}}}}, "spec.runtimeConfig.storage.backend",
     "config is required"),
    ({"runtimeConfig": {"env": {"RUST_LOG": "debug"}}}, "spec.runtimeConfig.env", "reserved names"),
    ({"runtimeConfig": {"env": {"A": "x" * 5000}}}, "spec.runtimeConfig.env.A", "Too long"),
    ({"runtimeConfig": {"fault_tolerance": {"model": "twice"}}}, "spec.runtimeConfig.fault_tolerance.model",
     "Unsupported value"),
    ({"runtimeConfig": {"dev_tweaks": {"adaptive_joins": "yes"}}},
     "spec.runtimeConfig.dev_tweaks.adaptive_joins", "must be of type boolean"),
    ({"runtimeConfig": {"dev_tweaks": {"adaptive_joins": {"a": {"a": {}}}}}},
     "spec.runtimeConfig.dev_tweaks.adaptive_joins", "unknown field"),
    ({"runtimeConfig": {"init_containers": [{"image": "busybox"}]}}, "spec.runtimeConfig.init_containers[0].name",
     "Required value"),
    ({"programConfig": {"profile": "fastest"}}, "spec.programConfig.profile", "Unsupported value"),
    ({"programConfig": {"cache": "yes"}}, "spec.programConfig.cache", "must be of type boolean"),
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


def test_unknown_configuration_fields_are_rejected_by_strict_validation(crd_installed: Cluster, namespace: str):
    """runtimeConfig and programConfig are Feldera's schemas, not free-form: a key Feldera does not know
    (or a tweak it would pass on to the runtime) is refused, named."""
    obj = pipeline("typo", namespace, {"runtimeConfig": {"wokers": 4, "dev_tweaks": {"some_tweak": True}},
                                       "programConfig": {"profil": "dev"}})
    res = crd_installed.kubectl("apply", "--validate=strict", "-f", "-", input=json.dumps(obj), check=False)
    assert res.returncode != 0
    for field in ("spec.runtimeConfig.wokers", "spec.runtimeConfig.dev_tweaks.some_tweak", "spec.programConfig.profil"):
        assert field in res.stderr, res.stderr


def test_feldera_configurations_are_accepted_with_feldera_defaults(crd_installed: Cluster, namespace: str):
    """The keys the operator reads and Feldera's others, as Feldera writes them; what is left out gets
    Feldera's default, and an explicit null (no storage, no periodic checkpoints) stays null."""
    runtime = {"workers": 4, "provisioning_timeout_secs": 120, "max_rss_mb": 4096,
               "resources": {"cpu_cores_min": 1, "cpu_cores_max": 2.5, "memory_mb_max": 8192, "storage_class": "fast"},
               "fault_tolerance": {"model": "at_least_once", "checkpoint_interval_secs": None},
               "storage": {"backend": {"name": "file", "config": {"sync": {
                   "bucket": "s3://pipelines/standby", "provider": "Minio", "start_from_checkpoint": "latest",
                   "flags": ["--s3-no-check-bucket"]}}}, "compression": "snappy", "cache_mib": 512},
               "env": {"APP_MODE": "prod"}, "dev_tweaks": {"adaptive_joins": True, "merger": "push_merger"},
               "pin_cpus": [0, 1], "logging": "info", "clock_resolution_usecs": None,
               "init_containers": [{"name": "side", "image": "busybox:1", "args": ["sleep", "1d"],
                                    "resources": {"limits": {"memory": "64Mi"}}}]}
    program = {"profile": "optimized", "cache": False, "runtime_version": "v0.305.0"}
    def server_side_apply(obj: dict) -> None:  # kubectl's client-side apply drops nulls (a merge patch's "remove")
        crd_installed.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(obj))

    server_side_apply(pipeline("feldera", namespace, {"runtimeConfig": runtime, "programConfig": program}))
    spec = crd_installed.get("pipeline", "feldera", namespace)["spec"]
    stored = spec["runtimeConfig"]
    for key, value in runtime.items():
        if key not in ("storage", "fault_tolerance"):
            assert stored[key] == value, key
    assert stored["fault_tolerance"] == {"model": "at_least_once", "checkpoint_interval_secs": None}
    assert stored["storage"]["backend"]["config"]["sync"]["pull_interval"] == 10  # Feldera's default
    assert stored["hosts"] == 1 and stored["tracing"] is False and stored["cpu_profiler"] is True
    assert spec["programConfig"] == program
    server_side_apply(pipeline("objects", namespace, {"runtimeConfig": {"storage": None, "fault_tolerance": {}}}))
    stored = crd_installed.get("pipeline", "objects", namespace)["spec"]["runtimeConfig"]
    assert stored["storage"] is None and stored["fault_tolerance"] == {"model": "exactly_once",
                                                                      "checkpoint_interval_secs": 60}
    crd_installed.apply(pipeline("s3", namespace, {"runtimeConfig": {"storage": {"backend": {
        "name": "object", "config": {"url": "s3://bucket/path", "region": "eu-west-1", "access_key_id": "AKIA"}}}}}))


def test_a_deeply_nested_spec_is_rejected(crd_installed: Cluster, namespace: str):
    """1,200 objects deep, where the schema allows a boolean or nothing at all: refused, naming the field.
    Without strict validation an unknown key is dropped, so nothing deep is stored either."""
    from .hostile_specs import deep_runtime_config_pipeline, pipeline_json
    typed = pipeline_json("deep", namespace, {}, deep_at=("runtimeConfig", "dev_tweaks", "adaptive_joins"))
    res = crd_installed.kubectl("create", "-f", "-", input=typed, check=False)
    assert res.returncode != 0 and "spec.runtimeConfig.dev_tweaks.adaptive_joins" in res.stderr, res.stderr[-2000:]
    res = crd_installed.kubectl("create", "-f", "-", input=deep_runtime_config_pipeline("deep", namespace),
                                check=False)
    assert res.returncode != 0 and "spec.runtimeConfig.dev_tweaks.x_deep" in res.stderr, res.stderr[-2000:]
    crd_installed.kubectl("create", "--validate=false", "-f", "-",
                          input=deep_runtime_config_pipeline("deep", namespace))
    stored = crd_installed.get("pipeline", "deep", namespace)["spec"]["runtimeConfig"]
    assert stored["dev_tweaks"] == {} and len(json.dumps(stored)) < 2000


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


def test_checkpoint_fingerprints_keep_every_digit_through_the_api_server(crd_installed: Cluster, namespace: str):
    """A fingerprint is a u64 (Feldera's CheckpointMetadata); the API server turns a JSON number beyond int64 into
    a float64 (18446744073709551615 comes back as 18446744073709552000). Through the status the operator writes
    and reads back, each keeps every digit."""
    from pipeline_operator.core import resource
    from pipeline_operator.core.lifecycle import Desired, PipelineState
    from pipeline_operator.models import PipelineStatus

    fingerprints = [2**64 - 1, 2**63 + 12345, 2**63 - 1, 0]
    details = {"checkpoints": [{"uuid": f"00000000-0000-4000-8000-00000000000{i}", "identifier": None,
                                "fingerprint": f, "size": 10, "steps": 1, "processed_records": 0}
                               for i, f in enumerate(fingerprints)]}
    state = PipelineState(storage_status_details=details)
    body = resource.to_status(Desired(program_digest="p"), state, [], [], dt.datetime.now(dt.UTC)).model_dump(
        mode="json", by_alias=True, exclude_none=True)
    crd_installed.apply(pipeline("fingerprints", namespace))
    crd_installed.kubectl("patch", "pipeline", "fingerprints", "-n", namespace, "--subresource=status",
                          "--type=merge", "-p", json.dumps({"status": body}))
    stored = crd_installed.get("pipeline", "fingerprints", namespace)["status"]
    back = resource.from_status(PipelineStatus.model_validate(stored)).storage_status_details
    assert [c["fingerprint"] for c in back["checkpoints"]] == fingerprints
    assert back == details
