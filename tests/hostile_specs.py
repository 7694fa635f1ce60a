"""Hostile Pipeline objects that tests (and the chaos runs) create to show the operator survives them.

The objects are JSON text, not Python values: Python's ``json`` module cannot even encode an
object nested deeper than its recursion limit.
"""

from __future__ import annotations

import json
from typing import Any

# Deeper than Python's default recursion limit (1000) lets json.loads decode.
DEEP = 1200


def nested_json(depth: int = DEEP, key: str = "a") -> str:
    """``{"a":{"a":...{}...}}``: ``depth`` objects, one inside the other, as JSON text."""
    opening = json.dumps(key) + ":{"
    return "{" + opening * (depth - 1) + "}" * depth


def pipeline_json(name: str, namespace: str, spec: dict[str, Any], *, deep_at: tuple[str, ...] = (),
                  depth: int = DEEP) -> str:
    """A Pipeline as JSON text; with ``deep_at`` (a path of keys in the spec, camelCase), the value
    there is :func:`nested_json` of ``depth`` objects. ``spec`` must not hold that path already."""
    marker = "__DEEP_VALUE__"
    target = spec = json.loads(json.dumps(spec))
    if deep_at:
        for key in deep_at[:-1]:
            target = target.setdefault(key, {})
        target[deep_at[-1]] = marker
    text = json.dumps({"apiVersion": "dataflow.dev/v1alpha1", "kind": "Pipeline",
                       "metadata": {"name": name, "namespace": namespace}, "spec": spec})
    return text.replace(json.dumps(marker), nested_json(depth), 1) if deep_at else text


def deep_runtime_config_pipeline(name: str, namespace: str, depth: int = DEEP,
                                 spec: dict[str, Any] | None = None) -> str:
    """A Pipeline whose ``spec.runtimeConfig.dev_tweaks.x_deep`` nests ``depth`` objects: valid for a
    free-form ``runtimeConfig``, and deeper than Python's JSON decoder goes by default."""
    return pipeline_json(name, namespace, spec or {}, deep_at=("runtimeConfig", "dev_tweaks", "x_deep"), depth=depth)


def deep_managed_fields_pipeline(name: str, namespace: str, depth: int = DEEP,
                                 spec: dict[str, Any] | None = None) -> str:
    """A Pipeline whose ``metadata.managedFields`` (server-side apply's bookkeeping, which whoever may create
    or update the object can write) nests ``depth`` levels: the API server stores it whatever the CRD says."""
    fields = '{"f:metadata":' + nested_json(depth, "f:a") + "}"
    marker = "__DEEP_VALUE__"
    obj = {"apiVersion": "dataflow.dev/v1alpha1", "kind": "Pipeline",
           "metadata": {"name": name, "namespace": namespace, "managedFields": [{
               "manager": "hostile", "operation": "Update", "apiVersion": "dataflow.dev/v1alpha1",
               "fieldsType": "FieldsV1", "fieldsV1": marker}]},
           "spec": spec or {}}
    return json.dumps(obj).replace(json.dumps(marker), fields, 1)


def free_form_crd(crd: dict[str, Any]) -> dict[str, Any]:
    """The Pipeline CRD as it was before it typed Feldera's configurations: ``runtimeConfig`` free-form
    (to store, in a test, a Pipeline that the typed CRD refuses)."""
    crd = json.loads(json.dumps(crd))
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec["properties"]["runtimeConfig"] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    return crd
