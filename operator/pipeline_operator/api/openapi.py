"""The HTTP API's OpenAPI document (served at ``/v0/openapi.json`` and, as Feldera serves it, at
``/api-doc/openapi.json``).

It is Feldera's own document at the version this API matches (``data/feldera-openapi.json``: the
``openapi.json`` of Feldera's commit c44a2456a, version 0.306.0, kept as Feldera publishes it): every path,
operation and schema as Feldera's. What this API adds is layered on it, never replacing what Feldera says: the
``Feldera-Tenant`` header (the namespace) on every ``/v0`` operation, the live event stream (``follow`` and
``after`` on the events list, answered as NDJSON or server-sent events), and the error answers this API gives
besides Feldera's (401 and 403 from Kubernetes' authentication and RBAC, 409 for a field another manager owns,
413 for a body past the bound, 429 for too many open streams, 503 when it cannot answer now, 501 for the
routes Kubernetes rules out); ``info`` names the operator that serves it (``x-served-by``).
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
STREAMS = ("/logs", "/egress/{table_name}", "/query", "/events", "/time_series_stream", "/samply_profile")
BODIES = ("/ingress/{table_name}", "/egress/{table_name}", "/clock/advance", "/command")
RULED_OUT = ("/v0/api_keys",)  # Feldera's routes Kubernetes rules out (api/manager.py): 501


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": copy.deepcopy(ERROR)}


def _load(name: str) -> dict[str, Any]:
    return cast(dict[str, Any], json.loads(resources.files("pipeline_operator").joinpath(f"data/{name}").read_text()))


@functools.cache
def document() -> dict[str, Any]:
    doc = _load("feldera-openapi.json")  # Feldera c44a2456a's own document
    doc["info"]["x-served-by"] = f"pipeline-operator {package_version('pipeline-operator')}"
    paths = doc["paths"]
    events = paths[EVENTS]["get"]
    events["parameters"] += copy.deepcopy(FOLLOW)
    events["responses"]["200"]["content"].update({"application/x-ndjson": copy.deepcopy(STREAM_BODY),
                                                  "text/event-stream": copy.deepcopy(STREAM_BODY)})
    for path, item in paths.items():
        for method, operation in item.items():
            if not path.startswith("/v0/") or path == "/v0/config":  # served to anyone, whatever the tenant
                continue
            operation.setdefault("parameters", []).append(copy.deepcopy(TENANT))
            responses = operation.setdefault("responses", {})
            if path.startswith(RULED_OUT):
                responses.setdefault("501", _error("Not served: Kubernetes rules it out (the message says why)"))
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
