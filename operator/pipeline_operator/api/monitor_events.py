"""Monitor events: ``GET /v0/pipelines/{name}/events`` (as a list, or followed live through :mod:`.follow`) and
``GET /v0/pipelines/{name}/events/{event_id}``, read from the event store."""

from __future__ import annotations

import asyncio
import uuid

from aiohttp import web

from ..models import PipelineMonitorEventFieldSelector
from .auth import Gate
from .deps import ApiDeps
from .errors import ApiError, bool_param
from .follow import FollowHub

EVENTS_ROUTE = "/v0/pipelines/{name}/events"


def _selector(request: web.Request) -> PipelineMonitorEventFieldSelector:
    raw = request.query.get("selector", "status")
    try:
        return PipelineMonitorEventFieldSelector(raw)
    except ValueError:
        raise ApiError(400, "InvalidSelector", f"Invalid selector '{raw[:50]}': expected 'all' or 'status'",
                       {"selector": raw[:50]}) from None


class MonitorEvents:
    """The monitor events' routes of one :class:`~.server.ApiServer`."""

    def __init__(self, gate: Gate, deps: ApiDeps, follow: FollowHub) -> None:
        self.gate = gate
        self.deps = deps
        self.follow = follow

    def routes(self, r: web.UrlDispatcher) -> None:
        r.add_get(EVENTS_ROUTE, self.list_events)
        r.add_get("/v0/pipelines/{name}/events/{event_id}", self.get_event)

    async def list_events(self, request: web.Request) -> web.StreamResponse:
        monitor = await self.gate.pipeline(request, "get")
        selector = _selector(request)
        if bool_param(request.query, "follow", False):
            return await self.follow.stream(request, monitor.key, selector.value, self.gate.identity(request))
        body = await asyncio.to_thread(self.deps.events.list_json, monitor.key.uid, selector.value)
        return web.Response(text=body, content_type="application/json", headers={"Cache-Control": "no-cache"})

    async def get_event(self, request: web.Request) -> web.Response:
        monitor = await self.gate.pipeline(request, "get")
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

