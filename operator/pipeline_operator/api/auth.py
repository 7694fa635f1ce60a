"""A request's way in: who sent it, whether they may do what it asks, and the fair slot it holds meanwhile.

Authentication (``--api-auth kubernetes``, the default): the bearer token is checked with a
TokenReview for the operator's audience and every request with a SubjectAccessReview on
``pipelines.dataflow.dev`` in the target namespace, naming the pipeline when the request names one
(``get``/``list`` to read, ``patch`` to act, ``create``/``update``/``delete`` for pipeline CRUD),
both cached for a few seconds. Authorization is checked before anything else, so a user learns
nothing about a namespace they may not read, not even whether a pipeline exists there.

The checks share the operator's Kubernetes thread pool with reconciliation, so they have their
own bounded capacity (``auth_concurrency`` under way, as many waiting, then 503
``AuthenticationBusy``) and every client address its own rate of uncached token checks (429
``TooManyRequests``): unknown tokens cannot starve the monitoring loops. Concurrent requests that need the same
answer share one check (:meth:`Gate._single_flight`).

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
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from cachetools import TTLCache

from ..models import API_GROUP, PLURAL
from .deps import ApiDeps, ServedPipeline
from .errors import ApiError, describe, unknown_pipeline
from .slots import UNBOUNDED, FairSlots, share

log = logging.getLogger(__name__)

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
QUEUE_TIMEOUT_SECONDS = 10.0  # the longest a request waits for a slot before 503 ApiBusy


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
class Held:
    """The slots one request holds (released when it ends): its identity's from authentication on, one of the
    shared slots from authorization on."""
    stack: contextlib.AsyncExitStack[bool | None]
    long: bool  # it waits for a pipeline or for the monitoring loop
    identity: bool = False
    shared: bool = False


HELD = web.RequestKey("held", Held)


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


class Gate:
    """Authentication, authorization and the request slots of one :class:`~.server.ApiServer` (see the module)."""

    def __init__(self, deps: ApiDeps, auth: str = "kubernetes", default_namespace: str = "default",
                 max_concurrency: int = 64, *, audience: str = "pipeline-operator", auth_concurrency: int = 8,
                 auth_rate: float = 10.0, review_timeout: float = REVIEW_TIMEOUT_SECONDS,
                 max_per_identity: int | None = None, max_per_namespace: int | None = None,
                 queue_timeout: float = QUEUE_TIMEOUT_SECONDS) -> None:
        self.deps = deps
        self.auth = auth
        self.default_namespace = default_namespace
        self.audience = audience
        self.review_timeout = review_timeout
        self.metrics = deps.metrics
        # Keyed by the audience asked for and a digest of the token: a cache of 10 000 tokens of 16 KiB would
        # be 160 MiB.
        self._tokens: TTLCache[tuple[str, bytes], User] = TTLCache(maxsize=10_000, ttl=AUTH_CACHE_SECONDS)
        self._rejected: TTLCache[tuple[str, bytes], str] = TTLCache(maxsize=10_000, ttl=REJECTED_CACHE_SECONDS)
        self._access: TTLCache[tuple[User, str, str, str], bool] = TTLCache(maxsize=50_000, ttl=AUTH_CACHE_SECONDS)
        # Concurrent requests with the same unknown token (an SDK's parallel calls) share one check.
        self._flights: dict[Any, asyncio.Task[Any]] = {}
        self.queue_timeout = queue_timeout
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
        request[USER] = await self.bearer(request, self.audience, self._token_hint())
        await self._hold_identity(request)
        return request[USER]

    async def bearer(self, request: web.Request, audience: str, hint: str) -> User:
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
        if not await self.allowed(user, verb, namespace, name or ""):
            what = f"pipeline '{name}'" if name else f"pipelines.{API_GROUP}"
            raise ApiError(403, "Forbidden", f"User '{user.username}' may not {verb} {what} in namespace "
                                             f"'{namespace}': ask an administrator for a Role that allows "
                                             f"'{verb}' on pipelines.{API_GROUP} there")
        await self._hold_shared(request, namespace)

    async def allowed(self, user: User, verb: str, namespace: str, name: str) -> bool:
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
                          body["kind"], describe(exc))
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
