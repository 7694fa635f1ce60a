"""The aiohttp application: authentication, authorization, health, metrics and monitor events.

Feldera's own SDK works against it unchanged: ``FelderaClient(url, api_key=token)`` with the namespace in the
``Feldera-Tenant`` header. Reads come from the event store and the operator's in-memory view of
Pipelines (no API-server call per request beyond cached authentication checks); writes are
changes of the Pipeline resource (:mod:`.pipelines`, :mod:`.actions`).

Authentication (``--api-auth kubernetes``, the default): the bearer token is checked with a
TokenReview for the operator's audience and every request with a SubjectAccessReview on
``pipelines.dataflow.dev`` in the target namespace, naming the pipeline when the request names one
(``get``/``list`` to read, ``patch`` to act, ``create``/``update``/``delete`` for pipeline CRUD),
both cached for a few seconds. Authorization is checked before anything else, so a user learns
nothing about a namespace they may not read, not even whether a pipeline exists there.

The checks share the operator's Kubernetes thread pool with reconciliation, so they have their
own bounded capacity (``auth_concurrency`` under way, as many waiting, then 503
``AuthenticationBusy``) and every client address its own rate of uncached token checks (429
``TooManyRequests``): unknown tokens cannot starve the monitoring loops. Probes and metrics are
served outside the request limit, so a busy API never fails a liveness probe. ``/metrics`` is served
only to a bearer whom RBAC allows ``get`` on the non-resource URL ``/metrics`` (``--metrics-auth
kubernetes``, the default; ``none`` serves it to anyone), and the event store's size it shows is
counted in the background at most every ``store_count_seconds``, never by a scrape.

Requests are served from slots shared fairly among tenants (:class:`.slots.FairSlots`), so that one
user or one namespace cannot hang everyone's calls: an authenticated user has at most
``max_per_identity`` requests under way (from the moment its token is known: a create whose body
arrives slowly counts), an authorised request holds one of the ``max_concurrency`` slots, of which
one namespace holds at most ``max_per_namespace`` and the requests that wait for a pipeline or for
the monitoring loop (actions, writes, deletes, the passed-through requests) at most half, so reads
always find room. A request waits for a slot at most ``queue_timeout`` seconds, then 503 ``ApiBusy``
with ``Retry-After``. Open-ended streams (logs, egress, queries, followed events) and uploads to a
pipeline (``/ingress``) hold no request slot: they have bounds of their own, per client address,
identity and namespace.

Every mutating request is written to the audit log (logger ``pipeline_operator.audit``), and the
change it makes carries the requester in the annotation ``dataflow.dev/requested-by``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import logging
import math
import re
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any, Protocol, cast

import urllib3.exceptions
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from cachetools import TTLCache
from kubernetes.client.exceptions import ApiException
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..core.lifecycle import PipelineState
from ..feldera.runtime_client import RuntimeClient
from ..identity import PipelineKey
from ..kube.client import KubeClient
from ..metrics import Metrics, PipelineSample
from ..models import (
    API_GROUP,
    PLURAL,
    MonitorEvent,
    PipelineMonitorEventFieldSelector,
)
from ..store.base import StoreUnavailable
from . import openapi
from .errors import ApiError, bool_param, unknown_pipeline
from .follow import FollowHub, FollowLimits
from .platform import CHECK_TIMEOUT, Check, ClusterMonitor, configuration, readyz_status
from .slots import UNBOUNDED, FairSlots, share

log = logging.getLogger(__name__)
audit_log = logging.getLogger("pipeline_operator.audit")

TENANT_HEADER = "Feldera-Tenant"
NAMESPACE_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
AUTH_CACHE_SECONDS = 10.0
# A refused token is remembered only briefly: long enough to absorb a client retrying a bad token
# in a loop, short enough that nobody stays locked out once the API server answers properly again.
REJECTED_CACHE_SECONDS = 2.0
# A TokenReview or SubjectAccessReview that takes longer than this is given up (503); the thread
# it occupies in the shared pool is released by the client's own timeout.
REVIEW_TIMEOUT_SECONDS = 10.0
MAX_TOKEN_BYTES = 16384
MAX_CLIENTS = 10_000  # client addresses whose token-check rate is tracked at once
PROBES = frozenset({"/healthz", "/readyz", "/metrics"})  # never wait for a request slot
EVENTS_ROUTE = "/v0/pipelines/{name}/events"
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# What a request that changes a Pipeline asks for, by method (CRUD) or by its last path segment (actions).
CRUD_ACTIONS = {"POST": "create", "PUT": "create_or_replace", "PATCH": "update", "DELETE": "delete"}
QUEUE_TIMEOUT_SECONDS = 10.0  # the longest a request waits for a slot before 503 ApiBusy
STORE_COUNT_SECONDS = 30.0  # the event store's size (a count of its rows) is taken at most this often
METRICS_PATH = "/metrics"
# Errors of the Kubernetes client other than an API answer: the API server is away, not a bug here.
KUBE_UNAVAILABLE: tuple[type[BaseException], ...] = (ApiException, urllib3.exceptions.HTTPError, ConnectionError,
                                                     TimeoutError)
# Read once: a lookup reads the installed distribution's metadata from disk.
VERSION = package_version("pipeline-operator")
class ServedPipeline(Protocol):
    """One pipeline as the API serves it: monitored here (the loop's
    :class:`~pipeline_operator.reconcile.reconciler.PipelineMonitor`) or watched only
    (:class:`~pipeline_operator.controller.pipeline_cache.CachedPipeline`, on a standby)."""
    key: PipelineKey

    @property
    def obj(self) -> dict[str, Any] | None: ...

    @property
    def state(self) -> PipelineState | None: ...

    def adopt(self, obj: Mapping[str, Any]) -> None: ...

    def poke(self) -> None: ...

    def metrics_sample(self) -> PipelineSample | None:
        """What ``/metrics`` folds into its per-namespace series; None where no loop of this replica monitors it."""
        ...

    def forwarding(self) -> contextlib.AbstractContextManager[None]:
        """While the API forwards a runtime action and keeps it in the spec (see :meth:`Actions._runtime_desired`)."""
        ...

    async def wait_until(self, predicate: Callable[[dict[str, Any], PipelineState], bool],
                         timeout: float) -> bool: ...  # noqa: ASYNC109


class ServedPipelineLookup(Protocol):
    """The pipelines the API serves (:class:`~pipeline_operator.controller.pipeline_cache.ServedPipelines`)."""
    def get(self, namespace: str, name: str) -> ServedPipeline | None: ...

    def in_namespace(self, namespace: str) -> Sequence[ServedPipeline]: ...

    def all(self) -> Sequence[ServedPipeline]: ...


class MonitorEventReader(Protocol):
    """The event store, read as Feldera's JSON (:class:`store.EventStorage`, either backend); blocking,
    and raising :class:`store.StoreUnavailable` when the store cannot be read now."""
    def list_json(self, uid: str, selector: str = "status") -> str: ...

    def list(self, uid: str, limit: int | None = None) -> list[MonitorEvent]: ...  # newest first

    def get_json(self, uid: str, event_id: uuid.UUID | None, selector: str = "status") -> str | None: ...

    def count(self, uid: str | None = None) -> int: ...


@dataclass
class ApiDeps:
    """Everything the HTTP API uses of the rest of the operator."""
    pipelines: ServedPipelineLookup
    events: MonitorEventReader
    kube: KubeClient
    endpoint: Callable[[PipelineKey], str | None]          # where a pipeline answers (the backend's)
    runtime: RuntimeClient                                 # to forward requests to a pipeline
    artifact: Callable[[str], dict[str, Any] | None]       # a compiled program by digest (blocking)
    metrics: Metrics = field(default_factory=Metrics)
    # Learns a pipeline's control token where this replica does not know it yet (a standby forwarding an action).
    learn_token: Callable[[PipelineKey], Awaitable[None]] | None = None
    # A pipeline's log, opened (the backend's ``logs``; see backends.Backend): GET /v0/pipelines/{name}/logs.
    logs: Callable[[PipelineKey, bool], contextlib.AbstractAsyncContextManager[AsyncIterator[bytes]]] | None = None
    # The pipelines run Feldera's community edition (``--compiler feldera``): /stop?force=false is refused.
    community_edition: bool = False
    # Whether a token is a pipeline's control token, and the program binary its pod runs (Kubernetes backend with
    # --compiler feldera; see binaries.py): GET /pipeline-binaries/{namespace}/{name}.
    program_binary: Callable[[PipelineKey, str], Awaitable[tuple[bool, dict[str, Any] | None]]] | None = None


def _selector(request: web.Request) -> PipelineMonitorEventFieldSelector:
    raw = request.query.get("selector", "status")
    try:
        return PipelineMonitorEventFieldSelector(raw)
    except ValueError:
        raise ApiError(400, "InvalidSelector", f"Invalid selector '{raw[:50]}': expected 'all' or 'status'",
                       {"selector": raw[:50]}) from None


@dataclass(frozen=True)
class User:
    """Who a TokenReview said the bearer of a token is (hashable: part of the authorization cache key)."""
    username: str
    groups: tuple[str, ...] = ()
    uid: str = ""
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()


ANONYMOUS = User("anonymous")  # every request with --api-auth none
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"  # a service account's username: system:serviceaccount:<ns>:<name>


def service_account_namespace(username: str) -> str | None:
    """The namespace of a service account's username (as the API server names it, ``system:serviceaccount:``
    then the namespace and the name, each a DNS label); None for any other user."""
    if not username.startswith(SERVICE_ACCOUNT_PREFIX):
        return None
    parts = username[len(SERVICE_ACCOUNT_PREFIX):].split(":")
    if len(parts) != 2 or not all(parts) or not NAMESPACE_RE.match(parts[0]) or len(parts[0]) > 63:
        return None
    return parts[0]
# What a request learnt on its way, for the audit line.
USER = web.RequestKey("user", User)
VERB = web.RequestKey("verb", str)
NAMESPACE = web.RequestKey("namespace", str)
PIPELINE = web.RequestKey("pipeline", str)


@dataclass
class _Held:
    """The slots one request holds (released when it ends): its identity's from authentication on, one of the
    shared slots from authorization on."""
    stack: contextlib.AsyncExitStack[bool | None]
    long: bool  # it waits for a pipeline or for the monitoring loop
    identity: bool = False
    shared: bool = False


HELD = web.RequestKey("held", _Held)


class RateLimiter:
    """A token bucket per client address: ``rate`` per second, bursts of ``burst``.

    Memory is bounded: at most ``max_clients`` buckets, each forgotten once it would be full again
    (a forgotten bucket and a full one are the same), the least recently used first if there are
    more clients than that."""

    def __init__(self, rate: float, burst: float, max_clients: int = MAX_CLIENTS) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: TTLCache[str, tuple[float, float]] = TTLCache(maxsize=max_clients, ttl=burst / rate)

    def take(self, client: str) -> float:
        """Take one token for ``client``: 0 when allowed, else the seconds until one is available."""
        now = time.monotonic()
        tokens, at = self._buckets.get(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < 1:
            self._buckets[client] = (tokens, now)
            return (1 - tokens) / self.rate
        self._buckets[client] = (tokens - 1, now)
        return 0.0


class _ErrorResponses(RequestHandler):
    """aiohttp's connection handler, answering requests it cannot parse (header too large, bad
    request line, invalid encoding) with Feldera's ErrorResponse instead of a plain-text page, and
    logging them at debug level (anyone can send them; they are not the operator's errors)."""

    def handle_error(self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status >= 500:
            return super().handle_error(request, status, exc, message)
        log.debug("HTTP API: unparsable request from %s: %s", request.remote, message or exc)
        if request.writer.output_size > 0:
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        text = (message or str(exc or "") or "malformed request").splitlines()[0][:300]
        code = {413: "PayloadTooLarge", 414: "UriTooLong", 431: "RequestHeaderFieldsTooLarge"}.get(
            status, "InvalidRequest")
        response = ApiError(status, code, f"The request is not valid HTTP: {text}").response()
        response.force_close()
        return response


class _Server(web.Server):
    def __call__(self) -> RequestHandler:
        return _ErrorResponses(self, loop=self._loop, **self._kwargs)


class _Runner(web.AppRunner):
    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _Server  # the same server, building the connection handler above
        return server


class ApiServer:
    def __init__(self, deps: ApiDeps, auth: str = "kubernetes", default_namespace: str = "default",
                 max_concurrency: int = 64, *, audience: str = "pipeline-operator", auth_concurrency: int = 8,
                 auth_rate: float = 10.0, tls_cert: Path | None = None, tls_key: Path | None = None,
                 review_timeout: float = REVIEW_TIMEOUT_SECONDS, ui_enabled: bool = True,
                 follow_limits: FollowLimits | None = None, max_per_identity: int | None = None,
                 max_per_namespace: int | None = None, queue_timeout: float = QUEUE_TIMEOUT_SECONDS,
                 metrics_auth: str = "kubernetes", store_count_seconds: float = STORE_COUNT_SECONDS) -> None:
        from .actions import Actions
        from .pipelines import Pipelines
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        self.deps = deps
        self.auth = auth
        self.default_namespace = default_namespace
        self.audience = audience
        self.tls_cert, self.tls_key = tls_cert, tls_key
        self.review_timeout = review_timeout
        self.ui_enabled = ui_enabled  # off: /ui is not routed (404)
        self.metrics = deps.metrics
        # Keyed by the audience asked for and a digest of the token: a cache of 10 000 tokens of 16 KiB would
        # be 160 MiB.
        self._tokens: TTLCache[tuple[str, bytes], User] = TTLCache(maxsize=10_000, ttl=AUTH_CACHE_SECONDS)
        self._rejected: TTLCache[tuple[str, bytes], str] = TTLCache(maxsize=10_000, ttl=REJECTED_CACHE_SECONDS)
        self._access: TTLCache[tuple[User, str, str, str], bool] = TTLCache(maxsize=50_000, ttl=AUTH_CACHE_SECONDS)
        # Concurrent requests with the same unknown token (an SDK's parallel calls) share one check.
        self._flights: dict[Any, asyncio.Task[Any]] = {}
        self.queue_timeout = queue_timeout
        self.metrics_auth = metrics_auth  # "kubernetes": /metrics needs a token allowed to get it; "none": open
        self.store_count_seconds = store_count_seconds
        self._store_count: asyncio.Task[None] | None = None  # the event store's count under way
        self._store_counted_at = -math.inf
        # Every request of one user (from authentication on), and the shared slots (from authorization on).
        def refused(scope: str) -> None:
            self.metrics.busy.labels("requests", scope).inc()
        self._identities = FairSlots(UNBOUNDED, {"identity": share(max_concurrency, max_per_identity)},
                                     queue_timeout, "requests", refused)
        self._shared = FairSlots(max_concurrency, {"namespace": share(max_concurrency, max_per_namespace),
                                                   "long": max(1, max_concurrency // 2)}, queue_timeout, "requests",
                                 refused)
        # Routes served outside the request slots (streams, uploads: bounded on their own) and routes whose
        # requests wait for a pipeline (passed through), as "METHOD /path"; set by the routes' owners as they add them.
        self.unpooled_routes: set[str] = set()
        self.long_routes: set[str] = set()
        self._auth_limit = asyncio.Semaphore(auth_concurrency)
        self._auth_queue = auth_concurrency  # checks that may wait for a slot; beyond: 503
        self._auth_waiting = 0
        self._rate = RateLimiter(auth_rate, 2 * auth_rate)
        self._ready = False
        self.not_ready = "The operator is starting"  # what /readyz says until ready
        self.cluster = ClusterMonitor(self._check_cluster)  # Feldera's cluster health (platform.py)
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self.pipelines = Pipelines(self)
        self.actions = Actions(self)
        self.follow = FollowHub(deps.events, follow_limits)  # live event streams (events?follow=true)

    @property
    def ready(self) -> bool:
        """Whether the operator serves (``/readyz``); a change is checked at once by the cluster monitor."""
        return self._ready

    @ready.setter
    def ready(self, value: bool) -> None:
        if value != self._ready:
            self._ready = value
            self.cluster.poke()

    # -- the application ------------------------------------------------------------------------

    def app(self) -> web.Application:
        from .binaries import Binaries
        from .interaction import Interaction
        from .manager import Manager
        from .support_bundle import SupportBundles
        app = web.Application(client_max_size=512 * 1024, middlewares=[self._middleware])
        r = app.router
        r.add_get("/healthz", self.healthz)
        r.add_get("/readyz", self.readyz)
        r.add_get("/metrics", self.metrics_page)
        r.add_get("/v0/config", self.config)
        r.add_get("/v0/openapi.json", self.openapi)
        r.add_get("/api-doc/openapi.json", self.openapi)  # where Feldera's manager serves it
        r.add_get("/v0/cluster_healthz", self.cluster_health)
        r.add_get("/v0/cluster/events", self.cluster_events)
        r.add_get("/v0/cluster/events/{event_id}", self.cluster_event)
        self.pipelines.routes(r)
        r.add_get(EVENTS_ROUTE, self.list_events)
        r.add_get("/v0/pipelines/{name}/events/{event_id}", self.get_event)
        self.actions.routes(r)
        Interaction(self).routes(r)
        manager = Manager(self)
        manager.routes(r)
        SupportBundles(self).routes(r)
        Binaries(self).routes(r)
        if self.ui_enabled:
            from .ui import Ui
            Ui(self).routes(r)
        r.add_route("*", "/v0/{tail:.*}", manager.unknown)  # last: never a bare 404 under /v0
        return app

    async def start(self, host: str, port: int) -> None:
        # Bounded: 512 KiB bodies (a program and its configuration), 8 KiB request lines and
        # headers, 64 requests at once, idle connections closed after 15 s.
        context = await asyncio.to_thread(self.tls_context) if self.tls_cert is not None else None
        self._runner = _Runner(self.app(), access_log=None, handler_cancellation=True, keepalive_timeout=15,
                               max_line_size=8190, max_field_size=8190)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, backlog=128, ssl_context=context)
        await site.start()
        self.cluster.start()
        sockets = cast(asyncio.Server, site._server).sockets if site._server else []
        self.port = sockets[0].getsockname()[1] if sockets else port
        log.info("HTTP API listening on %s://%s:%s (auth: %s, audience: %s)", "https" if context else "http",
                 host, self.port, self.auth, self.audience or "the API server's")

    def tls_context(self) -> ssl.SSLContext:
        """TLS 1.2 or newer with the given certificate and key (read once, at start)."""
        assert self.tls_cert is not None and self.tls_key is not None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(str(self.tls_cert), str(self.tls_key))
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"--api-tls-cert {self.tls_cert} / --api-tls-key {self.tls_key}: cannot load the "
                             f"certificate and key ({exc}); give PEM files of a certificate and its private key"
                             ) from exc
        return context

    async def stop(self) -> None:
        if self._store_count is not None:
            self._store_count.cancel()
        await self.cluster.stop()
        await self.follow.close()  # open streams end first: the runner's cleanup would wait for them
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                          ) -> web.StreamResponse:
        route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
        keyed = f"{request.method} {route}"
        started = time.perf_counter()
        try:
            if request.path in PROBES or keyed in self.unpooled_routes or (
                    route == EVENTS_ROUTE and request.query.get("follow", "").lower() in ("true", "1")):
                # Probes never wait for a request slot; streams and uploads are long and have their own bounds.
                response = await handler(request)
            else:
                async with contextlib.AsyncExitStack() as stack:  # the slots it takes on its way, given back
                    request[HELD] = _Held(stack, long=request.method in MUTATING or keyed in self.long_routes)
                    response = await handler(request)
        except ApiError as exc:
            response = exc.response()
        except web.HTTPException as exc:
            code = {404: "NotFound", 405: "MethodNotAllowed", 413: "PayloadTooLarge"}.get(exc.status, "BadRequest")
            response = ApiError(exc.status, code, exc.reason or "Request failed").response()
        except asyncio.CancelledError:
            raise
        except KUBE_UNAVAILABLE as exc:
            if isinstance(exc, ApiException) and exc.status and exc.status not in (502, 503, 504):
                # An answer, not a silence: the API server refused what the operator asked for this request.
                message = _api_server_message(exc)
                log.warning("HTTP API: %s %s: the Kubernetes API server answered %s: %s", request.method,
                            request.path[:200], exc.status, message)
                response = ApiError(502, "KubernetesError", f"The Kubernetes API server refused the operator's "
                                    f"request ({exc.status} {exc.reason}): {message}",
                                    {"status": exc.status}).response()
            else:
                log.warning("HTTP API: %s %s: the Kubernetes API server did not answer: %s", request.method,
                            request.path[:200], _describe(exc))
                response = ApiError(503, "KubernetesUnavailable", "The Kubernetes API server did not answer the "
                                    "operator; try again shortly").response()
        except StoreUnavailable as exc:  # either backend: the file or the database server, not this request
            log.warning("HTTP API: %s %s: %s", request.method, request.path[:200], exc)
            response = ApiError(503, "EventStoreUnavailable", "The operator's event store cannot be read now "
                                "(its log says why); try again shortly").response()
        except Exception:
            log.exception("HTTP API: %s %s failed", request.method, request.path[:200])
            response = ApiError(500, "InternalServerError",
                                "The operator failed to answer this request; see its log").response()
        self.metrics.requests.labels(route, str(response.status)).inc()
        self.metrics.request_seconds.labels(route).observe(time.perf_counter() - started)
        if request.method in MUTATING and route.startswith("/v0/pipelines"):
            self._audit(request, response.status)
        return response

    def _audit(self, request: web.Request, status: int) -> None:
        """One structured line per request that changes, or tries to change, a Pipeline."""
        user: User | None = request.get(USER)
        name = request.match_info.get("name") or request.get(PIPELINE) or ""
        action = action_of(request)
        outcome = "success" if status < 400 else "denied" if status in (401, 403, 429) else \
            "refused" if status < 500 else "failed"
        namespace = request.get(NAMESPACE) or request.headers.get(TENANT_HEADER, self.default_namespace)[:63]
        username = user.username if user is not None else ""
        audit_log.info("%s %s %s/%s: %d %s", username or "(unauthenticated)", action, namespace, name[:253], status,
                       outcome, extra={
                           "user": username, "groups": list(user.groups) if user is not None else [],
                           "verb": request.get(VERB) or "", "method": request.method, "namespace": namespace,
                           "pipeline": name[:253], "action": action, "status": status, "outcome": outcome,
                           "client": request.remote or ""})

    # -- authentication and authorization ---------------------------------------------------------

    async def namespace(self, request: web.Request) -> str:
        """The namespace a request is about: the ``Feldera-Tenant`` header; without it, a service account's own
        namespace (Feldera's clients of v0.306 cannot send the header: ``fda``, a pod's script), else the
        default namespace. Without the header the requester is authenticated first, to know who it is."""
        namespace = request.headers.get(TENANT_HEADER)
        if not namespace:
            namespace = service_account_namespace((await self.authenticate(request)).username) \
                or self.default_namespace
        if not NAMESPACE_RE.match(namespace) or len(namespace) > 63:
            raise ApiError(400, "InvalidTenant", f"'{namespace[:70]}' is not a namespace name")
        return namespace

    async def authenticate(self, request: web.Request) -> User:
        """Who sent the request (once per request): from the cache, or a TokenReview for the
        operator's audience. 401 without a valid token."""
        found: User | None = request.get(USER)
        if found is not None:
            return found
        if self.auth == "none":
            request[USER] = ANONYMOUS
            await self._hold_identity(request)
            return ANONYMOUS
        request[USER] = await self._bearer(request, self.audience, self._token_hint())
        await self._hold_identity(request)
        return request[USER]

    async def _bearer(self, request: web.Request, audience: str, hint: str) -> User:
        """The user of the request's bearer token, for ``audience`` (empty: the API server's own audiences):
        from the cache, or a TokenReview (rate-limited per client address, bounded with the other checks).
        401, saying how to ``hint`` at a valid token, without one."""
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer ") or len(header) > MAX_TOKEN_BYTES:
            raise ApiError(401, "Unauthorized", "A bearer token is required (Authorization: Bearer <token>); "
                                                f"get one with {hint}")
        token = header[len("Bearer "):].strip()
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        key = (audience, digest)
        user = self._tokens.get(key)
        if user is not None:
            return user
        why = self._rejected.get(key)
        if why is None:
            flight = self._flights.get(("token", key))
            if flight is None:
                self._count_against_client(request)  # only a check this request causes counts against its client
                flight = self._single_flight(("token", key), self._check_token(token, key))
            user_or_why: User | str = await asyncio.shield(flight)
            if isinstance(user_or_why, User):
                return user_or_why
            why = user_or_why
        raise ApiError(401, "Unauthorized", f"The bearer token is not valid{why}: get one with {hint}")

    def identity(self, request: web.Request) -> str:
        """Whose request this is, for the fair shares: the authenticated user (without authentication, the
        client's address)."""
        user: User | None = request.get(USER)
        if self.auth == "none" or user is None:
            return f"{ANONYMOUS.username}@{request.remote or ''}"
        return user.username

    async def _hold_identity(self, request: web.Request) -> None:
        """Take one of the user's slots for this request (once; not for probes, streams and uploads)."""
        held = request.get(HELD)
        if held is not None and not held.identity:
            held.identity = True
            await held.stack.enter_async_context(self._identities.slot({"identity": self.identity(request)}))

    async def _hold_shared(self, request: web.Request, namespace: str) -> None:
        """Take one of the shared slots for this authorised request (once), within its namespace's share and,
        for a request that waits for a pipeline or the loop, the long-running requests' share."""
        held = request.get(HELD)
        if held is None or held.shared:
            return
        held.shared = True
        keys = {"namespace": namespace, **({"long": ""} if held.long else {})}
        await held.stack.enter_async_context(self._shared.slot(keys))
        self.metrics.in_flight.inc()
        held.stack.callback(self.metrics.in_flight.dec)

    async def authorize(self, request: web.Request, verb: str, namespace: str, name: str | None = None) -> None:
        """May the requester ``verb`` pipelines in ``namespace`` (the one called ``name``, if given,
        so that RBAC rules with ``resourceNames`` apply)? 401 or 403 if not."""
        request[VERB], request[NAMESPACE] = verb, namespace
        user = await self.authenticate(request)
        if self.auth == "none":
            await self._hold_shared(request, namespace)
            return
        if not await self._allowed(user, verb, namespace, name or ""):
            what = f"pipeline '{name}'" if name else f"pipelines.{API_GROUP}"
            raise ApiError(403, "Forbidden", f"User '{user.username}' may not {verb} {what} in namespace "
                                             f"'{namespace}': ask an administrator for a Role that allows "
                                             f"'{verb}' on pipelines.{API_GROUP} there")
        await self._hold_shared(request, namespace)

    async def _allowed(self, user: User, verb: str, namespace: str, name: str) -> bool:
        """A SubjectAccessReview's answer (:meth:`_check_access`), cached; one check for concurrent requests."""
        key = (user, verb, namespace, name)
        allowed = self._access.get(key)
        if allowed is None:
            flight = self._flights.get(("access", key))
            if flight is None:
                flight = self._single_flight(("access", key), self._check_access(user, verb, namespace, name))
            allowed = bool(await asyncio.shield(flight))
        return allowed

    def requested_by(self, request: web.Request, action: str) -> str:
        """The value of the ``dataflow.dev/requested-by`` annotation for a change this request makes."""
        from ..kube.events import requested_by_value
        user: User | None = request.get(USER)
        return requested_by_value(user.username if user is not None else ANONYMOUS.username, action,
                                  dt.datetime.now(dt.UTC))

    def _token_hint(self) -> str:
        if self.audience:
            return f"`kubectl create token NAME --audience {self.audience}`"
        return "`kubectl create token NAME`"

    def _count_against_client(self, request: web.Request) -> None:
        wait = self._rate.take(request.remote or "")
        if wait > 0:
            self.metrics.auth_refused.labels("rate").inc()
            seconds = max(1, int(wait + 0.999))
            raise ApiError(429, "TooManyRequests", f"Too many token checks from {request.remote}: at most "
                           f"{self._rate.rate:g} per second; reuse a valid token, or try again in {seconds} s",
                           {"retry_after_seconds": seconds}, retry_after=seconds)

    def _single_flight(self, key: Any, check: Awaitable[Any]) -> asyncio.Task[Any]:
        """Run one check as a task that every request waiting for the same answer shares (a
        request that goes away does not cancel the others' check)."""
        task: asyncio.Task[Any] = asyncio.ensure_future(check)
        self._flights[key] = task

        def done(finished: asyncio.Task[Any]) -> None:
            self._flights.pop(key, None)
            if not finished.cancelled():
                finished.exception()  # retrieved: nobody may be waiting for it any more
        task.add_done_callback(done)
        return task

    @contextlib.asynccontextmanager
    async def _auth_slot(self) -> AsyncIterator[None]:
        """One of the bounded slots for TokenReviews and SubjectAccessReviews: waits behind at most
        as many checks as run at once, else 503 at once (a queue without bound is an outage)."""
        if self._auth_limit.locked() and self._auth_waiting >= self._auth_queue:
            self.metrics.auth_refused.labels("busy").inc()
            raise ApiError(503, "AuthenticationBusy", "Too many token and permission checks are under way; try "
                                                      "again in a second", retry_after=1)
        self._auth_waiting += 1
        try:
            await self._auth_limit.acquire()
        finally:
            self._auth_waiting -= 1
        self.metrics.auth_in_flight.inc()
        try:
            yield
        finally:
            self.metrics.auth_in_flight.dec()
            self._auth_limit.release()

    async def _check_token(self, token: str, key: tuple[str, bytes]) -> User | str:
        """The user, or why the token was refused (cached briefly, unless the review itself failed)."""
        audience = key[0]
        spec: dict[str, Any] = {"token": token}
        if audience:
            spec["audiences"] = [audience]
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}
        review = await self._review(self.deps.kube.auth.create_token_review, body, "AuthenticationUnavailable",
                                    "Cannot check the token now")
        status = review.status
        if status is None or not status.authenticated or status.user is None:
            if status is not None and status.error:
                log.info("TokenReview refused a token: %s", str(status.error)[:300])
                return ""  # an error of the authenticator may pass: not remembered
            self._rejected[key] = ""
            return ""
        if audience and audience not in (status.audiences or []):
            why = f" for the audience '{audience}'"
            self._rejected[key] = why
            return why
        extra = tuple(sorted((str(k), tuple(str(v) for v in (vs or ())))
                             for k, vs in (status.user.extra or {}).items()))
        user = User(status.user.username or "", tuple(status.user.groups or ()), status.user.uid or "", extra)
        self._tokens[key] = user
        return user

    async def _review(self, create: Any, body: dict[str, Any], error_code: str, cannot: str) -> Any:
        """One TokenReview or SubjectAccessReview, in an auth slot; any failure of the review itself is
        a 503 ``error_code`` ("cannot check now"), never a refusal."""
        async with self._auth_slot():
            try:
                return await self.deps.kube.call(create, body, _request_timeout=self.review_timeout)
            except Exception as exc:  # noqa: BLE001 - any failure of the review is "cannot check now"
                log.error("%s failed (%s): the operator needs system:auth-delegator and a reachable API server",
                          body["kind"], _describe(exc))
                raise ApiError(503, error_code, f"{cannot} (the Kubernetes API server did not answer); "
                                                "try again") from exc

    async def _check_access(self, user: User, verb: str, namespace: str, name: str | None) -> bool:
        """Whether ``user`` may ``verb`` pipelines in ``namespace`` (the one called ``name``), or, with an empty
        ``namespace``, the non-resource URL ``name`` (``/metrics``)."""
        spec: dict[str, Any] = {"user": user.username, "groups": list(user.groups), "uid": user.uid}
        if namespace:
            attributes = {"group": API_GROUP, "resource": PLURAL, "verb": verb, "namespace": namespace}
            if name:
                attributes["name"] = name
            spec["resourceAttributes"] = attributes
        else:
            spec["nonResourceAttributes"] = {"path": name, "verb": verb}
        if user.extra:
            spec["extra"] = {k: list(v) for k, v in user.extra}
        body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}
        review = await self._review(self.deps.kube.authz.create_subject_access_review, body,
                                    "AuthorizationUnavailable", "Cannot check permissions now")
        allowed = bool(review.status and review.status.allowed)
        self._access[(user, verb, namespace, name or "")] = allowed
        return allowed

    # -- lookups ----------------------------------------------------------------------------------

    def monitor(self, namespace: str, name: str) -> ServedPipeline:
        monitor = self.deps.pipelines.get(namespace, name)
        if monitor is None or monitor.obj is None:
            raise unknown_pipeline(name)
        return monitor

    async def pipeline(self, request: web.Request, verb: str) -> ServedPipeline:
        namespace = await self.namespace(request)
        name = request.match_info["name"]
        await self.authorize(request, verb, namespace, name)
        return self.monitor(namespace, name)

    # -- handlers -----------------------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        if not self.ready:
            raise ApiError(503, "NotReady", self.not_ready)
        return web.json_response({"status": "ready"})

    async def metrics_page(self, request: web.Request) -> web.Response:
        """``/metrics``. With ``metrics_auth`` "kubernetes" (the default), as controller-runtime's secure metrics
        serving and kube-rbac-proxy do: a bearer token checked by a TokenReview (for the API server's own
        audiences: a scraper sends its service account's token), then a SubjectAccessReview that the user may
        ``get`` the non-resource URL ``/metrics``, both cached and bounded as the API's own checks are; 401 or
        403 otherwise, so the series (which name namespaces) are not anyone's to read."""
        if self.metrics_auth == "kubernetes":
            user = await self._bearer(request, "", "the scraper's service account token (a ServiceMonitor's "
                                                   "bearerTokenFile or authorization)")
            if not await self._allowed(user, "get", "", METRICS_PATH):
                raise ApiError(403, "Forbidden", f"User '{user.username}' may not get {METRICS_PATH}: bind it a "
                                                 "ClusterRole that allows get on the non-resource URL "
                                                 f"{METRICS_PATH} (deploy/monitoring's pipeline-operator-metrics-"
                                                 "reader, the chart's pipeline-operator-metrics-reader-NAMESPACE)")
        counts: dict[str, int] = {}
        samples: list[PipelineSample] = []
        for monitor in self.deps.pipelines.all():
            if monitor.state is not None:
                status = monitor.state.deployment_resources_status.value
                counts[status] = counts.get(status, 0) + 1
                # Only the replica whose loop monitors a pipeline reports it: summed over replicas
                # (shards, a standby), every pipeline then counts once.
                sample = monitor.metrics_sample()
                if sample is not None:
                    samples.append(sample)
        self.metrics.sample_pipelines(samples)
        for status in ("Stopped", "Provisioning", "Provisioned", "Stopping"):
            self.metrics.pipelines.labels(status).set(counts.get(status, 0))
        self._count_store()
        return web.Response(body=generate_latest(self.metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _count_store(self) -> None:
        """Count the event store's events in the background, at most once every ``store_count_seconds`` and one
        count at a time: a scrape never waits for it (it shows the last count), and scrapes, however many,
        cost the store one count per period."""
        now = time.monotonic()
        if self._store_count is not None or now - self._store_counted_at < self.store_count_seconds:
            return
        self._store_counted_at = now
        self._store_count = asyncio.ensure_future(self._counted())

    async def _counted(self) -> None:
        try:  # the metrics of a store that cannot be read now are what /metrics is for: still served
            self.metrics.store_events.set(await asyncio.to_thread(self.deps.events.count))
        except StoreUnavailable as exc:
            log.debug("/metrics: the event store's size is not known now: %s", exc)
        except Exception:  # noqa: BLE001 - a failed count is logged; the next scrape counts again
            log.exception("/metrics: counting the event store's events failed")
        finally:
            self._store_count = None

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi.document())

    async def config(self, request: web.Request) -> web.Response:
        return web.json_response(configuration(VERSION))

    # -- the cluster's health, as Feldera's cluster monitor reports it (platform.py) -------------------------

    async def cluster_health(self, request: web.Request) -> web.Response:
        await self.authenticate(request)  # any authenticated user, as Feldera's
        status, body = await self.cluster.health()
        return web.json_response(body, status=status)

    async def cluster_events(self, request: web.Request) -> web.Response:
        await self.authenticate(request)
        return web.json_response(await self.cluster.list(), headers={"Cache-Control": "no-cache"})

    async def cluster_event(self, request: web.Request) -> web.Response:
        await self.authenticate(request)
        body = await self.cluster.get(request.match_info["event_id"], request.query.get("selector", "status"))
        return web.json_response(body, headers={"Cache-Control": "no-cache"})

    async def _check_cluster(self) -> Check:
        """The operator's three services as Feldera's cluster monitor sees its own (platform.py): ready to
        serve, and, for what runs the pipelines, the Kubernetes API server answering its ``/readyz``."""
        if not self.ready:
            reason = (False, f"The operator is not ready: {self.not_ready}")
            return Check(api=reason, compiler=reason, runner=reason)
        return Check(api=(True, "The operator's HTTP API is ready"),
                     compiler=(True, "SQL programs are compiled by the operator (sqlglot); no Rust is compiled"),
                     runner=await self._kubernetes_ready())

    async def _kubernetes_ready(self) -> tuple[bool, str]:
        kube = self.deps.kube
        try:
            status = await asyncio.wait_for(kube.call(readyz_status, kube.api_client), CHECK_TIMEOUT + 1)
            problem = None if status == 200 else f"HTTP {status}"
        except Exception as exc:  # noqa: BLE001 - whatever it is, the pipelines cannot be run now
            problem = _describe(exc)
        if problem is not None:
            log.warning("cluster health: the Kubernetes API server's /readyz does not answer the operator: %s",
                        problem)
            return False, "The Kubernetes API server is not ready for the operator (the operator's log says why)"
        return True, "The operator's loops run pipelines through the Kubernetes API server, which is ready"

    async def list_events(self, request: web.Request) -> web.StreamResponse:
        monitor = await self.pipeline(request, "get")
        selector = _selector(request)
        if bool_param(request.query, "follow", False):
            return await self.follow.stream(request, monitor.key, selector.value, self.identity(request))
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


def action_of(request: web.Request) -> str:
    """What a request that changes a Pipeline asks for: the action (``start``, ``stop``, ...) or the
    CRUD operation."""
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else ""
    if route.startswith("/v0/pipelines/{name}/"):  # an action, or a data-plane route (ingress/{table_name})
        return route[len("/v0/pipelines/{name}/"):].split("/{")[0]
    return CRUD_ACTIONS.get(request.method, request.method.lower())


def _api_server_message(exc: ApiException) -> str:
    """The message of an API server's refusal (its Status object), or its reason."""
    try:
        message = json.loads(exc.body or "{}").get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message or exc.reason or "")[:500]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"{exc.status} {exc.reason}"
    return f"{type(exc).__name__}: {str(exc)[:300]}"

