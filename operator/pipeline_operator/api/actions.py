"""Feldera's lifecycle actions: ``/start``, ``/stop``, ``/pause``, ``/resume``, ``/activate``,
``/approve``, ``/clear`` and ``/dismiss_error``.

Every "may this happen now" question is answered by the pure core's guards
(:func:`core.lifecycle.start_refusal` and its siblings), the same the monitoring loop asks, in
Feldera's order and with Feldera's error codes. A change is written to the Pipeline resource
(spec fields and one-shot annotations, as the API's own field manager) and the answer waits for
the monitoring loop to have acted on it, so that what the SDK reads next already reflects it.
``/pause``, ``/resume``, ``/activate`` and ``/approve`` are forwarded to the pipeline, as
Feldera's manager forwards them, and answer what the pipeline answers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..core.lifecycle import (
    ENTERPRISE_GRACEFUL_STOP,
    PipelineState,
    clear_refusal,
    current_desired,
    dismiss_refusal,
    dismissal_pending,
    start_refusal,
)
from ..models import ActionOutcome, BootstrapPolicy, HandledAction, RuntimeDesiredStatus
from ..reconcile.spec import (
    ANNOTATION_APPROVE,
    ANNOTATION_CLEAR_STORAGE,
    ANNOTATION_DISMISS_ERROR,
    ANNOTATION_START,
    desired_of,
)
from . import writes
from .errors import ApiError, bool_param, unreadable_pipeline
from .interaction import ERROR_TYPES, JSON, PASSED_THROUGH_HEADERS, reachable_endpoint, served_content_type

if TYPE_CHECKING:
    from .auth import Gate
    from .deps import ApiDeps, ServedPipeline

_INITIAL = {"running": RuntimeDesiredStatus.RUNNING, "paused": RuntimeDesiredStatus.PAUSED,
            "standby": RuntimeDesiredStatus.STANDBY}
del ANNOTATION_APPROVE  # approval is forwarded to the pipeline; the annotation is for kubectl users


def _refused(handled: HandledAction | None, value: str) -> ApiError | None:
    if handled is not None and handled.value == value and handled.outcome is ActionOutcome.REFUSED:
        return ApiError(400, handled.error_code or "ActionRefused", handled.message)
    return None


def _silent_bootstrap(request: web.Request) -> bool:
    """``silent_bootstrap``, the one bootstrap flag Feldera's ``/start`` and ``/approve`` take (v0.306: a
    ``concurrent_bootstrap`` is an unknown parameter, ignored as Feldera ignores it)."""
    return bool_param(request.query, "silent_bootstrap", False)


class Actions:
    """The lifecycle actions' routes of one :class:`~.server.ApiServer`."""

    def __init__(self, gate: Gate, deps: ApiDeps) -> None:
        self.gate = gate
        self.deps = deps

    def routes(self, r: web.UrlDispatcher) -> None:
        for action in ("start", "stop", "pause", "resume", "activate", "approve", "clear", "dismiss_error"):
            r.add_post(f"/v0/pipelines/{{name}}/{action}", self._handler(action))

    def _handler(self, action: str) -> Any:
        async def handler(request: web.Request) -> web.StreamResponse:
            monitor = await self.gate.pipeline(request, "patch")
            unreadable = unreadable_pipeline(monitor.obj)
            if unreadable is not None:
                raise unreadable
            state = await writes.served_state(monitor)
            result: web.StreamResponse = await getattr(self, action)(request, monitor, state)
            return result
        return handler

    # -- resources ------------------------------------------------------------------------------

    async def start(self, request: web.Request, monitor: ServedPipeline, state: PipelineState) -> web.Response:
        raw = request.query.get("initial", "running")
        initial = _INITIAL.get(raw)
        if initial is None:
            raise ApiError(405, "UnsupportedPipelineAction",
                           f"Unsupported pipeline action '/start?initial={raw[:20]}': unknown initial runtime "
                           f"desired status: {raw[:20]}",
                           {"action": f"/start?initial={raw[:20]}", "reason": "unknown initial runtime desired status"})
        try:
            policy = BootstrapPolicy.from_feldera(request.query.get("bootstrap_policy", "await_approval"))
        except ValueError as exc:
            raise ApiError(400, "InvalidQueryParameter", str(exc), {"parameter": "bootstrap_policy"}) from None
        silent = _silent_bootstrap(request)
        dismiss = bool_param(request.query, "dismiss_error", True)
        assert monitor.obj is not None
        desired, _ = desired_of(monitor.obj)
        error_after = state.deployment_error is not None and not dismiss and not dismissal_pending(desired, state)
        refusal = start_refusal(state, current_desired(desired, state), initial=initial, bootstrap_policy=policy,
                                error_after_dismissal=error_after, standby_allowed=desired.standby_allowed,
                                silent_bootstrap=silent)
        if refusal is not None:
            raise ApiError.refused(refusal)
        start = writes.nonce()
        annotations = {ANNOTATION_START: start}
        if dismiss and state.deployment_error is not None:
            annotations[ANNOTATION_DISMISS_ERROR] = writes.nonce()
        # The latest start decides how the pipeline starts: an earlier /pause or /resume (kept in
        # spec.runtimeDesiredStatus) does not outlive it.
        await self._one_shot(request, monitor, "start", annotations, {
            "desiredStatus": "Provisioned", "initialRuntimeStatus": initial.value, "runtimeDesiredStatus": None,
            "bootstrapPolicy": policy.value, "silentBootstrap": silent})
        return web.json_response("Pipeline is starting", status=202)

    async def stop(self, request: web.Request, monitor: ServedPipeline, state: PipelineState) -> web.Response:
        force = bool_param(request.query, "force", False)
        if not force and self.deps.community_edition:  # as Feldera's open-source manager
            raise ApiError.refused(ENTERPRISE_GRACEFUL_STOP)
        updated = await writes.patch(self.deps.kube, monitor, {"desiredStatus": "Stopped",
                                                               "stopMode": "Force" if force else "Graceful"},
                                     requested_by=self.gate.requested_by(request, "stop"))
        await writes.settle(monitor, writes.observed(writes.generation(updated)))
        return web.json_response("Pipeline is forcefully stopping" if force else "Pipeline is stopping", status=202)

    async def clear(self, request: web.Request, monitor: ServedPipeline, state: PipelineState) -> web.Response:
        refusal = clear_refusal(state)
        if refusal is not None:
            raise ApiError.refused(refusal)
        if state.storage_status.value != "Cleared":
            await self._one_shot(request, monitor, "clear_storage", {ANNOTATION_CLEAR_STORAGE: writes.nonce()})
        return web.json_response("Pipeline storage is being cleared", status=202)

    async def dismiss_error(self, request: web.Request, monitor: ServedPipeline,
                            state: PipelineState) -> web.Response:
        refusal = dismiss_refusal(state)
        if refusal is not None:
            raise ApiError.refused(refusal)
        if state.deployment_error is not None:
            await self._one_shot(request, monitor, "dismiss_error", {ANNOTATION_DISMISS_ERROR: writes.nonce()})
        return web.json_response("Pipeline deployment error has been dismissed", status=200)

    async def _one_shot(self, request: web.Request, monitor: ServedPipeline, action: str,
                        annotations: dict[str, str], spec: dict[str, Any] | None = None) -> None:
        """Write a one-shot request (its annotation, the first of ``annotations``, with a new value, and
        any spec change), wait until the loop handled it, and answer its refusal if it was refused."""
        value = next(iter(annotations.values()))
        await writes.patch(self.deps.kube, monitor, spec, annotations,
                           requested_by=self.gate.requested_by(request, action))

        def handled(state: PipelineState) -> HandledAction | None:
            found: HandledAction | None = getattr(state, f"handled_{action}")
            return found

        await writes.settle(monitor, lambda obj, st: (h := handled(st)) is not None and h.value == value)
        refused = _refused(handled(monitor.state) if monitor.state else None, value)
        if refused is not None:
            raise refused

    # -- forwarded to the pipeline ----------------------------------------------------------------

    async def _forward(self, monitor: ServedPipeline, state: PipelineState, method: str, path: str,
                       query: str = "") -> tuple[int, bytes, str]:
        endpoint = await reachable_endpoint(self.deps, monitor, state)
        answer = await self.deps.runtime.forward(endpoint, method, path, query)
        if answer is None:
            raise ApiError(503, "PipelineInteractionUnreachable",
                           f"Error sending HTTP request to pipeline: it did not answer. Failed request: {method} "
                           f"{path} (pipeline: '{monitor.key.name}')")
        monitor.poke()  # Feldera's notify: look at the pipeline again at once
        return answer

    @staticmethod
    def _answer(status: int, body: bytes, media_type: str) -> web.Response:
        """The pipeline's answer to a forwarded action, served as a passed-through answer is (Feldera's pipeline
        answers these with JSON; any other type, but plain text for an error, is an opaque body)."""
        allowed = (JSON, *ERROR_TYPES) if status >= 400 else (JSON,)
        return web.Response(status=status, body=body, headers={
            **PASSED_THROUGH_HEADERS, "Content-Type": served_content_type(media_type, None, allowed)})

    async def _runtime_desired(self, request: web.Request, monitor: ServedPipeline, state: PipelineState,
                               method: str, path: str, target: str, query: str = "") -> web.Response:
        # The loop holds the pipeline at the spec's runtime desired status: until the spec names the new
        # one, it must not put the pipeline back (forwarding()).
        with monitor.forwarding():
            status, body, content_type = await self._forward(monitor, state, method, path, query)
            if status < 300:
                # Kept in the spec so that the monitoring loop holds the pipeline there (level-based).
                action = path.strip("/") if path != "/start" else "resume"
                await writes.patch(self.deps.kube, monitor, {"runtimeDesiredStatus": target},
                                   requested_by=self.gate.requested_by(request, action))
        return self._answer(status, body, content_type)

    async def pause(self, request: web.Request, monitor: ServedPipeline, state: PipelineState) -> web.Response:
        return await self._runtime_desired(request, monitor, state, "GET", "/pause", "Paused")

    async def resume(self, request: web.Request, monitor: ServedPipeline, state: PipelineState) -> web.Response:
        return await self._runtime_desired(request, monitor, state, "GET", "/start", "Running")

    async def activate(self, request: web.Request, monitor: ServedPipeline, state: PipelineState) -> web.Response:
        raw = request.query.get("initial", "running")
        if raw not in ("running", "paused"):
            raise ApiError(400, "InvalidActivateStatus",
                           f"Invalid activation status {raw[:20]} (only running and paused are valid)")
        return await self._runtime_desired(request, monitor, state, "POST", "/activate", raw.capitalize(),
                                           f"initial={raw}")

    async def approve(self, request: web.Request, monitor: ServedPipeline, state: PipelineState) -> web.Response:
        flags = "silent_bootstrap=true" if _silent_bootstrap(request) else ""
        status, body, content_type = await self._forward(monitor, state, "POST", "/approve", flags)
        if status < 300:
            # Nothing of the spec changes, but the Events of the bootstrap that follows are the approver's.
            await writes.patch(self.deps.kube, monitor, requested_by=self.gate.requested_by(request, "approve"))
        return self._answer(status, body, content_type)
