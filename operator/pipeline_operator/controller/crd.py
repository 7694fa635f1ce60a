"""Generate the Pipeline CustomResourceDefinition from the pydantic models.

The models in :mod:`pipeline_operator.models` are the schema; ``crds/pipelines.dataflow.dev.yaml``
is this module's output, checked in, and a test fails when the two drift. Regenerate with
``pipeline-operator crd --output crds/pipelines.dataflow.dev.yaml``.

Pydantic writes JSON Schema (draft 2020-12); Kubernetes wants a *structural* OpenAPI v3
schema: no ``$ref``, no ``anyOf`` with null for optional fields, a ``type`` on every node,
``x-kubernetes-*`` markers for free-form and int-or-string values. :func:`structural` converts.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, cast

from ..models import (
    API_GROUP,
    API_VERSION,
    CATEGORIES,
    KIND,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    PipelineSpec,
    PipelineStatus,
)

CRD_NAME = f"{PLURAL}.{API_GROUP}"
DEFAULT_PATH = Path("crds") / f"{CRD_NAME}.yaml"

_KEEP = ("type", "format", "description", "default", "nullable", "enum", "pattern", "minimum", "maximum",
         "minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties", "required")
_EXTENSIONS = ("x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string",
               "x-kubernetes-list-type", "x-kubernetes-list-map-keys", "x-kubernetes-validations")


def structural(schema: dict[str, Any], defs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Convert one pydantic JSON schema node into a structural Kubernetes schema node."""
    defs = defs if defs is not None else schema.get("$defs", {})
    node = dict(schema)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        node = {**target, **node}
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if node.get("x-kubernetes-int-or-string"):
            out: dict[str, Any] = {k: node[k] for k in ("description", "default", "pattern", "maxLength",
                                                        "x-kubernetes-validations") if k in node}
            out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
            out["x-kubernetes-int-or-string"] = True
            return out
        if len(options) != 1:
            raise ValueError(f"cannot express a union in a structural schema: {options}")
        inner = structural(options[0], defs)
        # Sibling keys (description, default, bounds) apply to the single remaining option.
        for key in (*_KEEP, *_EXTENSIONS):
            if key in node and node[key] is not None:
                inner[key] = copy.deepcopy(node[key])
        if node.get("default", "missing") is None:
            inner.pop("default", None)
        return inner
    if node.get("x-kubernetes-preserve-unknown-fields"):
        out = {k: node[k] for k in ("description",) if k in node}
        out["x-kubernetes-preserve-unknown-fields"] = True
        return out
    out = {k: copy.deepcopy(node[k]) for k in (*_KEEP, *_EXTENSIONS) if k in node}
    if "description" in out:
        out["description"] = " ".join(out["description"].replace("``", "`").split())
    if out.get("default", "missing") is None:
        out.pop("default")
    if "properties" in node:
        out["type"] = "object"
        out["properties"] = {name: structural(prop, defs) for name, prop in node["properties"].items()}
    elif node.get("type") == "object" and isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = structural(node["additionalProperties"], defs)
    if "items" in node:
        out["items"] = structural(node["items"], defs)
    if node.get("type") == "string" and node.get("format") == "uuid":
        out["format"] = "uuid"
    return out


def _model_schema(model: type) -> dict[str, Any]:
    schema = model.model_json_schema(by_alias=True, mode="validation")  # type: ignore[attr-defined]
    return structural(schema)


def printer_columns() -> list[dict[str, Any]]:
    return [
        {"name": "Status", "type": "string", "jsonPath": ".status.deploymentStatus",
         "description": "Feldera's combined status: the runtime status while Provisioned, else the resources status."},
        {"name": "Desired", "type": "string", "jsonPath": ".status.deploymentDesiredStatus",
         "description": "The effective desired status (Stopped while an error is latched)."},
        {"name": "Program", "type": "string", "jsonPath": ".status.programStatus",
         "description": "Compilation status of the program."},
        {"name": "Storage", "type": "string", "jsonPath": ".status.storageStatus",
         "description": "Storage status: Cleared, InUse or Clearing."},
        {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
         "description": "True when the desired state is reached without error."},
        {"name": "Error", "type": "string", "priority": 1, "jsonPath": ".status.deploymentError.errorCode",
         "description": "The latched error, if any."},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]


def render() -> dict[str, Any]:
    """The whole CustomResourceDefinition."""
    spec = _model_schema(PipelineSpec)
    spec["default"] = {}
    spec["description"] = "What the pipeline should be. Written by people and GitOps tools, never by the operator."
    status = _model_schema(PipelineStatus)
    status["description"] = "What the operator observed and decided. Written only by the operator."
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {"app.kubernetes.io/name": "pipeline-operator",
                       "app.kubernetes.io/part-of": "pipeline-operator"},
        },
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {"kind": KIND, "listKind": f"{KIND}List", "plural": PLURAL, "singular": SINGULAR,
                      "shortNames": list(SHORT_NAMES), "categories": list(CATEGORIES)},
            "versions": [{
                "name": API_VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": printer_columns(),
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": "A data pipeline run through Feldera's lifecycle: "
                                   "Stopped -> Provisioning -> Provisioned -> Stopping -> Stopped.",
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": spec,
                        "status": status,
                    },
                }},
            }],
        },
    }


HEADER = ("# Generated from the pydantic models in operator/pipeline_operator/models.py.\n"
          "# Do not edit: run `pipeline-operator crd --output crds/pipelines.dataflow.dev.yaml`.\n")


def to_yaml(crd: dict[str, Any] | None = None) -> str:
    """The CRD as the checked-in YAML. PyYAML is imported here, not at module level: it is a
    dependency of the ``dev`` extra, not of the operator (``pipeline-operator run`` never needs it)."""
    import yaml
    return HEADER + cast(str, yaml.safe_dump(crd or render(), sort_keys=False, width=120))
