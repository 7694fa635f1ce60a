"""The aiohttp application: the routes of every room of the API assembled, served (TLS, bounds of a
connection), and every request's outcome answered as Feldera's ErrorResponse, counted and audited.

Feldera's own SDK works against it unchanged: ``FelderaClient(url, api_key=token)`` with the namespace in the
``Feldera-Tenant`` header. Reads come from the event store and the operator's in-memory view of
Pipelines (no API-server call per request beyond cached authentication checks); writes are
changes of the Pipeline resource (:mod:`.pipelines`, :mod:`.actions`). Who may do what, and the fair
slots requests are served from, are :mod:`.auth`'s; the operator's own routes (probes, metrics, cluster
health) :mod:`.health`'s.

Every mutating request is written to the audit log (logger ``pipeline_operator.audit``), and the
change it makes carries the requester in the annotation ``dataflow.dev/requested-by``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import cast

import urllib3.exceptions
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from kubernetes.client.exceptions import ApiException

from ..store.base import StoreUnavailable
from .actions import Actions
from .auth import (
    HELD,
    NAMESPACE,
    PIPELINE,
    QUEUE_TIMEOUT_SECONDS,
    REVIEW_TIMEOUT_SECONDS,
    TENANT_HEADER,
    USER,
    VERB,
    Gate,
    Held,
    User,
)
from .binaries import Binaries
from .deps import ApiDeps
from .errors import ApiError, describe
from .follow import FollowHub, FollowLimits
from .health import PROBES, STORE_COUNT_SECONDS, Health
from .interaction import Interaction
from .manager import Manager
from .monitor_events import EVENTS_ROUTE, MonitorEvents
from .pipelines import Pipelines
from .support_bundle import SupportBundles
from .ui import Ui

log = logging.getLogger(__name__)
audit_log = logging.getLogger("pipeline_operator.audit")

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# What a request that changes a Pipeline asks for, by method (CRUD) or by its last path segment (actions).
CRUD_ACTIONS = {"POST": "create", "PUT": "create_or_replace", "PATCH": "update", "DELETE": "delete"}
# Errors of the Kubernetes client other than an API answer: the API server is away, not a bug here.
KUBE_UNAVAILABLE: tuple[type[BaseException], ...] = (ApiException, urllib3.exceptions.HTTPError, ConnectionError,
                                                     TimeoutError)


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
    """The HTTP API: its rooms' routes in one application, served on one address."""

    def __init__(self, deps: ApiDeps, auth: str = "kubernetes", default_namespace: str = "default",
                 max_concurrency: int = 64, *, audience: str = "pipeline-operator", auth_concurrency: int = 8,
                 auth_rate: float = 10.0, tls_cert: Path | None = None, tls_key: Path | None = None,
                 review_timeout: float = REVIEW_TIMEOUT_SECONDS, ui_enabled: bool = True,
                 follow_limits: FollowLimits | None = None, max_per_identity: int | None = None,
                 max_per_namespace: int | None = None, queue_timeout: float = QUEUE_TIMEOUT_SECONDS,
                 metrics_auth: str = "kubernetes", store_count_seconds: float = STORE_COUNT_SECONDS) -> None:
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        self.deps = deps
        self.auth = auth
        self.default_namespace = default_namespace
        self.audience = audience
        self.tls_cert, self.tls_key = tls_cert, tls_key
        self.ui_enabled = ui_enabled  # off: /ui is not routed (404)
        self.metrics = deps.metrics
        self.gate = Gate(deps, auth, default_namespace, max_concurrency, audience=audience,
                         auth_concurrency=auth_concurrency, auth_rate=auth_rate, review_timeout=review_timeout,
                         max_per_identity=max_per_identity, max_per_namespace=max_per_namespace,
                         queue_timeout=queue_timeout)
        self.health = Health(self.gate, deps, metrics_auth, store_count_seconds)
        self.follow = FollowHub(deps.events, follow_limits)  # live event streams (events?follow=true)
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    @property
    def ready(self) -> bool:
        """Whether the operator serves (``/readyz``); a change is checked at once by the cluster monitor."""
        return self.health.ready

    @ready.setter
    def ready(self, value: bool) -> None:
        self.health.ready = value

    @property
    def not_ready(self) -> str:
        """What ``/readyz`` says while the operator is not ready."""
        return self.health.not_ready

    @not_ready.setter
    def not_ready(self, value: str) -> None:
        self.health.not_ready = value

    # -- the application ------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=512 * 1024, middlewares=[self._middleware])
        r = app.router
        self.health.routes(r)
        Pipelines(self.gate, self.deps).routes(r)
        MonitorEvents(self.gate, self.deps, self.follow).routes(r)
        Actions(self.gate, self.deps).routes(r)
        Interaction(self.gate, self.deps, self.follow).routes(r)
        manager = Manager(self.gate, self.deps)
        manager.routes(r)
        SupportBundles(self.gate, self.deps).routes(r)
        Binaries(self.gate, self.deps).routes(r)
        if self.ui_enabled:
            Ui(self.gate, self.deps).routes(r)
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
        self.health.start()
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
        await self.health.stop()
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
            if request.path in PROBES or keyed in self.gate.unpooled_routes or (
                    route == EVENTS_ROUTE and request.query.get("follow", "").lower() in ("true", "1")):
                # Probes never wait for a request slot; streams and uploads are long and have their own bounds.
                response = await handler(request)
            else:
                async with contextlib.AsyncExitStack() as stack:  # the slots it takes on its way, given back
                    request[HELD] = Held(stack, long=request.method in MUTATING or keyed in self.gate.long_routes)
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
                            request.path[:200], describe(exc))
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

