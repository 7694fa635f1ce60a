"""The aiohttp application: authentication, authorization, health, metrics and monitor events.

Feldera's own SDK works against it unchanged: ``FelderaClient(url, api_key=token,
tenant=namespace)``. Reads come from the event store and the operator's in-memory view of
Pipelines (no API-server call per request beyond cached authentication checks); writes are
changes of the Pipeline resource (:mod:`.pipelines`, :mod:`.actions`).

Authentication (``--api-auth kubernetes``, the default): the bearer token is checked with a
TokenReview and every request with a SubjectAccessReview on ``pipelines.dataflow.dev`` in the
target namespace (``get``/``list`` to read, ``patch`` to act, ``create``/``update``/``delete``
for pipeline CRUD), both cached for a few seconds. Authorization is checked before anything
else, so a user learns nothing about a namespace they may not read, not even whether a pipeline
exists there.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib.metadata import version as package_version
from typing import TYPE_CHECKING, Any, Protocol, cast

from aiohttp import web
from cachetools import TTLCache
from kubernetes.client.exceptions import ApiException
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .. import openapi
from ..identity import PipelineKey
from ..kube import Kube
from ..models import API_GROUP, PLURAL, PipelineMonitorEventFieldSelector
from ..runtime_client import RuntimeClient
from .errors import ApiError, unknown_pipeline
from .metrics import Metrics

if TYPE_CHECKING:
    from ..reconciler import PipelineMonitor

log = logging.getLogger(__name__)

TENANT_HEADER = "Feldera-Tenant"
NAMESPACE_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
AUTH_CACHE_SECONDS = 10.0
# Read once: a lookup reads the installed distribution's metadata from disk.
VERSION = package_version("pipeline-operator")
# Feldera's endpoints this API does not serve (docs/api.md says why): 501, not a 404 that the SDK
# would take for an unknown pipeline.
NOT_SERVED = re.compile(
    r"^/v0/(pipelines/[^/]+/(logs|stats|metrics|time_series|time_series_stream|completion_status|checkpoint"
    r"|checkpoint/sync|checkpoint/sync_status|checkpoint_status|checkpoints|checkpoints/remote|ingress/.+"
    r"|egress/.+|query|tables/.+|views/.+|start_transaction|commit_transaction|clock/advance|rebalance"
    r"|start_compaction|samply_profile|heap_profile|circuit_profile|circuit_json_profile|dataflow_graph"
    r"|support_bundle|diff|update_runtime|testing)|cluster/events.*|cluster_healthz|api_keys.*|tenants.*"
    r"|oidc_trust.*|validate_program|metrics)$")


class PipelineRegistry(Protocol):
    """The pipelines the operator monitors (:class:`reconciler.PipelineRegistry`)."""
    def get(self, namespace: str, name: str) -> PipelineMonitor | None: ...

    def in_namespace(self, namespace: str) -> list[PipelineMonitor]: ...

    def all(self) -> list[PipelineMonitor]: ...


class EventReader(Protocol):
    """The event store, read as Feldera's JSON (:class:`store.EventStore`); blocking."""
    def list_json(self, uid: str, selector: str = "status") -> str: ...

    def get_json(self, uid: str, event_id: uuid.UUID | None, selector: str = "status") -> str | None: ...

    def count(self, uid: str | None = None) -> int: ...


@dataclass
class ApiDeps:
    """Everything the HTTP API uses of the rest of the operator."""
    pipelines: PipelineRegistry
    events: EventReader
    kube: Kube
    endpoint: Callable[[PipelineKey], str | None]          # where a pipeline answers (the backend's)
    runtime: RuntimeClient                                 # to forward requests to a pipeline
    artifact: Callable[[str], dict[str, Any] | None]       # a compiled program by digest (blocking)
    metrics: Metrics = field(default_factory=Metrics)


def _selector(request: web.Request) -> PipelineMonitorEventFieldSelector:
    raw = request.query.get("selector", "status")
    try:
        return PipelineMonitorEventFieldSelector(raw)
    except ValueError:
        raise ApiError(400, "InvalidSelector", f"Invalid selector '{raw[:50]}': expected 'all' or 'status'",
                       {"selector": raw[:50]}) from None


class ApiServer:
    def __init__(self, deps: ApiDeps, auth: str = "kubernetes", default_namespace: str = "default",
                 max_concurrency: int = 64) -> None:
        from .actions import Actions
        from .pipelines import Pipelines
        self.deps = deps
        self.auth = auth
        self.default_namespace = default_namespace
        self.metrics = deps.metrics
        self._tokens: TTLCache[str, dict[str, Any]] = TTLCache(maxsize=10_000, ttl=AUTH_CACHE_SECONDS)
        self._access: TTLCache[tuple[str, tuple[str, ...], str, str], bool] = TTLCache(
            maxsize=50_000, ttl=AUTH_CACHE_SECONDS)
        self._limit = asyncio.Semaphore(max_concurrency)
        self.ready = False
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self.pipelines = Pipelines(self)
        self.actions = Actions(self)

    # -- the application ------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=512 * 1024, middlewares=[self._middleware])
        r = app.router
        r.add_get("/healthz", self.healthz)
        r.add_get("/readyz", self.readyz)
        r.add_get("/metrics", self.metrics_page)
        r.add_get("/v0/config", self.config)
        r.add_get("/v0/openapi.json", self.openapi)
        self.pipelines.routes(r)
        r.add_get("/v0/pipelines/{name}/events", self.list_events)
        r.add_get("/v0/pipelines/{name}/events/{event_id}", self.get_event)
        self.actions.routes(r)
        r.add_route("*", "/v0/{tail:.*}", self.not_served)
        return app

    async def start(self, host: str, port: int) -> None:
        # Bounded: 512 KiB bodies (a program and its configuration), 8 KiB request lines and
        # headers, 64 requests at once, idle connections closed after 15 s.
        self._runner = web.AppRunner(self.app(), access_log=None, handler_cancellation=True, keepalive_timeout=15,
                                     max_line_size=8190, max_field_size=8190)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, backlog=128)
        await site.start()
        sockets = cast(asyncio.Server, site._server).sockets if site._server else []
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
            review = await self.deps.kube.call(self.deps.kube.auth.create_token_review, body)
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
            review = await self.deps.kube.call(self.deps.kube.authz.create_subject_access_review, body)
        except ApiException as exc:
            log.error("SubjectAccessReview failed (%s %s): grant the operator system:auth-delegator",
                      exc.status, exc.reason)
            raise ApiError(503, "AuthorizationUnavailable", "Cannot check permissions now; try again") from exc
        return bool(review.status and review.status.allowed)

    # -- lookups ----------------------------------------------------------------------------------

    def monitor(self, namespace: str, name: str) -> PipelineMonitor:
        monitor = self.deps.pipelines.get(namespace, name)
        if monitor is None or monitor.obj is None:
            raise unknown_pipeline(name)
        return monitor

    async def pipeline(self, request: web.Request, verb: str) -> PipelineMonitor:
        namespace = self.namespace(request)
        await self.authorize(request, verb, namespace)
        return self.monitor(namespace, request.match_info["name"])

    # -- handlers -----------------------------------------------------------------------------------

    async def not_served(self, request: web.Request) -> web.Response:
        if NOT_SERVED.match(request.path):
            raise ApiError(501, "NotServed", f"pipeline-operator does not serve {request.method} {request.path[:200]} "
                                             "(see docs/api.md for the endpoints it serves and why)",
                           {"path": request.path[:200]})
        raise web.HTTPNotFound()

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        if not self.ready:
            raise ApiError(503, "NotReady", "The operator is starting")
        return web.json_response({"status": "ready"})

    async def metrics_page(self, request: web.Request) -> web.Response:
        counts: dict[str, int] = {}
        for monitor in self.deps.pipelines.all():
            if monitor.state is not None:
                status = monitor.state.deployment_resources_status.value
                counts[status] = counts.get(status, 0) + 1
        for status in ("Stopped", "Provisioning", "Provisioned", "Stopping"):
            self.metrics.pipelines.labels(status).set(counts.get(status, 0))
        self.metrics.store_events.set(await asyncio.to_thread(self.deps.events.count))
        return web.Response(body=generate_latest(self.metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi.document())

    async def config(self, request: web.Request) -> web.Response:
        return web.json_response({
            "version": VERSION, "revision": "", "edition": "Open source",
            "telemetry": "", "changelog_url": "", "license_validity": None, "update_info": None,
            "build_info": {"build_cpu": "", "build_os": "", "rust_version": ""},
        })

    async def list_events(self, request: web.Request) -> web.Response:
        monitor = await self.pipeline(request, "get")
        selector = _selector(request)
        body = await asyncio.to_thread(self.deps.events.list_json, monitor.key.uid, selector.value)
        return web.Response(text=body, content_type="application/json", headers={"Cache-Control": "no-cache"})

    async def get_event(self, request: web.Request) -> web.Response:
        monitor = await self.pipeline(request, "get")
        selector = _selector(request)
        raw = request.match_info["event_id"]
        event_id = None
        if raw != "latest":
            try:
                event_id = uuid.UUID(raw)
            except ValueError:
                raise ApiError(400, "InvalidUuidParam", f"Invalid UUID '{raw[:60]}'",
                               {"value": raw[:60]}) from None
        body = await asyncio.to_thread(self.deps.events.get_json, monitor.key.uid, event_id, selector.value)
        if body is None and event_id is None:
            raise ApiError(404, "NoPipelineMonitorEventsAvailable",
                           f"Pipeline '{monitor.key.name}' has no monitor events yet")
        if body is None:
            raise ApiError(404, "UnknownPipelineMonitorEvent",
                           f"Pipeline monitor event '{event_id}' does not exist: it might have been deleted as "
                           "only a limited number of events are retained", {"event_id": str(event_id)})
        return web.Response(text=body, content_type="application/json", headers={"Cache-Control": "no-cache"})
