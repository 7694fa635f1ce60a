"""The routes Feldera's pipeline-manager answers itself, not by asking the pipeline, as it answers them at the
Feldera version this API matches (``crates/pipeline-manager/src/api/endpoints/``), and the ones Kubernetes
rules out.

- ``POST /v0/pipelines/{name}/update_runtime``: Feldera's manager sets the pipeline's ``platform_version`` to
  its own, only while the pipeline is Stopped (``UpdateRestrictedToStopped``), and answers the pipeline. A
  pipeline here always has the operator's platform version, so the update changes nothing (Feldera: "a no-op"),
  and the answer is the pipeline, or the refusal.
- ``POST /v0/pipelines/{name}/testing``: Feldera's test harness, served only with the ``testing`` unstable
  feature, which ``/v0/config`` says is not enabled: 405 ``UnsupportedPipelineAction``, as Feldera's.
- ``GET /v0/pipelines/{name}/dataflow_graph``: the ``dataflow`` of the program's ``program_info``; the operator's
  compiler writes none, so the answer is Feldera's 404 ``ProgramInfoMissesDataflow`` once the program is compiled
  (``ProgramNotCompiled`` before).
- ``GET /v0/metrics``: the Prometheus text of every Running or Paused pipeline of the tenant (the namespace),
  one after the other, each as its ``/metrics`` answered it; a pipeline that does not answer is left out.
- ``GET /v0/config/session``, ``GET /v0/config/demos`` and ``GET /config/authentication``: as Feldera's
  manager answers them without an identity provider: the tenant (here the namespace), no demos, ``{}``.
- ``/v0/api_keys``: 501 ``NotServed``, naming why: who may call the API is Kubernetes' (tokens, RBAC).
- Any other path under ``/v0/`` is a JSON 404 ``NotFound`` naming the path (Feldera's actix answers an empty
  404), so that a client never reads an HTML page or an empty body.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..core.lifecycle import PipelineState, update_refusal
from ..feldera.runtime_client import PipelineUnreachable
from ..models import RuntimeStatus
from . import pipeline_shape as shape
from . import writes
from .errors import ApiError
from .interaction import reachable_endpoint

if TYPE_CHECKING:
    from .auth import Gate
    from .deps import ApiDeps, ServedPipeline

log = logging.getLogger(__name__)

METRICS_TIMEOUT = 10.0  # Feldera's PIPELINE_HTTP_REQUEST_TIMEOUT for each pipeline's /metrics
MAX_PIPELINE_METRICS = 8 * 1024 * 1024  # bytes of one pipeline's /metrics taken into the tenant's page
METRICS_AT_ONCE = 8  # pipelines asked for their /metrics at once
# Why Feldera's routes that Kubernetes rules out are not served (the message of their 501).
KUBERNETES_RULES_OUT = {
    "/v0/api_keys": "API keys are not served: authentication is Kubernetes'. Use a Kubernetes token for the "
                    "operator's audience as the API key (`kubectl create token NAME --audience pipeline-operator`), "
                    "and RBAC on pipelines.dataflow.dev for what it may do",
}
SESSION_NAMESPACE = uuid.UUID("6c1d4f2e-9a57-4c37-8f0e-2b1a7d3c5e90")  # tenant ids: uuid5 of the namespace's name


async def dataflow_of(deps: ApiDeps, name: str, state: PipelineState) -> Any:
    """Feldera's ``extract_pipeline_dataflow_graph``: the ``dataflow`` of the program's ``program_info``, else
    404 ``ProgramNotCompiled`` (no program info yet) or ``ProgramInfoMissesDataflow``."""
    program_info = await shape.program_info(deps, state)
    if program_info is None:
        raise ApiError(404, "ProgramNotCompiled", f"Pipeline '{name}' has not been compiled yet. Please compile the "
                                                  "pipeline first.", {"pipeline_name": name})
    dataflow = program_info.get("dataflow") if isinstance(program_info, dict) else None
    if dataflow is None:
        raise ApiError(404, "ProgramInfoMissesDataflow", f"Dataflow graph is missing from pipeline '{name}'. The "
                       "pipeline may have been compiled before dataflow graphs were introduced.",
                       {"pipeline_name": name})
    return dataflow


class Manager:
    """Feldera's manager-served routes (see the module's docstring)."""

    def __init__(self, gate: Gate, deps: ApiDeps) -> None:
        self.gate = gate
        self.deps = deps

    def routes(self, r: web.UrlDispatcher) -> None:
        r.add_post("/v0/pipelines/{name}/update_runtime", self.update_runtime)
        r.add_post("/v0/pipelines/{name}/testing", self.testing)
        r.add_get("/v0/pipelines/{name}/dataflow_graph", self.dataflow_graph)
        r.add_get("/v0/metrics", self.metrics)
        self.gate.long_routes.add("GET /v0/metrics")  # it waits for pipelines
        r.add_get("/v0/config/session", self.session)
        r.add_get("/v0/config/demos", self.demos)
        r.add_get("/config/authentication", self.authentication)
        for path in KUBERNETES_RULES_OUT:
            r.add_route("*", path, self.ruled_out)
            r.add_route("*", path + "/{tail:.*}", self.ruled_out)

    async def update_runtime(self, request: web.Request) -> web.Response:
        monitor = await self.gate.pipeline(request, "patch")
        state = await writes.served_state(monitor)
        refusal = update_refusal(state)
        if refusal is not None:
            raise ApiError.refused(refusal)
        assert monitor.obj is not None
        return web.json_response(await shape.pipeline_info(self.deps, monitor.obj, state, "all"),
                                 headers={"Cache-Control": "no-cache"})

    async def testing(self, request: web.Request) -> web.Response:
        await self.gate.authorize(request, "patch", await self.gate.namespace(request), request.match_info["name"])
        reason = '/testing endpoint is disabled. Set FELDERA_UNSTABLE_FEATURES="testing" to enable.'
        raise ApiError(405, "UnsupportedPipelineAction", f"Unsupported pipeline action '/testing': {reason}",
                       {"action": "/testing", "reason": reason})

    async def dataflow_graph(self, request: web.Request) -> web.Response:
        monitor = await self.gate.pipeline(request, "get")
        state = await writes.served_state(monitor)
        return web.json_response(await dataflow_of(self.deps, monitor.key.name, state))

    async def metrics(self, request: web.Request) -> web.Response:
        """Feldera's ``get_metrics``: each Running or Paused pipeline's ``/metrics`` that answered a success,
        followed by a new line, in the order of the list; the others are left out."""
        namespace = await self.gate.namespace(request)
        await self.gate.authorize(request, "list", namespace)
        at_once = asyncio.Semaphore(METRICS_AT_ONCE)
        served = [m for m in self.deps.pipelines.in_namespace(namespace) if m.obj is not None]
        pages = await asyncio.gather(*(self._metrics_of(m, at_once) for m in served))
        return web.Response(body=b"".join(page + b"\n" for page in pages if page is not None),
                            headers={"Content-Type": "text/plain", "Cache-Control": "no-cache",
                                     "X-Content-Type-Options": "nosniff"})

    async def _metrics_of(self, monitor: ServedPipeline, at_once: asyncio.Semaphore) -> bytes | None:
        state = monitor.state
        if state is None or state.deployment_runtime_status not in (RuntimeStatus.RUNNING, RuntimeStatus.PAUSED):
            return None
        async with at_once:
            with contextlib.suppress(ApiError, PipelineUnreachable, TimeoutError):
                endpoint = await reachable_endpoint(self.deps, monitor, state)
                async with asyncio.timeout(METRICS_TIMEOUT), self.deps.runtime.exchange(
                        endpoint, "GET", "/metrics", answer_timeout=METRICS_TIMEOUT,
                        read_timeout=METRICS_TIMEOUT) as answer:
                    if not 200 <= answer.status < 300:
                        return None
                    page = bytearray()
                    async for chunk in answer.chunks():
                        page += chunk
                        if len(page) > MAX_PIPELINE_METRICS:
                            log.info("GET /v0/metrics: pipeline %s answered more than %d bytes: left out",
                                     monitor.key, MAX_PIPELINE_METRICS)
                            return None
                    return bytes(page)
        return None

    async def session(self, request: web.Request) -> web.Response:
        """Feldera's ``SessionInfo``: the tenant is the namespace; its id is derived from the name (the same
        namespace, the same id, on every replica)."""
        await self.gate.authenticate(request)
        namespace = await self.gate.namespace(request)
        return web.json_response({"tenant_id": str(uuid.uuid5(SESSION_NAMESPACE, namespace)),
                                  "tenant_name": namespace})

    async def demos(self, request: web.Request) -> web.Response:
        await self.gate.authenticate(request)
        return web.json_response([])  # Feldera's manager without demo directories

    async def authentication(self, request: web.Request) -> web.Response:
        # Feldera's manager without an identity provider: an empty object (the web console then sends no login).
        return web.json_response({})

    async def ruled_out(self, request: web.Request) -> web.Response:
        prefix = next(p for p in KUBERNETES_RULES_OUT if request.path == p or request.path.startswith(p + "/"))
        raise ApiError(501, "NotServed", f"{request.method} {request.path[:200]} is not served by pipeline-operator: "
                                         f"{KUBERNETES_RULES_OUT[prefix]}",
                       {"path": request.path[:200], "reason": KUBERNETES_RULES_OUT[prefix]})

    async def unknown(self, request: web.Request) -> web.Response:
        raise ApiError(404, "NotFound", f"There is no endpoint {request.method} {request.path[:200]} in Feldera's API "
                                        "(see /v0/openapi.json)", {"path": request.path[:200]})
