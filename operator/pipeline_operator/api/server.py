"""The operator's HTTP API: Feldera-compatible monitor events and lifecycle actions.

Feldera's own SDK works against it unchanged: ``FelderaClient(url, api_key=token,
tenant=namespace)``. Reads come from the event store and the operator's in-memory view of
Pipelines (no API-server call per request beyond cached authentication checks); actions are
patches of the Pipeline resource, written with the field manager ``pipeline-operator-api``.

Authentication (``--api-auth kubernetes``, the default): the bearer token is checked with a
TokenReview and every request with a SubjectAccessReview on ``pipelines.dataflow.dev`` in the
target namespace (``get``/``list`` to read, ``patch`` to act), both cached for a few seconds.
Authorization is checked before anything else, so a user learns nothing about a namespace they
may not read, not even whether a pipeline exists there.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from importlib.metadata import version as package_version
from typing import Any

from aiohttp import web
from cachetools import TTLCache
from kubernetes.client.exceptions import ApiException
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from . import openapi
from .models import (
    API_GROUP,
    API_VERSION,
    PLURAL,
    ErrorResponse,
    PipelineMonitorEventFieldSelector,
    PipelineStatus,
)

log = logging.getLogger(__name__)

FIELD_MANAGER = "pipeline-operator-api"
TENANT_HEADER = "Feldera-Tenant"
NAMESPACE_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
AUTH_CACHE_SECONDS = 10.0
ANNOTATIONS = {"clear": "dataflow.dev/clear-storage", "dismiss_error": "dataflow.dev/dismiss-error",
               "approve": "dataflow.dev/approve"}


class ApiError(Exception):
    """An error answered as Feldera's ErrorResponse."""

    def __init__(self, status: int, error_code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status, self.error_code, self.message, self.details = status, error_code, message, details

    def response(self) -> web.Response:
        body = ErrorResponse(message=self.message, error_code=self.error_code, details=self.details)
        headers = {"Retry-After": "5"} if self.status == 503 else None
        return web.json_response(body.model_dump(mode="json"), status=self.status, headers=headers)


class Metrics:
    """Prometheus metrics of the operator (served at ``/metrics``)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("pipeline_operator_api_requests", "HTTP API requests", ["route", "code"],
                                registry=self.registry)
        self.request_seconds = Histogram("pipeline_operator_api_request_seconds", "HTTP API request duration",
                                         ["route"], registry=self.registry)
        self.reconcile_seconds = Histogram("pipeline_operator_monitoring_pass_seconds",
                                           "Duration of one monitoring pass (observe, decide, record, act)",
                                           registry=self.registry)
        self.events = Counter("pipeline_operator_monitor_events", "Monitor events recorded", ["kind"],
                              registry=self.registry)
        self.pipelines = Gauge("pipeline_operator_pipelines", "Pipelines by resources status",
                               ["resources_status"], registry=self.registry)
        self.store_events = Gauge("pipeline_operator_event_store_events", "Events in the event store",
                                  registry=self.registry)


def _selector(request: web.Request) -> PipelineMonitorEventFieldSelector:
    raw = request.query.get("selector", "status")
    try:
        return PipelineMonitorEventFieldSelector(raw)
    except ValueError:
        raise ApiError(400, "InvalidSelector", f"Invalid selector '{raw[:50]}': expected 'all' or 'status'",
                       {"selector": raw[:50]}) from None


def _bool(request: web.Request, name: str, default: bool) -> bool:
    raw = request.query.get(name)
    if raw is None:
        return default
    if raw.lower() in ("true", "1"):
        return True
    if raw.lower() in ("false", "0"):
        return False
    raise ApiError(400, "InvalidQueryParameter", f"{name} must be true or false, not '{raw[:20]}'")


class ApiServer:
    def __init__(self, ctx: Any, auth: str = "kubernetes", default_namespace: str = "default",
                 max_concurrency: int = 64) -> None:
        self.ctx = ctx
        self.auth = auth
        self.default_namespace = default_namespace
        self.metrics: Metrics = ctx.metrics
        self._tokens: TTLCache = TTLCache(maxsize=10_000, ttl=AUTH_CACHE_SECONDS)
        self._access: TTLCache = TTLCache(maxsize=50_000, ttl=AUTH_CACHE_SECONDS)
        self._limit = asyncio.Semaphore(max_concurrency)
        self.ready = False
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    # -- the application ------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024, middlewares=[self._middleware])
        r = app.router
        r.add_get("/healthz", self.healthz)
        r.add_get("/readyz", self.readyz)
        r.add_get("/metrics", self.metrics_page)
        r.add_get("/v0/config", self.config)
        r.add_get("/v0/openapi.json", self.openapi)
        r.add_get("/v0/pipelines", self.list_pipelines)
        r.add_get("/v0/pipelines/{name}", self.get_pipeline)
        r.add_get("/v0/pipelines/{name}/events", self.list_events)
        r.add_get("/v0/pipelines/{name}/events/{event_id}", self.get_event)
        for action in ("start", "stop", "pause", "resume", "activate", "approve", "clear", "dismiss_error"):
            r.add_post(f"/v0/pipelines/{{name}}/{action}", self._action(action))
        return app

    async def start(self, host: str, port: int) -> None:
        # Bounded: 64 KiB bodies, 8 KiB request lines and headers, 64 requests at once, idle
        # connections closed after 15 s.
        self._runner = web.AppRunner(self.app(), access_log=None, handler_cancellation=True, keepalive_timeout=15,
                                     max_line_size=8190, max_field_size=8190)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, backlog=128)
        await site.start()
        sockets = site._server.sockets if site._server else []  # type: ignore[union-attr]
        self.port = sockets[0].getsockname()[1] if sockets else port
        log.info("HTTP API listening on http://%s:%s (auth: %s)", host, self.port, self.auth)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                          ) -> web.StreamResponse:
        route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
        started = time.perf_counter()
        try:
            async with self._limit:
                response = await handler(request)
        except ApiError as exc:
            response = exc.response()
        except web.HTTPException as exc:
            code = {404: "NotFound", 405: "MethodNotAllowed", 413: "PayloadTooLarge"}.get(exc.status, "BadRequest")
            response = ApiError(exc.status, code, exc.reason or "Request failed").response()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("HTTP API: %s %s failed", request.method, request.path)
            response = ApiError(500, "InternalServerError",
                                "The operator failed to answer this request; see its log").response()
        self.metrics.requests.labels(route, str(response.status)).inc()
        self.metrics.request_seconds.labels(route).observe(time.perf_counter() - started)
        return response

    # -- authentication and authorization ---------------------------------------------------------

    def namespace(self, request: web.Request) -> str:
        namespace = request.headers.get(TENANT_HEADER) or self.default_namespace
        if not NAMESPACE_RE.match(namespace) or len(namespace) > 63:
            raise ApiError(400, "InvalidTenant", f"'{namespace[:70]}' is not a namespace name")
        return namespace

    async def authorize(self, request: web.Request, verb: str, namespace: str) -> None:
        if self.auth == "none":
            return
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer ") or len(header) > 16384:
            raise ApiError(401, "Unauthorized", "A bearer token is required (Authorization: Bearer <token>)")
        token = header[len("Bearer "):].strip()
        user = self._tokens.get(token)
        if user is None:
            user = await self._review_token(token)
            self._tokens[token] = user
        if not user:
            raise ApiError(401, "Unauthorized", "The bearer token is not valid")
        key = (user["username"], tuple(user.get("groups") or ()), verb, namespace)
        allowed = self._access.get(key)
        if allowed is None:
            allowed = await self._review_access(user, verb, namespace)
            self._access[key] = allowed
        if not allowed:
            raise ApiError(403, "Forbidden", f"User '{user['username']}' may not {verb} pipelines.{API_GROUP} "
                                             f"in namespace '{namespace}'")

    async def _review_token(self, token: str) -> dict[str, Any]:
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
        try:
            review = await self.ctx.kube.call(self.ctx.kube.auth.create_token_review, body)
        except ApiException as exc:
            log.error("TokenReview failed (%s %s): grant the operator system:auth-delegator", exc.status, exc.reason)
            raise ApiError(503, "AuthenticationUnavailable", "Cannot check the token now; try again") from exc
        status = review.status
        if not status or not status.authenticated or not status.user:
            return {}
        return {"username": status.user.username, "groups": list(status.user.groups or []),
                "uid": status.user.uid or ""}

    async def _review_access(self, user: dict[str, Any], verb: str, namespace: str) -> bool:
        body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                "spec": {"user": user["username"], "groups": user.get("groups") or [], "uid": user.get("uid", ""),
                         "resourceAttributes": {"group": API_GROUP, "resource": PLURAL, "verb": verb,
                                                "namespace": namespace}}}
        try:
            review = await self.ctx.kube.call(self.ctx.kube.authz.create_subject_access_review, body)
        except ApiException as exc:
            log.error("SubjectAccessReview failed (%s %s): grant the operator system:auth-delegator",
                      exc.status, exc.reason)
            raise ApiError(503, "AuthorizationUnavailable", "Cannot check permissions now; try again") from exc
        return bool(review.status and review.status.allowed)

    # -- lookups ----------------------------------------------------------------------------------

    def _monitor(self, namespace: str, name: str) -> Any:
        monitor = self.ctx.monitors.get((namespace, name))
        if monitor is None or monitor.obj is None:
            raise ApiError(404, "UnknownPipelineName", f"Unknown pipeline name '{name[:253]}'",
                           {"pipeline_name": name[:253]})
        return monitor

    async def _pipeline(self, request: web.Request, verb: str) -> Any:
        namespace = self.namespace(request)
        await self.authorize(request, verb, namespace)
        return self._monitor(namespace, request.match_info["name"])

    # -- handlers -----------------------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        if not self.ready:
            raise ApiError(503, "NotReady", "The operator is starting")
        return web.json_response({"status": "ready"})

    async def metrics_page(self, request: web.Request) -> web.Response:
        counts: dict[str, int] = {}
        for monitor in list(self.ctx.monitors.values()):
            if monitor.state is not None:
                status = monitor.state.resources_status.value
                counts[status] = counts.get(status, 0) + 1
        for status in ("Stopped", "Provisioning", "Provisioned", "Stopping"):
            self.metrics.pipelines.labels(status).set(counts.get(status, 0))
        store = getattr(self.ctx.sink, "store", None)
        if store is not None:
            self.metrics.store_events.set(await asyncio.to_thread(store.count))
        return web.Response(body=generate_latest(self.metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi.document())

    async def config(self, request: web.Request) -> web.Response:
        return web.json_response({
            "version": package_version("pipeline-operator"), "revision": "", "edition": "Open source",
            "telemetry": "", "changelog_url": "", "license_validity": None, "update_info": None,
            "build_info": {"build_cpu": "", "build_os": "", "rust_version": ""},
        })

    def _info(self, monitor: Any, selector: str) -> dict[str, Any]:
        obj = monitor.obj
        status = PipelineStatus.model_validate(obj.get("status") or {})
        data = status.model_dump(mode="json", exclude_none=False, exclude={"history", "conditions",
                                                                              "operator_state", "handled_actions"})
        error = status.deployment_error
        info: dict[str, Any] = {
            "id": obj["metadata"].get("uid"), "name": obj["metadata"]["name"], "description": "",
            "created_at": obj["metadata"].get("creationTimestamp"), "version": obj["metadata"].get("generation"),
            **{k: v for k, v in data.items() if not k.endswith("_details") and k not in ("deployment_error",
                                                                                       "program_error")},
            "deployment_has_error": error is not None,
            "deployment_error": None if error is None else {"message": error.message, "error_code": error.error_code,
                                                            "details": error.details},
        }
        if selector == "all":
            info["program_code"] = ((obj.get("spec") or {}).get("program") or {}).get("sql", "")
            info["program_error"] = data.get("program_error")
            for key in ("deployment_resources_status_details", "deployment_runtime_status_details",
                        "storage_status_details"):
                info[key] = data.get(key)
        return info

    async def list_pipelines(self, request: web.Request) -> web.Response:
        namespace = self.namespace(request)
        await self.authorize(request, "list", namespace)
        selector = request.query.get("selector", "status")
        if selector not in ("all", "status"):
            raise ApiError(400, "InvalidSelector", f"Invalid selector '{selector[:50]}': expected 'all' or 'status'")
        found = [m for (ns, _), m in sorted(self.ctx.monitors.items()) if ns == namespace and m.obj is not None]
        return web.json_response([self._info(m, selector) for m in found])

    async def get_pipeline(self, request: web.Request) -> web.Response:
        monitor = await self._pipeline(request, "get")
        selector = request.query.get("selector", "all")
        if selector not in ("all", "status"):
            raise ApiError(400, "InvalidSelector", f"Invalid selector '{selector[:50]}': expected 'all' or 'status'")
        return web.json_response(self._info(monitor, selector))

    async def list_events(self, request: web.Request) -> web.Response:
        monitor = await self._pipeline(request, "get")
        selector = _selector(request)
        body = await asyncio.to_thread(self.ctx.sink.store.list_json, monitor.key.uid, selector.value)
        return web.Response(text=body, content_type="application/json", headers={"Cache-Control": "no-cache"})

    async def get_event(self, request: web.Request) -> web.Response:
        monitor = await self._pipeline(request, "get")
        selector = _selector(request)
        raw = request.match_info["event_id"]
        store = self.ctx.sink.store
        event_id = None
        if raw != "latest":
            try:
                event_id = uuid.UUID(raw)
            except ValueError:
                raise ApiError(400, "InvalidUuidParam", f"Invalid UUID '{raw[:60]}'",
                               {"value": raw[:60]}) from None
        body = await asyncio.to_thread(store.get_json, monitor.key.uid, event_id, selector.value)
        if body is None and event_id is None:
            raise ApiError(404, "NoPipelineMonitorEventsAvailable",
                           f"Pipeline '{monitor.key.name}' has no monitor events yet")
        if body is None:
            raise ApiError(404, "UnknownPipelineMonitorEvent",
                           f"Pipeline monitor event '{event_id}' does not exist: it might have been deleted as "
                           "only a limited number of events are retained", {"event_id": str(event_id)})
        return web.Response(text=body, content_type="application/json", headers={"Cache-Control": "no-cache"})

    # -- actions ----------------------------------------------------------------------------------

    def _action(self, action: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            monitor = await self._pipeline(request, "patch")
            return await getattr(self, f"_do_{action}")(request, monitor)
        return handler

    async def _patch(self, monitor: Any, spec: dict[str, Any] | None = None,
                     annotation: str | None = None) -> None:
        body: dict[str, Any] = {}
        if spec:
            body["spec"] = spec
        if annotation:
            body["metadata"] = {"annotations": {annotation: uuid.uuid4().hex}}
        kube = self.ctx.kube
        try:
            await kube.call(kube.custom.patch_namespaced_custom_object, API_GROUP, API_VERSION,
                            monitor.key.namespace, PLURAL, monitor.key.name, body, field_manager=FIELD_MANAGER,
                            _content_type="application/merge-patch+json")
        except ApiException as exc:
            if exc.status == 404:
                raise ApiError(404, "UnknownPipelineName", f"Unknown pipeline name '{monitor.key.name}'",
                               {"pipeline_name": monitor.key.name}) from exc
            raise
        monitor.wake.set()

    @staticmethod
    def _status(monitor: Any) -> dict[str, Any]:
        return monitor.obj.get("status") or {}

    def _interaction(self, monitor: Any) -> None:
        status = self._status(monitor)
        if status.get("deploymentResourcesStatus") != "Provisioned":
            raise ApiError(503, "PipelineInteractionNotDeployed",
                           f"Unable to interact with pipeline '{monitor.key.name}' because its deployment is "
                           f"not Provisioned (it is {status.get('deploymentResourcesStatus', 'Stopped')})")

    async def _do_start(self, request: web.Request, monitor: Any) -> web.Response:
        initial = request.query.get("initial", "running")
        if initial not in ("running", "paused", "standby"):
            raise ApiError(405, "UnsupportedPipelineAction", f"Unsupported pipeline action: initial '{initial[:20]}'")
        dismiss = _bool(request, "dismiss_error", True)
        status = self._status(monitor)
        spec = monitor.obj.get("spec") or {}
        if status.get("storageStatus") == "Clearing":
            raise ApiError(400, "CannotStartWhileClearingStorage", "Cannot start the pipeline while its storage is "
                                                                   "being cleared")
        if status.get("programStatus") in ("SqlError", "RustError", "SystemError") and \
                status.get("programDigest") is not None:
            raise ApiError(400, "CannotStartWithCompilationError", "Cannot start a pipeline whose program failed "
                                                                   "to compile; fix spec.program.sql")
        if status.get("deploymentError") and not dismiss:
            raise ApiError(400, "CannotStartWithUndismissedError", "Cannot start while the deployment error is not "
                                                                   "dismissed (dismiss_error=false)")
        if spec.get("desiredStatus") == "Stopped" and status.get("deploymentResourcesStatus") not in (None, "Stopped"):
            raise ApiError(400, "IllegalPipelineAction",
                           f"Deployment resources status (current: '{status.get('deploymentResourcesStatus')}', "
                           "desired: 'Stopped') cannot have desired changed to 'Provisioned'. Cannot restart the "
                           "pipeline while it is stopping. Wait for it to stop before starting it again.")
        annotation = ANNOTATIONS["dismiss_error"] if dismiss and status.get("deploymentError") else None
        await self._patch(monitor, {"desiredStatus": "Provisioned", "initialRuntimeStatus": initial.capitalize()},
                          annotation)
        return web.Response(status=202)

    async def _do_stop(self, request: web.Request, monitor: Any) -> web.Response:
        force = _bool(request, "force", False)
        await self._patch(monitor, {"desiredStatus": "Stopped", "stopMode": "Force" if force else "Graceful"})
        return web.Response(status=202)

    async def _do_pause(self, request: web.Request, monitor: Any) -> web.Response:
        self._interaction(monitor)
        await self._patch(monitor, {"runtimeDesiredStatus": "Paused"})
        return web.Response(status=202)

    async def _do_resume(self, request: web.Request, monitor: Any) -> web.Response:
        self._interaction(monitor)
        await self._patch(monitor, {"runtimeDesiredStatus": "Running"})
        return web.Response(status=202)

    async def _do_activate(self, request: web.Request, monitor: Any) -> web.Response:
        initial = request.query.get("initial", "running")
        if initial not in ("running", "paused"):
            raise ApiError(400, "InvalidQueryParameter", "initial must be running or paused")
        self._interaction(monitor)
        await self._patch(monitor, {"runtimeDesiredStatus": initial.capitalize()})
        return web.json_response(None, status=202)

    async def _do_approve(self, request: web.Request, monitor: Any) -> web.Response:
        self._interaction(monitor)
        await self._patch(monitor, annotation=ANNOTATIONS["approve"])
        return web.json_response(None, status=200)

    async def _do_clear(self, request: web.Request, monitor: Any) -> web.Response:
        status = self._status(monitor)
        if status.get("storageStatus", "Cleared") == "Cleared":
            return web.Response(status=202)  # Feldera: a no-op when already cleared
        if status.get("deploymentResourcesStatus") != "Stopped" or \
                (monitor.obj.get("spec") or {}).get("desiredStatus") != "Stopped":
            raise ApiError(400, "StorageStatusImmutableUnlessStopped",
                           "Storage can only be cleared while the pipeline is Stopped and desired Stopped")
        await self._patch(monitor, annotation=ANNOTATIONS["clear"])
        return web.Response(status=202)

    async def _do_dismiss_error(self, request: web.Request, monitor: Any) -> web.Response:
        status = self._status(monitor)
        if status.get("deploymentError") and status.get("deploymentResourcesStatus") != "Stopped":
            raise ApiError(400, "DismissErrorRestrictedToFullyStopped",
                           "The deployment error can only be dismissed once the pipeline is Stopped")
        if status.get("deploymentError"):
            await self._patch(monitor, annotation=ANNOTATIONS["dismiss_error"])
        return web.Response(status=200)
