"""A Pipeline nested deeper than Python's JSON decoder goes cannot stop the operator.

The typed CRD refuses such a spec (tests/test_apiserver_crd.py); what it cannot refuse, or what was stored
before it, is decoded without a RecursionError (operator/pipeline_operator/jsondepth.py): at Kopf's list and
watch, the pipeline cache's informer, the operator's own reads and writes. A Pipeline that cannot be read is
reported (a log line, a Warning Event, its Ready and Stalled conditions) and left as it is; every other
Pipeline goes on."""

from __future__ import annotations

import inspect
import json

import kubernetes
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from kopf._cogs.clients import api as kopf_api
from kopf._cogs.clients import fetching as kopf_fetching

from pipeline_operator import jsondepth
from pipeline_operator.controller import kopf_workarounds as controller
from pipeline_operator.kube.client import ApiClient
from pipeline_operator_dev import controlplane

from .conftest import CRD_FILE
from .hostile_specs import (
    DEEP,
    deep_managed_fields_pipeline,
    free_form_crd,
    nested_json,
    pipeline_json,
)
from .operator_harness import wait_for
from .test_operator_lifecycle import spec

# -- the decoding layer ---------------------------------------------------------------------------------------


_JSON_VALUES = st.recursive(
    st.none() | st.integers() | st.text(alphabet='[]{}"\\ab,:'),
    lambda inner: (st.lists(inner, max_size=3)
                   | st.dictionaries(st.text(alphabet='[]{}"ab', max_size=3), inner, max_size=3)),
    max_leaves=40)


def _depth(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


def _cut(value: object, limit: int, depth: int = 1) -> object:
    """What cut_deep must make of a decoded value, walked the plain (recursive) way."""
    if isinstance(value, (dict, list)) and depth > limit:
        return jsondepth.TOO_DEEP
    if isinstance(value, dict):
        return {k: _cut(v, limit, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_cut(v, limit, depth + 1) for v in value]
    return value


@given(_JSON_VALUES, st.integers(min_value=1, max_value=6))
def test_depth_is_judged_and_cut_as_a_plain_walk_would(value: object, limit: int) -> None:
    """too_deep and cut_deep count brackets in C (a running sum), never a bracket inside a string."""
    raw = json.dumps(value).encode()
    assert jsondepth.too_deep(raw, limit) == (_depth(value) > limit)
    assert json.loads(jsondepth.cut_deep(raw, limit)) == _cut(value, limit)



def _list_of(*items: str) -> bytes:
    return ('{"kind":"PipelineList","metadata":{"resourceVersion":"7"},"items":[' + ",".join(items) + "]}").encode()


def test_one_deep_object_in_a_list_is_marked_and_the_others_decoded_whole():
    good = pipeline_json("good", "ns", {"description": "a [bracket] and a {brace} in a string"})
    deep = pipeline_json("deep", "ns", {}, deep_at=("runtimeConfig", "dev_tweaks", "adaptive_joins"))
    with pytest.raises(RecursionError):
        json.loads(deep)
    listed = jsondepth.decode_objects(_list_of(good, deep, good))
    first, bad, last = listed["items"]
    assert first == json.loads(good) and last == json.loads(good)
    assert jsondepth.undecodable(first) is None
    assert jsondepth.undecodable(bad).startswith("spec.runtimeConfig.dev_tweaks.adaptive_joins.a.a")
    assert bad["metadata"]["name"] == "deep" and bad["spec"]["runtimeConfig"]["dev_tweaks"]["adaptive_joins"]


def test_a_deep_watch_event_is_marked_and_a_deep_managed_fields_is_dropped():
    event = '{"type":"MODIFIED","object":' + pipeline_json("deep", "ns", {}, deep_at=("runtimeConfig", "x")) + "}"
    decoded = jsondepth.decode_objects(event)
    assert decoded["type"] == "MODIFIED" and "runtimeConfig.x" in jsondepth.undecodable(decoded["object"])
    # server-side apply's bookkeeping, which the operator never reads: dropped, the object served as usual
    managed = jsondepth.decode_objects(deep_managed_fields_pipeline("mf", "ns", spec={"description": "d"}))
    assert jsondepth.undecodable(managed) is None and "managedFields" not in managed["metadata"]
    assert managed["spec"] == {"description": "d"}


def test_deep_but_decodable_documents_are_cut_at_the_limit():
    """Under Python's limit, but deeper than anything downstream (copies, diffs, validation) survives."""
    text = '{"metadata":{"name":"x"},"spec":' + nested_json(500) + "}"
    assert json.loads(text)  # the standard decoder takes it ...
    decoded = jsondepth.decode_objects(text)
    assert jsondepth.undecodable(decoded)  # ... the operator does not keep it
    assert not jsondepth.too_deep(json.dumps(decoded).encode(), jsondepth.MAX_OBJECT_DEPTH)
    with pytest.raises(jsondepth.TooDeep):
        jsondepth.decode_json(text, 64)
    with pytest.raises(ValueError):
        jsondepth.decode_objects(b"{not json")


def test_the_kubernetes_client_decodes_a_deep_pipeline():
    client = ApiClient(kubernetes.client.Configuration())
    deep = pipeline_json("deep", "ns", {}, deep_at=("runtimeConfig", "x"))
    obj = client.deserialize(deep, "object", "application/json")
    assert jsondepth.undecodable(obj) and obj["metadata"]["name"] == "deep"
    assert client.deserialize('{"metadata":{"name":"p"}}', "V1Pod", "application/json").metadata.name == "p"


def test_kopf_still_decodes_where_the_operator_bounds_it(monkeypatch):
    """Kopf's API client: every call goes through ``request`` and a list is ``response.json()``; a watch
    stream's lines are ``json.loads`` of the module's own ``json``. Both are what the operator replaces."""
    assert "response.json()" in inspect.getsource(kopf_api.get)
    assert "json.loads(line" in inspect.getsource(kopf_api.stream)
    assert "request(" in inspect.getsource(kopf_api.get) and "api.get(" in inspect.getsource(kopf_fetching)
    monkeypatch.setattr(kopf_api, "request", kopf_api.request)
    monkeypatch.setattr(kopf_api, "json", kopf_api.json)
    controller.bound_json_depth_in_kopf()
    controller.bound_json_depth_in_kopf()  # once is enough
    assert kopf_api.request.bounds_json_depth
    line = '{"type":"ADDED","object":' + pipeline_json("deep", "ns", {}, deep_at=("spec2",)) + "}"
    assert jsondepth.undecodable(kopf_api.json.loads(line)["object"])
    assert kopf_api.json.dumps({"a": 1}) == '{"a": 1}'


# -- on the real API server ------------------------------------------------------------------------------------


def _events_of(cluster, namespace: str, name: str) -> list[dict]:
    items = json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
    return [e for e in items if e["involvedObject"].get("name") == name]


def _apply_crd(cluster, crd: dict) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps(crd))
    controlplane.wait_established(cluster.kubectl)


@pytest.mark.apiserver
def test_pipelines_go_on_beside_pipelines_nested_too_deep(crd_installed, operators, pipelines, namespace):
    """Hostile Pipelines in the namespace, then a plain one, which reaches Running:

    - ``mf``: a tenant's own managedFields, 1,200 levels deep (no CRD can refuse it): runs as usual;
    - ``deep``: a spec 1,200 levels deep, stored with the CRD's validation bypassed (the CRD as it was,
      runtimeConfig free-form). Served under the typed CRD, its managedFields are as deep, and its spec no
      longer fits: reported (condition, Event, log) and left alone;
    - ``deepstatus``: details 1,200 levels deep in its status (free-form there): cannot be decoded whole,
      reported and left alone.

    Before the fix, the operator's first list of the namespace failed with a RecursionError and it exited."""
    crd = yaml.safe_load(CRD_FILE.read_text())
    deep = pipeline_json("deep", namespace, spec(), deep_at=("runtimeConfig", "dev_tweaks", "adaptive_joins"))
    _apply_crd(crd_installed, free_form_crd(crd))
    try:
        wait_for("the free-form CRD to take the deep spec", lambda: crd_installed.kubectl(
            "create", "-f", "-", input=deep, check=False).returncode == 0, timeout=30)
    finally:
        _apply_crd(crd_installed, crd)
    crd_installed.kubectl("create", "-f", "-", input=deep_managed_fields_pipeline("mf", namespace, spec=spec()))
    shown = crd_installed.kubectl("get", "pipeline", "mf", "-n", namespace, "-o", "json", "--show-managed-fields")
    assert shown.stdout.count('"f:a"') >= DEEP - 1  # stored as written
    pipelines.create("deepstatus", spec())
    status = ('{"status":{"deploymentError":{"message":"m","errorCode":"E","details":' + nested_json() + "}}}")
    crd_installed.kubectl("patch", "pipeline", "deepstatus", "-n", namespace, "--subresource=status",
                          "--type=merge", "-p", status)

    op = operators(namespace)
    pipelines.create("after", spec())
    pipelines.wait_status("after", op, timeout=60, deploymentStatus="Running")
    pipelines.wait_status("mf", op, timeout=30, deploymentStatus="Running")

    def reported() -> dict | None:
        conditions = {c["type"]: c for c in pipelines.status("deep").get("conditions") or []}
        stalled = conditions.get("Stalled") or {}
        return conditions if stalled.get("reason") == "InvalidPipeline" else None
    conditions = wait_for("the deep Pipeline's conditions", reported, timeout=30, operator=op)
    assert conditions["Stalled"]["status"] == "True" and conditions["Ready"]["status"] == "False"
    assert "spec.runtimeConfig.dev_tweaks.adaptive_joins" in conditions["Stalled"]["message"]
    for name, said in (("deep", "spec is not valid"), ("deepstatus", "cannot be decoded")):
        warnings = wait_for(f"the Warning Event on {name}", lambda name=name: [
            e for e in _events_of(crd_installed, namespace, name) if e["reason"] == "InvalidPipeline"],
            timeout=30, operator=op)
        assert warnings[0]["type"] == "Warning" and said in warnings[0]["message"], warnings
    assert "status.deploymentError.details.a.a" in warnings[0]["message"]
    assert "deploymentStatus" not in pipelines.status("deep")  # nothing was done with it
    log = op.log()
    assert "RecursionError" not in log and "Traceback" not in log
    assert f"{namespace}/deepstatus: the Pipeline cannot be decoded" in log
    op.assert_alive()
