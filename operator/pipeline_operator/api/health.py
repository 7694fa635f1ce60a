"""The operator's own routes: liveness and readiness, ``/metrics``, the configuration and OpenAPI document, and
Feldera's cluster health (:mod:`.platform`).

Probes and metrics are served outside the request slots, so a busy API never fails a liveness probe.
``/metrics`` is served only to a bearer whom RBAC allows ``get`` on the non-resource URL ``/metrics``
(``--metrics-auth kubernetes``, the default; ``none`` serves it to anyone), and the event store's size it
shows is counted in the background at most every ``store_count_seconds``, never by a scrape.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..metrics import PipelineSample
from ..store.base import StoreUnavailable
from . import openapi
from .auth import Gate
from .deps import ApiDeps
from .errors import ApiError, describe
from .platform import CHECK_TIMEOUT, VERSION, Check, ClusterMonitor, configuration, readyz_status

log = logging.getLogger(__name__)

PROBES = frozenset({"/healthz", "/readyz", "/metrics"})  # never wait for a request slot
STORE_COUNT_SECONDS = 30.0  # the event store's size (a count of its rows) is taken at most this often
METRICS_PATH = "/metrics"


class Health:
    """The operator's own routes of one :class:`~.server.ApiServer`, and whether it is ready (see the module)."""

    def __init__(self, gate: Gate, deps: ApiDeps, metrics_auth: str = "kubernetes",
                 store_count_seconds: float = STORE_COUNT_SECONDS) -> None:
        self.gate = gate
        self.deps = deps
        self.metrics = deps.metrics
        self.metrics_auth = metrics_auth  # "kubernetes": /metrics needs a token allowed to get it; "none": open
        self.store_count_seconds = store_count_seconds
        self._store_count: asyncio.Task[None] | None = None  # the event store's count under way
        self._store_counted_at = -math.inf
        self._ready = False
        self.not_ready = "The operator is starting"  # what /readyz says until ready
        self.cluster = ClusterMonitor(self._check_cluster)  # Feldera's cluster health (platform.py)

    def routes(self, r: web.UrlDispatcher) -> None:
        r.add_get("/healthz", self.healthz)
        r.add_get("/readyz", self.readyz)
        r.add_get("/metrics", self.metrics_page)
        r.add_get("/v0/config", self.config)
        r.add_get("/v0/openapi.json", self.openapi)
        r.add_get("/api-doc/openapi.json", self.openapi)  # where Feldera's manager serves it
        r.add_get("/v0/cluster_healthz", self.cluster_health)
        r.add_get("/v0/cluster/events", self.cluster_events)
        r.add_get("/v0/cluster/events/{event_id}", self.cluster_event)

    @property
    def ready(self) -> bool:
        """Whether the operator serves (``/readyz``); a change is checked at once by the cluster monitor."""
        return self._ready

    @ready.setter
    def ready(self, value: bool) -> None:
        if value != self._ready:
            self._ready = value
            self.cluster.poke()

    def start(self) -> None:
        self.cluster.start()

    async def stop(self) -> None:
        if self._store_count is not None:
            self._store_count.cancel()
        await self.cluster.stop()

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
            user = await self.gate.bearer(request, "", "the scraper's service account token (a ServiceMonitor's "
                                                        "bearerTokenFile or authorization)")
            if not await self.gate.allowed(user, "get", "", METRICS_PATH):
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
        await self.gate.authenticate(request)  # any authenticated user, as Feldera's
        status, body = await self.cluster.health()
        return web.json_response(body, status=status)

    async def cluster_events(self, request: web.Request) -> web.Response:
        await self.gate.authenticate(request)
        return web.json_response(await self.cluster.list(), headers={"Cache-Control": "no-cache"})

    async def cluster_event(self, request: web.Request) -> web.Response:
        await self.gate.authenticate(request)
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
            problem = describe(exc)
        if problem is not None:
            log.warning("cluster health: the Kubernetes API server's /readyz does not answer the operator: %s",
                        problem)
            return False, "The Kubernetes API server is not ready for the operator (the operator's log says why)"
        return True, "The operator's loops run pipelines through the Kubernetes API server, which is ready"
