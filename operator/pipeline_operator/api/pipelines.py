"""Feldera's pipeline shape and pipeline CRUD.

``GET /v0/pipelines[/{name}]`` answer Feldera's ``PipelineSelectedInfo`` for the selectors
``all`` (the default, as Feldera's) and ``status``. ``POST /v0/pipelines``, ``PUT``, ``PATCH`` and
``DELETE /v0/pipelines/{name}`` create, replace, modify and delete the Pipeline resource,
authorised as the caller (``create``/``update``/``patch``/``delete`` on pipelines in the
namespace) and written with server-side apply as the field manager ``pipeline-operator-api``:
``kubectl`` and GitOps tools see which fields the API owns, and a change of a field that another
manager (Argo CD, Flux, kubectl) owns is refused with 409, naming that manager.

Feldera's fields map to the spec: ``program_code`` to ``program.sql``, ``udf_rust`` and
``udf_toml`` to ``program.udfRust``/``udfToml``, ``runtime_config``, ``program_config``,
``description`` and ``tags`` to the fields of the same names.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import logging
import re
from typing import TYPE_CHECKING, Any, NoReturn

from aiohttp import web
from pydantic import BaseModel, ValidationError

from ..core import resource
from ..core.lifecycle import PipelineState, delete_refusal, edit_refusal, update_refusal
from ..feldera_config import ProgramConfig, RuntimeConfig, given
from ..kube.client import FieldConflict, Forbidden, Rejected
from ..kube.events import ANNOTATION_REQUESTED_BY
from ..models import (
    API_GROUP,
    API_VERSION,
    KIND,
    MAX_DESCRIPTION,
    PipelineDeployment,
    PipelineSpec,
    PipelineStatus,
    combined_desired_status,
    combined_status,
    format_timestamp,
    json_value,
)
from ..reconcile.spec import ANNOTATION_API_APPLIED_SPEC, spec_marker
from . import writes
from .errors import ApiError, unknown_pipeline, unreadable_pipeline
from .platform import FELDERA_VERSION
from .server import PIPELINE

if TYPE_CHECKING:
    from .server import ApiServer

log = logging.getLogger(__name__)

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
_GET_ONLY = frozenset({"bootstrap_policy", "silent_bootstrap"})


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


def _runtime_config(value: Any) -> RuntimeConfig:
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


def _spec_of(fields: dict[str, Any]) -> dict[str, Any]:
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


def _with_fields(spec: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
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


def _shown(name: str) -> str:
    return name if len(name) <= _SHOWN_NAME else f"{name[:_SHOWN_NAME]}... ({len(name)} characters)"


def _check_name(name: str) -> None:
    """Feldera's ``validate_name`` (``EmptyName``, ``TooLongName``, ``NameDoesNotMatchPattern``, in its order and
    with its messages), then what Kubernetes adds: a Feldera name that no Kubernetes object can have is
    ``NameDoesNotMatchPattern`` too, its message saying why."""
    length = len(name.encode())
    if not name:
        raise ApiError(400, "EmptyName", "Name cannot be be empty")
    if length > MAX_NAME:
        raise ApiError(400, "TooLongName", f"Name '{_shown(name)}' is longer ({length}) than maximum allowed "
                                           f"({MAX_NAME})", {"name": _shown(name), "length": length,
                                                             "maximum": MAX_NAME})
    if not FELDERA_NAME_RE.fullmatch(name):
        raise ApiError(400, "NameDoesNotMatchPattern",
                       f"Name '{_shown(name)}' contains characters which are not lowercase (a-z), uppercase (A-Z), "
                       "numbers (0-9), underscores (_) or hyphens (-)", {"name": _shown(name)})
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
        raise ApiError(400, "InvalidTag", f"Tag '{_shown(tag)}' is invalid: {reason}",
                       {"tag": _shown(tag), "reason": reason})


def _body_fields(raw: Any, *, partial: bool) -> dict[str, Any]:
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
        PipelineSpec.model_validate(_spec_of(fields))
    except Exception as exc:  # noqa: BLE001 - a validation error names the field
        raise ApiError(400, "InvalidRequestBody", f"Invalid pipeline: {str(exc)[:1000]}") from None
    return fields


def _creation_order(item: tuple[dict[str, Any], Any]) -> tuple[str, str]:
    """Feldera lists a tenant's pipelines by id, a UUIDv7: in the order they were created. A Kubernetes uid is
    random, so the order is the creation time's (``creationTimestamp``, whole seconds, always in UTC with a
    ``Z``, so that its text sorts as its time), and the name's among those created within the same second."""
    meta = item[0].get("metadata") or {}
    return str(meta.get("creationTimestamp") or ""), str(meta.get("name") or "")


class Pipelines:
    def __init__(self, server: ApiServer) -> None:
        self.server = server
        self.deps = server.deps

    def routes(self, r: web.UrlDispatcher) -> None:
        r.add_get("/v0/pipelines", self.list)
        r.add_post("/v0/pipelines", self.post)
        r.add_get("/v0/pipelines/{name}", self.get)
        r.add_put("/v0/pipelines/{name}", self.put)
        r.add_patch("/v0/pipelines/{name}", self.patch)
        r.add_delete("/v0/pipelines/{name}", self.delete)

    # -- Feldera's pipeline shape ---------------------------------------------------------------

    async def info(self, obj: dict[str, Any], state: PipelineState | None, selector: str) -> dict[str, Any]:
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
            info["program_info"] = await self.program_info(state)
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

    async def program_info(self, state: PipelineState) -> Any:
        if state.program_status.value != "Success" or not state.program_digest:
            return None
        artifact = await asyncio.to_thread(self.deps.artifact, state.program_digest)
        return (artifact or {}).get("program_info")

    @staticmethod
    def _selector(request: web.Request) -> str:
        selector = request.query.get("selector", "all")
        if selector not in _SELECTORS:
            raise ApiError(400, "InvalidSelector", f"Invalid selector '{selector[:50]}': expected one of "
                                                   f"{', '.join(_SELECTORS)}", {"selector": selector[:50]})
        return selector

    async def _answer(self, obj: dict[str, Any], state: PipelineState | None, status: int = 200,
                      selector: str = "all") -> web.Response:
        return web.json_response(await self.info(obj, state, selector), status=status,
                                 headers={"Cache-Control": "no-cache"})

    # -- reads ------------------------------------------------------------------------------------

    async def list(self, request: web.Request) -> web.Response:
        namespace = await self.server.namespace(request)
        await self.server.authorize(request, "list", namespace)
        selector = self._selector(request)
        found = [(m.obj, m.state) for m in self.deps.pipelines.in_namespace(namespace) if m.obj is not None]
        answer = []
        for obj, state in sorted(found, key=_creation_order):
            try:
                answer.append(await self.info(obj, state, selector))
            except (ValidationError, ApiError) as exc:  # one Pipeline that cannot be read does not hide the others
                log.warning("%s/%s: not listed, its status cannot be read: %s", namespace,
                            (obj.get("metadata") or {}).get("name"), str(exc)[:300])
        return web.json_response(answer, headers={"Cache-Control": "no-cache"})

    async def get(self, request: web.Request) -> web.Response:
        monitor = await self.server.pipeline(request, "get")
        assert monitor.obj is not None
        return await self._answer(monitor.obj, monitor.state, selector=self._selector(request))

    # -- writes -----------------------------------------------------------------------------------

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            raw = await request.json()
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise ApiError(400, "InvalidRequestBody", "The request body is not valid JSON (a UTF-8 JSON object "
                                                      "with Feldera's pipeline fields)") from None
        if not isinstance(raw, dict):
            raise ApiError(400, "InvalidRequestBody", "The request body must be a JSON object")
        return raw

    async def _current(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.deps.kube.get_pipeline(namespace, name)
        except Forbidden as exc:
            raise ApiError(503, "OperatorForbidden", str(exc)) from exc

    def _state(self, namespace: str, name: str, obj: dict[str, Any]) -> PipelineState:
        monitor = self.deps.pipelines.get(namespace, name)
        if monitor is not None and monitor.state is not None:
            return monitor.state
        return resource.from_status(PipelineStatus.model_validate(obj.get("status") or {}))

    async def _apply(self, namespace: str, name: str, fields: dict[str, Any], requested_by: str,
                     existing: dict[str, Any] | None) -> dict[str, Any]:
        # The requester is written by a merge patch right after the apply, never in the applied
        # configuration: the actions write the same annotation with merge patches (an "Update" of
        # this manager), and an apply of another value would conflict with it.
        applied = _spec_of(fields)
        metadata: dict[str, Any] = {"name": name, "namespace": namespace}
        # The spec this apply makes, named in the same write: the monitoring loop then knows the change was
        # made through the API, which starts nothing and dismisses nothing (Desired.spec_by_api).
        marker = spec_marker(_with_fields((existing or {}).get("spec") or {}, fields))
        if marker is not None:
            metadata["annotations"] = {ANNOTATION_API_APPLIED_SPEC: marker}
        body = {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": KIND, "metadata": metadata, "spec": applied}
        try:
            applied = await self.deps.kube.apply_pipeline(namespace, name, body, writes.FIELD_MANAGER)
            patched = await self.deps.kube.merge_patch_pipeline(
                namespace, name, {"metadata": {"annotations": {ANNOTATION_REQUESTED_BY: requested_by}}},
                writes.FIELD_MANAGER)
            return patched if patched is not None else applied
        except FieldConflict as exc:
            owners = sorted({m for _, m in exc.conflicts})
            raise ApiError(
                409, "FieldManagerConflict",
                f"Cannot change pipeline '{name}': {', '.join(f for f, _ in exc.conflicts)} "
                f"{'is' if len(exc.conflicts) == 1 else 'are'} managed by {', '.join(repr(o) for o in owners)} "
                "(a GitOps tool or kubectl). Change the pipeline where it is declared, or remove the field there "
                "first.", {"pipeline_name": name, "conflicts": [{"field": f, "manager": m}
                                                                 for f, m in exc.conflicts]}) from exc
        except Rejected as exc:
            if exc.status == 404:
                raise ApiError(404, "UnknownTenant", f"Namespace '{namespace}' does not exist: {exc}",
                               {"tenant": namespace}) from exc
            raise ApiError(400, "InvalidRequestBody", f"The pipeline is not valid: {exc}") from exc
        except Forbidden as exc:
            raise ApiError(503, "OperatorForbidden", str(exc)) from exc

    async def _settled(self, namespace: str, name: str, obj: dict[str, Any]) -> tuple[dict[str, Any],
                                                                                         PipelineState | None]:
        """Wait until the monitoring loop has seen this generation (a new pipeline's loop starts
        first), so that the SDK's next read shows the new program's status, not the old one's."""
        gen = writes.generation(obj)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + writes.SETTLE_SECONDS
        monitor = self.deps.pipelines.get(namespace, name)
        while monitor is None and loop.time() < deadline:
            await asyncio.sleep(0.05)
            monitor = self.deps.pipelines.get(namespace, name)
        if monitor is None:
            return obj, None
        monitor.adopt(obj)
        await writes.settle(monitor, writes.observed(gen), max(0.1, deadline - loop.time()))
        return monitor.obj or obj, monitor.state

    async def _write(self, request: web.Request, *, create: bool, replace: bool) -> web.Response:
        namespace = await self.server.namespace(request)
        await self.server.authenticate(request)  # before the body is read: strangers hold no slot with slow bodies
        name = request.match_info.get("name")
        raw = await self._body(request)
        if name is None:  # POST /v0/pipelines names the pipeline in the body
            name = raw.get("name") if isinstance(raw.get("name"), str) else None
            if name is None:
                raise ApiError(400, "InvalidRequestBody", "Field 'name' is required (a string)", {"field": "name"})
        elif isinstance(raw.get("name"), str) and raw["name"] != name:
            raise ApiError(400, "CannotRenamePipeline",
                           f"Cannot rename pipeline '{name}' to '{_shown(raw['name'])}': a Pipeline is a Kubernetes "
                           "resource, whose name cannot change; create a new one and delete this one",
                           {"pipeline_name": name})
        _check_name(name)  # Feldera checks the name first, then the configurations
        fields = _body_fields(raw, partial=not replace)
        request[PIPELINE] = name
        existing = await self._current(namespace, name)
        # As the API server does: ``create`` names no resource (RBAC's resourceNames cannot limit it).
        if create and not replace:
            await self.server.authorize(request, "create", namespace)
            if existing is not None:
                raise ApiError(409, "DuplicateName", "An entity with this name already exists",
                               {"pipeline_name": name})
        elif replace:  # a user learns whether the pipeline exists only if they may create or update it
            if existing is not None:
                await self.server.authorize(request, "update", namespace, name)
            else:
                await self.server.authorize(request, "create", namespace)
        else:
            await self.server.authorize(request, "patch", namespace, name)
            if existing is None:
                raise unknown_pipeline(name)
        if existing is not None:
            current = feldera_fields(existing.get("spec") or {})
            merged = {**current, **fields}
            changed = {f for f in FIELDS if not same_value(f, merged[f], current[f])}
            if changed - METADATA_FIELDS:
                recorded = self._state(namespace, name, existing)
                refusal = update_refusal(recorded) or edit_refusal(
                    recorded, _runtime_config(current["runtime_config"]), _runtime_config(merged["runtime_config"]))
                if refusal is not None:
                    raise ApiError.refused(refusal)
            fields = merged
        action = "create" if existing is None else "update"
        obj = await self._apply(namespace, name, fields, self.server.requested_by(request, action), existing)
        obj, state = await self._settled(namespace, name, obj)
        # Feldera's PipelineInfo: GET's answer without the bootstrap configuration it flattens in.
        info = {k: v for k, v in (await self.info(obj, state, "all")).items() if k not in _GET_ONLY}
        return web.json_response(info, status=201 if existing is None else 200, headers={"Cache-Control": "no-cache"})

    async def post(self, request: web.Request) -> web.Response:
        return await self._write(request, create=True, replace=False)

    async def put(self, request: web.Request) -> web.Response:
        return await self._write(request, create=True, replace=True)

    async def patch(self, request: web.Request) -> web.Response:
        return await self._write(request, create=False, replace=False)

    async def delete(self, request: web.Request) -> web.Response:
        namespace = await self.server.namespace(request)
        name = request.match_info["name"]
        await self.server.authorize(request, "delete", namespace, name)
        if len(name) > MAX_NAME or not NAME_RE.fullmatch(name):
            raise unknown_pipeline(name)
        existing = await self._current(namespace, name)
        if existing is None:
            raise unknown_pipeline(name)
        refusal = delete_refusal(self._state(namespace, name, existing))
        if refusal is not None:
            raise ApiError.refused(refusal)
        try:
            await self.deps.kube.delete_pipeline(namespace, name)
        except Forbidden as exc:
            raise ApiError(503, "OperatorForbidden", str(exc)) from exc
        # Feldera deletes synchronously: wait until the operator's finalizer has released it.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60.0
        # Polling is the point here: the deletion happens in the API server, there is no local event to wait on.
        while loop.time() < deadline and await self._current(namespace, name) is not None:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        return web.Response(status=200)


