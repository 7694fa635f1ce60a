"""The CRD is generated from the models, and the checked-in copy never drifts from them."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from pipeline_operator import crd, models

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
            "import pipeline_operator.crd, pipeline_operator.cli\n"
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
