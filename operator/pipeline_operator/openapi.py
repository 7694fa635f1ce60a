"""The HTTP API's own OpenAPI document (served at ``/v0/openapi.json``).

It is Feldera's document for the endpoints we serve (``data/feldera-openapi-subset.json``, kept
as Feldera publishes it), plus what this API adds: listing and reading pipelines, a JSON
ErrorResponse for a bad ``selector`` (Feldera answers plain text there), 401 and 403 on every
pipeline endpoint, and the bearer-token security scheme.
"""

from __future__ import annotations

import copy
import functools
import json
from importlib import resources
from importlib.metadata import version as package_version
from typing import Any

ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
NAME = {"name": "pipeline_name", "in": "path", "required": True, "description": "Unique pipeline name",
        "schema": {"type": "string"}}
TENANT = {"name": "Feldera-Tenant", "in": "header", "required": False,
          "description": "The namespace (default: the operator's --api-default-namespace)",
          "schema": {"type": "string"}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": copy.deepcopy(ERROR)}


@functools.cache
def document() -> dict[str, Any]:
    doc = json.loads(resources.files("pipeline_operator").joinpath("data/feldera-openapi-subset.json").read_text())
    doc["info"] = {"title": "pipeline-operator API", "version": package_version("pipeline-operator"),
                   "description": "Feldera-compatible monitor events and lifecycle actions of Pipeline resources."}
    doc.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    schemas = doc["components"]["schemas"]
    schemas["PipelineInfo"] = {
        "type": "object", "required": ["name", "deployment_status", "deployment_resources_status", "program_status",
                                       "storage_status", "deployment_has_error"],
        "properties": {
            "id": {"type": "string", "nullable": True}, "name": {"type": "string"},
            "deployment_status": {"$ref": "#/components/schemas/CombinedStatus"},
            "deployment_desired_status": {"allOf": [{"$ref": "#/components/schemas/CombinedDesiredStatus"}],
                                          "nullable": True},
            "deployment_resources_status": {"$ref": "#/components/schemas/ResourcesStatus"},
            "deployment_resources_desired_status": {"allOf": [{"$ref": "#/components/schemas/ResourcesDesiredStatus"}],
                                                    "nullable": True},
            "deployment_runtime_status": {"allOf": [{"$ref": "#/components/schemas/RuntimeStatus"}], "nullable": True},
            "deployment_runtime_desired_status": {"allOf": [{"$ref": "#/components/schemas/RuntimeDesiredStatus"}],
                                                  "nullable": True},
            "deployment_has_error": {"type": "boolean"},
            "deployment_error": {"allOf": [{"$ref": "#/components/schemas/ErrorResponse"}], "nullable": True},
            "program_status": {"$ref": "#/components/schemas/ProgramStatus"},
            "storage_status": {"$ref": "#/components/schemas/StorageStatus"},
        },
    }
    selector = {"name": "selector", "in": "query", "required": False,
                "schema": {"type": "string", "enum": ["all", "status"]}}
    ok_info = {"description": "The pipeline", "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/PipelineInfo"}}}}
    paths = doc["paths"]
    paths["/v0/pipelines"] = {"get": {"operationId": "list_pipelines", "summary": "List the pipelines of a namespace",
                                      "parameters": [selector],
                                      "responses": {"200": {"description": "The pipelines", "content": {
                                          "application/json": {"schema": {"type": "array", "items": {
                                              "$ref": "#/components/schemas/PipelineInfo"}}}}},
                                          "400": _error("Bad request")}}}
    paths["/v0/pipelines/{pipeline_name}"] = {"get": {"operationId": "get_pipeline", "summary": "Read a pipeline",
                                                      "parameters": [NAME, selector],
                                                      "responses": {"200": ok_info, "400": _error("Bad request"),
                                                                    "404": _error("Unknown pipeline")}}}
    for path, item in paths.items():
        for method, operation in item.items():
            if path == "/v0/config":
                continue
            operation.setdefault("parameters", []).append(copy.deepcopy(TENANT))
            operation["security"] = [{"bearer": []}]
            responses = operation.setdefault("responses", {})
            responses.setdefault("400", _error("Bad request"))
            responses.setdefault("401", _error("Missing or invalid bearer token"))
            responses.setdefault("403", _error("RBAC does not allow this"))
            responses.setdefault("503", _error("Cannot be done now"))
    return doc
