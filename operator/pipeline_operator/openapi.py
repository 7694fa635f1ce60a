"""The HTTP API's own OpenAPI document (served at ``/v0/openapi.json``).

It is Feldera's document for the endpoints we serve: ``data/feldera-openapi-subset.json`` (events
and lifecycle actions) and ``data/feldera-openapi-pipelines.json`` (pipeline CRUD, the pipeline's
logs and the requests passed through to it, with every schema they reference), both kept as Feldera
publishes them; plus what this API adds: a JSON ErrorResponse for a bad ``selector`` (Feldera answers
plain text there), 401 and 403 on every pipeline endpoint, 409 for a field another manager owns, the
live event stream (``follow`` and ``after`` on the events list, answered as NDJSON or server-sent
events), 413 for a body past the bound and 429 for too many open streams, and the bearer-token
security scheme.
"""

from __future__ import annotations

import copy
import functools
import json
from importlib import resources
from importlib.metadata import version as package_version
from typing import Any, cast

ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
NAME = {"name": "pipeline_name", "in": "path", "required": True, "description": "Unique pipeline name",
        "schema": {"type": "string"}}
TENANT = {"name": "Feldera-Tenant", "in": "header", "required": False,
          "description": "The namespace (default: the operator's --api-default-namespace)",
          "schema": {"type": "string"}}
EVENTS = "/v0/pipelines/{pipeline_name}/events"
# The live event stream (api/follow.py): what this API adds to Feldera's list of events.
FOLLOW = [
    {"name": "follow", "in": "query", "required": False, "schema": {"type": "boolean", "default": False},
     "description": "Stream the events: first those newer than `after` (all retained ones without it), oldest "
                    "first, then each new one as it is recorded, as newline-delimited JSON, or as server-sent "
                    "events when `Accept` asks for `text/event-stream`. A client that reads slower than events "
                    "come gets a last line with the error code `StreamLagging` and the last event sent."},
    {"name": "after", "in": "query", "required": False, "schema": {"type": "string", "format": "uuid"},
     "description": "With `follow`: replay only the events recorded after this one (404 "
                    "`UnknownPipelineMonitorEvent` if it is no longer retained). Server-sent events resume from "
                    "`Last-Event-ID` as well."},
]
STREAM_BODY = {"schema": {"type": "string"}}
# Open-ended streams, bounded per client address and overall; bodies passed on to a pipeline, bounded.
STREAMS = ("/logs", "/egress/{table_name}", "/query", "/events")
BODIES = ("/ingress/{table_name}", "/egress/{table_name}")


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": copy.deepcopy(ERROR)}


def _load(name: str) -> dict[str, Any]:
    return cast(dict[str, Any], json.loads(resources.files("pipeline_operator").joinpath(f"data/{name}").read_text()))


@functools.cache
def document() -> dict[str, Any]:
    doc = _load("feldera-openapi-subset.json")
    crud = _load("feldera-openapi-pipelines.json")  # Feldera's pipeline CRUD paths and their schemas
    doc["info"] = {"title": "pipeline-operator API", "version": package_version("pipeline-operator"),
                   "description": "Feldera-compatible pipelines, monitor events and lifecycle actions of Pipeline "
                                  "resources."}
    doc.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    schemas = doc["components"]["schemas"]
    for name, schema in crud["components"]["schemas"].items():
        schemas.setdefault(name, schema)
    paths = doc["paths"]
    for path, item in crud["paths"].items():
        paths[path] = copy.deepcopy(item)
        for operation in paths[path].values():
            # Ours: Feldera-tenant header, bearer tokens, and the status_with_connectors selector.
            for parameter in operation.get("parameters", []):
                parameter.pop("example", None)
    events = paths[EVENTS]["get"]
    events["parameters"] += copy.deepcopy(FOLLOW)
    events["responses"]["200"]["content"].update({"application/x-ndjson": copy.deepcopy(STREAM_BODY),
                                                  "text/event-stream": copy.deepcopy(STREAM_BODY)})
    for path, item in paths.items():
        for method, operation in item.items():
            if path == "/v0/config":
                continue
            operation.setdefault("parameters", []).append(copy.deepcopy(TENANT))
            operation["security"] = [{"bearer": []}]
            responses = operation.setdefault("responses", {})
            if path.endswith(STREAMS):
                responses.setdefault("429", _error("Too many streams are open (overall, or from this client)"))
            if path.endswith(BODIES):
                responses.setdefault("413", _error("The body is larger than the operator passes on"))
            responses.setdefault("400", _error("Bad request"))
            responses.setdefault("401", _error("Missing or invalid bearer token"))
            responses.setdefault("403", _error("RBAC does not allow this"))
            responses.setdefault("503", _error("Cannot be done now"))
            if path.startswith("/v0/pipelines/{pipeline_name}"):
                responses.setdefault("404", _error("Unknown pipeline"))
            if method in ("put", "patch", "post"):
                responses.setdefault("409", _error("A field is managed by another field manager, or the name "
                                                   "is taken"))
    return doc
