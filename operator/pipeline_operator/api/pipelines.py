"""Pipeline CRUD: ``GET /v0/pipelines[/{name}]``, ``POST /v0/pipelines``, ``PUT``, ``PATCH`` and ``DELETE
/v0/pipelines/{name}``.

Reads answer Feldera's ``PipelineSelectedInfo`` (:mod:`.pipeline_shape`) for the selectors ``all`` (the default,
as Feldera's) and ``status``. Writes create, replace, modify and delete the Pipeline resource,
authorised as the caller (``create``/``update``/``patch``/``delete`` on pipelines in the
namespace) and written with server-side apply as the field manager ``pipeline-operator-api``:
``kubectl`` and GitOps tools see which fields the API owns, and a change of a field that another
manager (Argo CD, Flux, kubectl) owns is refused with 409, naming that manager.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic import ValidationError

from ..core import resource
from ..core.lifecycle import PipelineState, delete_refusal, edit_refusal, update_refusal
from ..kube.client import FieldConflict, Forbidden, Rejected
from ..kube.events import ANNOTATION_REQUESTED_BY
from ..models import API_GROUP, API_VERSION, KIND, PipelineStatus
from ..reconcile.spec import ANNOTATION_API_APPLIED_SPEC, spec_marker
from . import writes
from .auth import PIPELINE
from .errors import ApiError, unknown_pipeline
from .pipeline_shape import (
    FIELDS,
    GET_ONLY,
    MAX_NAME,
    METADATA_FIELDS,
    NAME_RE,
    body_fields,
    check_name,
    creation_order,
    feldera_fields,
    pipeline_info,
    runtime_config_of,
    same_value,
    selector_of,
    shown_name,
    spec_of,
    with_fields,
)

if TYPE_CHECKING:
    from .auth import Gate
    from .deps import ApiDeps

log = logging.getLogger(__name__)


class Pipelines:
    """The pipeline CRUD routes of one :class:`~.server.ApiServer`."""

    def __init__(self, gate: Gate, deps: ApiDeps) -> None:
        self.gate = gate
        self.deps = deps

    def routes(self, r: web.UrlDispatcher) -> None:
        r.add_get("/v0/pipelines", self.list)
        r.add_post("/v0/pipelines", self.post)
        r.add_get("/v0/pipelines/{name}", self.get)
        r.add_put("/v0/pipelines/{name}", self.put)
        r.add_patch("/v0/pipelines/{name}", self.patch)
        r.add_delete("/v0/pipelines/{name}", self.delete)

    async def _answer(self, obj: dict[str, Any], state: PipelineState | None, status: int = 200,
                      selector: str = "all") -> web.Response:
        return web.json_response(await pipeline_info(self.deps, obj, state, selector), status=status,
                                 headers={"Cache-Control": "no-cache"})

    # -- reads ------------------------------------------------------------------------------------

    async def list(self, request: web.Request) -> web.Response:
        namespace = await self.gate.namespace(request)
        await self.gate.authorize(request, "list", namespace)
        selector = selector_of(request)
        found = [(m.obj, m.state) for m in self.deps.pipelines.in_namespace(namespace) if m.obj is not None]
        answer = []
        for obj, state in sorted(found, key=creation_order):
            try:
                answer.append(await pipeline_info(self.deps, obj, state, selector))
            except (ValidationError, ApiError) as exc:  # one Pipeline that cannot be read does not hide the others
                log.warning("%s/%s: not listed, its status cannot be read: %s", namespace,
                            (obj.get("metadata") or {}).get("name"), str(exc)[:300])
        return web.json_response(answer, headers={"Cache-Control": "no-cache"})

    async def get(self, request: web.Request) -> web.Response:
        monitor = await self.gate.pipeline(request, "get")
        assert monitor.obj is not None
        return await self._answer(monitor.obj, monitor.state, selector=selector_of(request))

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
        applied = spec_of(fields)
        metadata: dict[str, Any] = {"name": name, "namespace": namespace}
        # The spec this apply makes, named in the same write: the monitoring loop then knows the change was
        # made through the API, which starts nothing and dismisses nothing (Desired.spec_by_api).
        marker = spec_marker(with_fields((existing or {}).get("spec") or {}, fields))
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
        namespace = await self.gate.namespace(request)
        await self.gate.authenticate(request)  # before the body is read: strangers hold no slot with slow bodies
        name = request.match_info.get("name")
        raw = await self._body(request)
        if name is None:  # POST /v0/pipelines names the pipeline in the body
            name = raw.get("name") if isinstance(raw.get("name"), str) else None
            if name is None:
                raise ApiError(400, "InvalidRequestBody", "Field 'name' is required (a string)", {"field": "name"})
        elif isinstance(raw.get("name"), str) and raw["name"] != name:
            raise ApiError(400, "CannotRenamePipeline",
                           f"Cannot rename pipeline '{name}' to '{shown_name(raw['name'])}': a Pipeline is a "
                           "Kubernetes resource, whose name cannot change; create a new one and delete this one",
                           {"pipeline_name": name})
        check_name(name)  # Feldera checks the name first, then the configurations
        fields = body_fields(raw, partial=not replace)
        request[PIPELINE] = name
        existing = await self._current(namespace, name)
        # As the API server does: ``create`` names no resource (RBAC's resourceNames cannot limit it).
        if create and not replace:
            await self.gate.authorize(request, "create", namespace)
            if existing is not None:
                raise ApiError(409, "DuplicateName", "An entity with this name already exists",
                               {"pipeline_name": name})
        elif replace:  # a user learns whether the pipeline exists only if they may create or update it
            if existing is not None:
                await self.gate.authorize(request, "update", namespace, name)
            else:
                await self.gate.authorize(request, "create", namespace)
        else:
            await self.gate.authorize(request, "patch", namespace, name)
            if existing is None:
                raise unknown_pipeline(name)
        if existing is not None:
            current = feldera_fields(existing.get("spec") or {})
            merged = {**current, **fields}
            changed = {f for f in FIELDS if not same_value(f, merged[f], current[f])}
            if changed - METADATA_FIELDS:
                recorded = self._state(namespace, name, existing)
                refusal = update_refusal(recorded) or edit_refusal(
                    recorded, runtime_config_of(current["runtime_config"]), runtime_config_of(merged["runtime_config"]))
                if refusal is not None:
                    raise ApiError.refused(refusal)
            fields = merged
        action = "create" if existing is None else "update"
        obj = await self._apply(namespace, name, fields, self.gate.requested_by(request, action), existing)
        obj, state = await self._settled(namespace, name, obj)
        # Feldera's PipelineInfo: GET's answer without the bootstrap configuration it flattens in.
        info = {k: v for k, v in (await pipeline_info(self.deps, obj, state, "all")).items() if k not in GET_ONLY}
        return web.json_response(info, status=201 if existing is None else 200, headers={"Cache-Control": "no-cache"})

    async def post(self, request: web.Request) -> web.Response:
        return await self._write(request, create=True, replace=False)

    async def put(self, request: web.Request) -> web.Response:
        return await self._write(request, create=True, replace=True)

    async def patch(self, request: web.Request) -> web.Response:
        return await self._write(request, create=False, replace=False)

    async def delete(self, request: web.Request) -> web.Response:
        namespace = await self.gate.namespace(request)
        name = request.match_info["name"]
        await self.gate.authorize(request, "delete", namespace, name)
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
