"""The CRD is generated from the models, and the checked-in copy never drifts from them."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from pipeline_operator import models
from pipeline_operator.controller import crd

from .conftest import CRD_FILE


def test_checked_in_crd_matches_the_models():
    assert CRD_FILE.read_text() == crd.to_yaml(), (
        "crds/pipelines.dataflow.dev.yaml is stale: run "
        "`pipeline-operator crd --output crds/pipelines.dataflow.dev.yaml`")


def test_deploy_copy_of_the_crd_matches_the_models():
    copy = CRD_FILE.parent.parent / "deploy" / "base" / "crd" / "pipelines.dataflow.dev.yaml"
    assert copy.read_text() == crd.to_yaml(), "deploy/base/crd is stale: run `make crd`"


def test_crd_check_command_fails_on_drift(tmp_path):
    stale = tmp_path / "crd.yaml"
    stale.write_text(CRD_FILE.read_text().replace("maxLength: 131072", "maxLength: 10"))
    cmd = [sys.executable, "-m", "pipeline_operator.cli", "crd", "--check", "--output", str(stale)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 1 and "out of date" in res.stderr
    stale.write_text(crd.to_yaml())
    assert subprocess.run(cmd, capture_output=True, text=True).returncode == 0


def test_crd_module_and_cli_import_without_pyyaml_and_the_command_says_what_to_install():
    """PyYAML is the dev extra's, imported only when the CRD is written out."""
    code = ("import sys\nsys.modules['yaml'] = None\n"
            "import pipeline_operator.controller.crd, pipeline_operator.cli\n"
            "pipeline_operator.cli.main(['crd'], prog_name='pipeline-operator')\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and res.stdout == "", res.stdout + res.stderr
    assert res.stderr == (
        "Error: `pipeline-operator crd` needs the module 'yaml', which is not installed (development commands "
        "need the dev extra, the operator does not); install it with: pip install 'pipeline-operator[dev]'\n")


def _schema_nodes(node, path="$"):
    """Every schema node: the root, property schemas, items, additionalProperties, anyOf options."""
    yield path, node
    for name, prop in node.get("properties", {}).items():
        yield from _schema_nodes(prop, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _schema_nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _schema_nodes(node["additionalProperties"], f"{path}{{}}")
    for i, option in enumerate(node.get("anyOf", [])):
        yield from _schema_nodes(option, f"{path}|{i}")


def test_schema_is_structural():
    schema = crd.render()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    nodes = list(_schema_nodes(schema))
    assert len(nodes) > 50
    for path, node in nodes:
        assert not {"$ref", "$defs", "title", "allOf", "oneOf"} & node.keys(), path
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string") is True, path
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
        else:
            assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields") is True, path


def test_crd_names_columns_and_status_subresource():
    doc = yaml.safe_load(CRD_FILE.read_text())
    spec = doc["spec"]
    assert doc["metadata"]["name"] == "pipelines.dataflow.dev"
    assert spec["names"]["shortNames"] == models.SHORT_NAMES and "dataflow" in spec["names"]["categories"]
    version = spec["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Status"] == ".status.deploymentStatus"
    assert columns["Desired"] == ".status.deploymentDesiredStatus"
    assert columns["Program"] == ".status.programStatus"
    assert columns["Storage"] == ".status.storageStatus"
    assert columns["Age"] == ".metadata.creationTimestamp"


@pytest.mark.parametrize(("path", "key", "value"), [
    (["spec", "desiredStatus"], "enum", ["Stopped", "Provisioned"]),
    (["spec", "desiredStatus"], "default", "Stopped"),
    (["spec", "initialRuntimeStatus"], "enum", ["Running", "Paused", "Standby"]),
    (["spec", "stopMode"], "enum", ["Graceful", "Force"]),
    (["spec", "program", "sql"], "maxLength", models.MAX_SQL_LENGTH),
    (["status", "history"], "maxItems", models.MAX_HISTORY_ITEMS),
    (["status", "conditions"], "x-kubernetes-list-map-keys", ["type"]),
    (["spec", "deployment", "allowIngressFrom"], "maxItems", models.MAX_INGRESS_PEERS),
])
def test_schema_bounds_and_enums(path, key, value):
    node = crd.render()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for part in path:
        node = node["properties"][part]
    assert node[key] == value


def test_union_that_kubernetes_cannot_express_is_refused():
    with pytest.raises(ValueError, match="union"):
        crd.structural({"anyOf": [{"type": "integer"}, {"type": "string"}, {"type": "null"}]})


def test_network_policy_peers_are_typed_and_described():
    node = crd.render()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    peers = node["properties"]["deployment"]["properties"]["allowIngressFrom"]
    assert peers["description"] and peers["type"] == "array"
    peer = peers["items"]
    assert set(peer["properties"]) == {"podSelector", "namespaceSelector", "ipBlock"}
    assert peer["x-kubernetes-validations"][0]["message"].startswith("set ipBlock alone")
    selector = peer["properties"]["podSelector"]["properties"]
    assert set(selector) == {"matchLabels", "matchExpressions"}
    assert selector["matchExpressions"]["items"]["properties"]["operator"]["enum"] == [
        "In", "NotIn", "Exists", "DoesNotExist"]
    assert set(peer["properties"]["ipBlock"]["properties"]) == {"cidr", "except"}
    for name in ("podSelector", "namespaceSelector", "ipBlock"):
        assert peer["properties"][name]["description"], name


def _unbounded(path: str, node: dict) -> list[str]:
    """What lets a value of this node be as large or as deep as a client likes."""
    problems = []
    if node.get("x-kubernetes-preserve-unknown-fields"):
        problems.append(f"{path}: free-form (x-kubernetes-preserve-unknown-fields): no bound on depth or size")
    kind = "int-or-string" if node.get("x-kubernetes-int-or-string") else node.get("type")
    if kind == "object":
        if "additionalProperties" in node:
            rules = " ".join(r["rule"] for r in node.get("x-kubernetes-validations") or [])
            if "maxProperties" not in node:
                problems.append(f"{path}: a map without maxProperties")
            if "size(k)" not in rules:
                problems.append(f"{path}: a map whose keys have no bound on their length")
        elif "properties" not in node:
            problems.append(f"{path}: an object with neither properties nor a bound")
    elif kind in ("string", "int-or-string") and "enum" not in node and "maxLength" not in node:
        problems.append(f"{path}: a string without maxLength")
    elif kind == "array" and "maxItems" not in node:
        problems.append(f"{path}: an array without maxItems")
    elif kind is None:
        problems.append(f"{path}: no type")
    return problems


def test_no_field_of_the_spec_is_unbounded():
    """Every object of the spec is closed (its properties; unknown fields are dropped or, with strict
    validation, refused) or a map with maxProperties and bounded keys; every string has maxLength (or an
    enum), every array maxItems; nothing is free-form. So the API server bounds every Pipeline a tenant
    writes in size and in depth (no deeper than the schema)."""
    spec = crd.render()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    nodes = list(_schema_nodes(spec, "spec"))
    assert len(nodes) > 200
    # The options of an int-or-string (path|0, path|1) are bounded by the node itself.
    assert [p for path, node in nodes if "|" not in path for p in _unbounded(path, node)] == []
    assert max(path.count(".") + path.count("[]") + path.count("{}") for path, _ in nodes) < 16


def test_the_bound_check_finds_free_form_and_unbounded_fields():
    assert _unbounded("x", {"x-kubernetes-preserve-unknown-fields": True})
    assert _unbounded("x", {"type": "object", "additionalProperties": {"type": "string", "maxLength": 1}})
    assert _unbounded("x", {"type": "object", "maxProperties": 3, "additionalProperties": {"type": "string"}})
    assert _unbounded("x", {"type": "object"})
    assert _unbounded("x", {"type": "string"}) and _unbounded("x", {"type": "array", "items": {}})
    assert not _unbounded("x", {"type": "string", "enum": ["a"]})


def test_status_is_free_form_only_in_the_details_the_operator_bounds():
    """The status is written by the operator alone; its free-form fields are the details a pipeline reports
    and its error's details, which the operator caps in size and depth before it writes them
    (core.lifecycle.cap_details)."""
    status = crd.render()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    free = {path for path, node in _schema_nodes(status, "status") if node.get("x-kubernetes-preserve-unknown-fields")}
    assert free == {"status.deploymentResourcesStatusDetails", "status.deploymentRuntimeStatusDetails",
                    "status.storageStatusDetails", "status.programError", "status.deploymentError.details"}
