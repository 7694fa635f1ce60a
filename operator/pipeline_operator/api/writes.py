"""How the HTTP API changes a Pipeline: as its own field manager, then waits for the operator's
monitoring loop to have acted on the change, so that the answer (and the next read) reflects it,
as Feldera's synchronous database writes do."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..core.lifecycle import PipelineState
from ..kube.client import Forbidden, KubeClient
from ..kube.events import ANNOTATION_REQUESTED_BY
from ..reconcile.spec import ANNOTATION_API_SPEC, spec_marker
from .errors import ApiError, unknown_pipeline

if TYPE_CHECKING:
    from .deps import ServedPipeline

FIELD_MANAGER = "pipeline-operator-api"
# How long an answer waits for the monitoring loop to act on a change (it is woken at once; this
# bounds a loaded or restarting operator). After it, the change stands and the answer says so.
SETTLE_SECONDS = 20.0


def nonce() -> str:
    """A new value for a one-shot annotation."""
    return uuid.uuid4().hex


def merged(target: Any, patch: Any) -> Any:
    """``target`` after the JSON merge patch ``patch`` (RFC 7386: objects merge, null removes a key)."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merged(out.get(key), value)
    return out


async def patch(kube: KubeClient, monitor: ServedPipeline, spec: dict[str, Any] | None = None,
                annotations: dict[str, str] | None = None, *, requested_by: str | None = None) -> dict[str, Any]:
    """A merge patch of the Pipeline's spec and annotations; the loop gets the new object at once.

    ``requested_by`` (:meth:`.auth.Gate.requested_by`) goes into the same patch as the change, so
    the object that carries the change says who asked for it (and the Events that follow)."""
    body: dict[str, Any] = {}
    annotations = dict(annotations or {})
    if spec:
        body["spec"] = spec
        # The spec this write makes, named in the same write: the monitoring loop then knows the change was
        # made through the API (it starts nothing and dismisses nothing; see Desired.spec_by_api).
        marker = spec_marker(merged((monitor.obj or {}).get("spec") or {}, spec))
        if marker is not None:
            annotations[ANNOTATION_API_SPEC] = marker
    if requested_by is not None:
        annotations[ANNOTATION_REQUESTED_BY] = requested_by
    if annotations:
        body["metadata"] = {"annotations": annotations}
    try:
        updated = await kube.merge_patch_pipeline(monitor.key.namespace, monitor.key.name, body, FIELD_MANAGER)
    except Forbidden as exc:
        raise ApiError(503, "OperatorForbidden", f"The operator may not change the pipeline: {exc}") from exc
    if updated is None:
        raise unknown_pipeline(monitor.key.name)
    monitor.adopt(updated)
    monitor.poke()
    return updated


def generation(obj: dict[str, Any]) -> int:
    return int((obj.get("metadata") or {}).get("generation") or 1)


# The timeout is part of the contract (answer False after it, never raise): not a cancel scope for the caller.
async def settle(monitor: ServedPipeline, predicate: Callable[[dict[str, Any], PipelineState], bool],
                 timeout: float = SETTLE_SECONDS) -> bool:  # noqa: ASYNC109
    return await monitor.wait_until(predicate, timeout)


def observed(gen: int) -> Callable[[dict[str, Any], PipelineState], bool]:
    """The loop has decided from generation ``gen`` (or newer)."""
    return lambda obj, state: (state.observed_generation or 0) >= gen


async def served_state(monitor: ServedPipeline) -> PipelineState:
    """The state the monitoring loop last recorded (waiting for its first pass if needed, and for a status write
    in flight: a client that saw it through the API server is answered from it)."""
    await monitor.settled()
    if monitor.state is None:
        await settle(monitor, lambda obj, state: True, timeout=10.0)
    if monitor.state is None:
        raise ApiError(503, "PipelineNotReady", f"The operator has not looked at pipeline "
                                                f"'{monitor.key.name}' yet; try again")
    return monitor.state
