"""Feldera's pipeline shape: a Pipeline resource read as Feldera's ``PipelineSelectedInfo`` (the selectors
``all``, ``status`` and ``status_with_connectors``), and a request's body read as the Pipeline's spec (Feldera's
names and rules for a pipeline's name, its fields, configurations and client metadata).

Feldera's fields map to the spec: ``program_code`` to ``program.sql``, ``udf_rust`` and
``udf_toml`` to ``program.udfRust``/``udfToml``, ``runtime_config``, ``program_config``,
``description`` and ``tags`` to the fields of the same names.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import re
from typing import TYPE_CHECKING, Any, NoReturn

from aiohttp import web
from pydantic import BaseModel, ValidationError

from ..core import resource
from ..core.lifecycle import PipelineState
from ..feldera_config import ProgramConfig, RuntimeConfig, given
from ..models import (
    MAX_DESCRIPTION,
    PipelineDeployment,
    PipelineSpec,
    PipelineStatus,
    combined_desired_status,
    combined_status,
    format_timestamp,
    json_value,
)
from .errors import ApiError, unreadable_pipeline
from .platform import FELDERA_VERSION

if TYPE_CHECKING:
    from .deps import ApiDeps

# Feldera's names (its validate_name): 1 to 100 bytes of letters, digits, '_' and '-'.
FELDERA_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]+$")
MAX_NAME = 100
# Of those, the ones a Kubernetes object can have (a DNS subdomain without dots): lower case, no '_', starting
# and ending with a letter or digit.
NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SHOWN_NAME = 256  # characters of a refused name repeated in the answer
# Feldera's request fields -> the spec (camelCase path) and the empty value Feldera fills in.
FIELDS: dict[str, tuple[tuple[str, ...], Any]] = {
    "program_code": (("program", "sql"), ""),
    "udf_rust": (("program", "udfRust"), ""),
    "udf_toml": (("program", "udfToml"), ""),
    "runtime_config": (("runtimeConfig",), {}),
    "program_config": (("programConfig",), {}),
    "description": (("description",), ""),
    "tags": (("tags",), []),
}
METADATA_FIELDS = {"description", "tags"}  # may change at any time (Feldera's client metadata)
_EMPTY_PROGRAM_ERROR = {"sql_compilation": None, "rust_compilation": None, "system_error": None}
_ALL_ONLY_SPEC = {"runtime_config", "program_code", "udf_rust", "udf_toml"}  # Feldera's "all" selector only
_ALL_ONLY_STATE = {"deployment_resources_status_details", "program_error"}
_NOT_FELDERA = {"program_digest"}  # ours, not a field of Feldera's pipeline
_REQUIRED_SINCE = ("deployment_resources_status_since", "deployment_resources_desired_status_since",
                   "program_status_since")
_SELECTORS = ("all", "status", "status_with_connectors")
# What Feldera's GET answer has and its answer to a write (POST, PUT, PATCH: PipelineInfoInternal) has not.
GET_ONLY = frozenset({"bootstrap_policy", "silent_bootstrap"})


# Feldera's configurations: validated as Feldera's manager does, with its error codes.
CONFIGS: dict[str, tuple[type[BaseModel], str]] = {
    "runtime_config": (RuntimeConfig, "InvalidRuntimeConfig"),
    "program_config": (ProgramConfig, "InvalidProgramConfig"),
}
_MAX_REPORTED_ERRORS = 10
# Feldera's RuntimeSelector: a released version or a commit of feldera/feldera.
RUNTIME_VERSION_RE = re.compile(r"^([0-9a-f]{40}|v\d+\.\d+\.\d+)$")


def _field_path(field: str, loc: tuple[int | str, ...]) -> str:
    path = field
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def checked_config(field: str, value: Any) -> dict[str, Any]:
    """``runtime_config`` or ``program_config`` as Feldera reads it: malformed is 400 with Feldera's code
    (``InvalidRuntimeConfig``, ``InvalidProgramConfig``) naming each field; keys Feldera does not know are
    dropped (Feldera ignores them and does not store them), Feldera's legacy forms are written in the
    current form, and what was not given is left for the API server to fill in with Feldera's defaults."""
    model, code = CONFIGS[field]
    try:
        parsed = model.model_validate(value)
    except ValidationError as exc:
        problems = [{"field": _field_path(field, e["loc"]), "message": e["msg"][:300]}
                    for e in exc.errors()[:_MAX_REPORTED_ERRORS]]
        _invalid_config(field, code, problems)
    if isinstance(parsed, ProgramConfig) and parsed.runtime_version is not None \
            and not RUNTIME_VERSION_RE.fullmatch(parsed.runtime_version):
        # Feldera's RuntimeSelector (checked here, not in the CRD: a Pipeline stored before stays readable).
        _invalid_config(field, code, [{"field": f"{field}.runtime_version", "message": (
            f"The requested runtime version '{parsed.runtime_version}' is neither a valid version (vX.Y.Z) nor a "
            "valid git hash.")}])
    return given(parsed)


def _invalid_config(field: str, code: str, problems: list[dict[str, str]]) -> NoReturn:
    said = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
    raise ApiError(400, code, f"JSON for '{field}' field is not valid due to: {said}",
                   {"field": problems[0]["field"], "errors": problems}) from None


def runtime_config_of(value: Any) -> RuntimeConfig:
    """A stored or given ``runtime_config`` as Feldera reads it (what is left out takes its default)."""
    try:
        return RuntimeConfig.model_validate(value or {})
    except ValidationError:
        return RuntimeConfig()  # stored before the schema bounded it: compared as the defaults


def same_value(field: str, a: Any, b: Any) -> bool:
    """Whether two values of a Feldera field say the same (a configuration: the same once read, so a
    default the API server filled in is no change)."""
    if a == b:
        return True
    if field not in CONFIGS:
        return False
    model = CONFIGS[field][0]
    try:
        return bool(model.model_validate(a or {}) == model.model_validate(b or {}))
    except ValidationError:
        return False


def _get(spec: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = spec
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def feldera_fields(spec: dict[str, Any]) -> dict[str, Any]:
    """The Feldera fields a spec holds (with Feldera's empty values where it holds none)."""
    out = {}
    for field, (path, empty) in FIELDS.items():
        value = _get(spec, path)
        out[field] = empty if value is None else value
    return out


def spec_of(fields: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    for field, value in fields.items():
        path = FIELDS[field][0]
        target = spec
        for key in path[:-1]:
            target = target.setdefault(key, {})
        target[path[-1]] = value
    return spec


# Feldera asks a pipeline for its connectors' errors only in these runtime statuses.
_CONNECTOR_STATS_STATUSES = frozenset({"Bootstrapping", "Replaying", "Running", "Paused"})


def connector_stats(state: PipelineState) -> dict[str, int] | None:
    """Feldera's ``connectors`` (``ConnectorStats``: the errors of every connector, summed) from what the
    pipeline last reported in its runtime status details (``connector_stats``), in the runtime statuses in
    which Feldera asks for them; None otherwise, or when the pipeline reported nothing usable."""
    runtime = state.deployment_runtime_status
    if runtime is None or runtime.value not in _CONNECTOR_STATS_STATUSES:
        return None
    details = state.deployment_runtime_status_details
    reported = details.get("connector_stats") if isinstance(details, dict) else None
    errors = reported.get("num_errors") if isinstance(reported, dict) else None
    if isinstance(errors, bool) or not isinstance(errors, int) or not 0 <= errors < 2**64:
        return None
    return {"num_errors": errors}


def with_fields(spec: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with Feldera's ``fields`` in place (what applying them makes of it)."""
    out = copy.deepcopy(spec)
    for field, value in fields.items():
        path = FIELDS[field][0]
        target = out
        for key in path[:-1]:
            if not isinstance(target.get(key), dict):
                target[key] = {}
            target = target[key]
        target[path[-1]] = value
    return out


def _since(*stamps: dt.datetime | None, default: str) -> str:
    known = [s for s in stamps if s is not None]
    return format_timestamp(max(known)) if known else default


def shown_name(name: str) -> str:
    return name if len(name) <= _SHOWN_NAME else f"{name[:_SHOWN_NAME]}... ({len(name)} characters)"


def check_name(name: str) -> None:
    """Feldera's ``validate_name`` (``EmptyName``, ``TooLongName``, ``NameDoesNotMatchPattern``, in its order and
    with its messages), then what Kubernetes adds: a Feldera name that no Kubernetes object can have is
    ``NameDoesNotMatchPattern`` too, its message saying why."""
    length = len(name.encode())
    if not name:
        raise ApiError(400, "EmptyName", "Name cannot be be empty")
    if length > MAX_NAME:
        raise ApiError(400, "TooLongName", f"Name '{shown_name(name)}' is longer ({length}) than maximum allowed "
                                           f"({MAX_NAME})", {"name": shown_name(name), "length": length,
                                                             "maximum": MAX_NAME})
    if not FELDERA_NAME_RE.fullmatch(name):
        raise ApiError(400, "NameDoesNotMatchPattern",
                       f"Name '{shown_name(name)}' contains characters which are not lowercase (a-z), uppercase (A-Z), "
                       "numbers (0-9), underscores (_) or hyphens (-)", {"name": shown_name(name)})
    if not NAME_RE.fullmatch(name):
        raise ApiError(400, "NameDoesNotMatchPattern",
                       f"Name '{name}' is a valid Feldera name, but not a valid name here: a pipeline is a "
                       "Kubernetes resource, whose name has no upper-case letters and no underscores (_), and "
                       "starts and ends with a lower-case letter or a digit (a-z, 0-9, and '-' in between)",
                       {"name": name, "pattern": NAME_RE.pattern})


# Feldera's rules for tags (the Feldera versions that have tags: v0.306 has none): at most 50 tags, each of
# 1 to 50 characters among these.
FELDERA_TAG_RE = re.compile(r"^[a-zA-Z0-9 ._/|\\:=-]+$")
MAX_FELDERA_TAGS = 50
MAX_FELDERA_TAG = 50


def _check_client_metadata(raw: dict[str, Any]) -> None:
    """The description's bound (Feldera v0.306 has none; a Pipeline is a Kubernetes object, whose size is
    bounded: ``TooLongDescription``, the code of the Feldera versions that bound it) and Feldera's rules for tags
    (``TooManyTags``, ``InvalidTag``, as the Feldera versions that have tags check them)."""
    description, tags = raw.get("description"), raw.get("tags")
    if isinstance(description, str) and len(description) > MAX_DESCRIPTION:
        raise ApiError(400, "TooLongDescription",
                       f"Description is longer ({len(description)}) than maximum allowed ({MAX_DESCRIPTION}): a "
                       "pipeline is a Kubernetes resource, whose size is bounded",
                       {"length": len(description), "maximum": MAX_DESCRIPTION})
    if not isinstance(tags, list):
        return
    if len(tags) > MAX_FELDERA_TAGS:
        raise ApiError(400, "TooManyTags", f"Pipeline has more tags ({len(tags)}) than the maximum allowed "
                                           f"({MAX_FELDERA_TAGS})", {"count": len(tags), "maximum": MAX_FELDERA_TAGS})
    for tag in tags:
        if not isinstance(tag, str):
            continue  # the type is refused with the other fields'
        if not tag:
            reason = "it cannot be empty"
        elif len(tag) > MAX_FELDERA_TAG:
            reason = f"it is {len(tag)} characters long, but the maximum is {MAX_FELDERA_TAG}"
        elif not FELDERA_TAG_RE.fullmatch(tag):
            reason = ("it may contain only ASCII letters (a-z, A-Z), numbers (0-9), or one of space, '.', '_', '/', "
                      "'|', '\\', ':', '=' and '-'")
        else:
            continue
        raise ApiError(400, "InvalidTag", f"Tag '{shown_name(tag)}' is invalid: {reason}",
                       {"tag": shown_name(tag), "reason": reason})


def body_fields(raw: Any, *, partial: bool) -> dict[str, Any]:
    """Feldera's PostPutPipeline (or PatchPipeline with ``partial``), checked field by field."""
    if not isinstance(raw, dict):
        raise ApiError(400, "InvalidRequestBody", "The request body must be a JSON object")
    _check_client_metadata(raw)
    fields: dict[str, Any] = {}
    for field, (_, empty) in FIELDS.items():
        if field not in raw or (raw[field] is None and partial):
            continue
        value = raw[field]
        if value is None:
            value = empty
        if field in CONFIGS:
            fields[field] = checked_config(field, value)
            continue
        kind = type(empty)
        if not isinstance(value, kind) or (kind is list and not all(isinstance(t, str) for t in value)):
            names: dict[type, str] = {str: "a string", dict: "an object", list: "a list of strings"}
            expected = names[kind]
            raise ApiError(400, "InvalidRequestBody", f"Field '{field}' must be {expected}", {"field": field})
        fields[field] = value
    if not partial:
        if not isinstance(raw.get("program_code"), str):
            raise ApiError(400, "InvalidRequestBody", "Field 'program_code' is required (a string)",
                           {"field": "program_code"})
        for field, (_, empty) in FIELDS.items():
            fields.setdefault(field, empty)
    try:
        PipelineSpec.model_validate(spec_of(fields))
    except Exception as exc:  # noqa: BLE001 - a validation error names the field
        raise ApiError(400, "InvalidRequestBody", f"Invalid pipeline: {str(exc)[:1000]}") from None
    return fields


def creation_order(item: tuple[dict[str, Any], Any]) -> tuple[str, str]:
    """Feldera lists a tenant's pipelines by id, a UUIDv7: in the order they were created. A Kubernetes uid is
    random, so the order is the creation time's (``creationTimestamp``, whole seconds, always in UTC with a
    ``Z``, so that its text sorts as its time), and the name's among those created within the same second."""
    meta = item[0].get("metadata") or {}
    return str(meta.get("creationTimestamp") or ""), str(meta.get("name") or "")


async def pipeline_info(deps: ApiDeps, obj: dict[str, Any], state: PipelineState | None,
                        selector: str) -> dict[str, Any]:
    """Feldera's ``PipelineSelectedInfo``: the spec's Feldera fields, the state's Feldera fields
    (as :class:`models.PipelineDeployment` declares them) and the combined statuses."""
    meta = obj.get("metadata") or {}
    unreadable = unreadable_pipeline(obj)
    if unreadable is not None:
        raise unreadable
    status = PipelineStatus.model_validate(obj.get("status") or {})
    state = state or resource.from_status(status)
    created = meta.get("creationTimestamp") or format_timestamp(dt.datetime.now(dt.UTC))
    fields = feldera_fields(obj.get("spec") or {})
    try:
        refresh = int(meta.get("resourceVersion") or 0)
    except ValueError:
        refresh = int(meta.get("generation") or 1)
    info: dict[str, Any] = {
        "id": meta.get("uid"), "name": meta.get("name"), "created_at": created,
        "version": state.version or int(meta.get("generation") or 1), "platform_version": FELDERA_VERSION,
        "refresh_version": refresh,
        **{k: v for k, v in fields.items() if selector == "all" or k not in _ALL_ONLY_SPEC},
    }
    for name in PipelineDeployment.model_fields:
        if name in _NOT_FELDERA or (selector != "all" and name in _ALL_ONLY_STATE):
            continue
        info[name] = json_value(getattr(state, name))
    # Feldera's values where ours differ in form.
    if state.bootstrap_policy is not None:
        info["bootstrap_policy"] = state.bootstrap_policy.feldera
    info["program_version"] = state.program_version or 1
    for since in _REQUIRED_SINCE:
        info[since] = info[since] or created
    if state.deployment_runtime_status is None:
        info["deployment_runtime_status_since"] = info["deployment_runtime_desired_status_since"] = None
    if selector == "all":
        info["program_error"] = state.program_error or _EMPTY_PROGRAM_ERROR
        info["program_info"] = await program_info(deps, state)
    info |= {
        "deployment_status": combined_status(state.deployment_resources_status,
                                             state.deployment_runtime_status).value,
        "deployment_status_since": _since(state.deployment_resources_status_since,
                                          state.deployment_runtime_status_since, default=created),
        "deployment_desired_status": combined_desired_status(
            state.deployment_resources_desired_status, state.deployment_runtime_desired_status,
            state.deployment_initial).value,
        "deployment_desired_status_since": _since(state.deployment_resources_desired_status_since,
                                                  state.deployment_runtime_desired_status_since, default=created),
    }
    if selector == "status_with_connectors":
        connectors = connector_stats(state)
        if connectors is not None:  # Feldera leaves the field out when it has no figures
            info["connectors"] = connectors
    return info


async def program_info(deps: ApiDeps, state: PipelineState) -> Any:
    """The compiled program's ``program_info`` (None until the program compiled)."""
    if state.program_status.value != "Success" or not state.program_digest:
        return None
    artifact = await asyncio.to_thread(deps.artifact, state.program_digest)
    return (artifact or {}).get("program_info")


def selector_of(request: web.Request) -> str:
    """The ``selector`` a read asks for (Feldera's default: ``all``)."""
    selector = request.query.get("selector", "all")
    if selector not in _SELECTORS:
        raise ApiError(400, "InvalidSelector", f"Invalid selector '{selector[:50]}': expected one of "
                                               f"{', '.join(_SELECTORS)}", {"selector": selector[:50]})
    return selector

