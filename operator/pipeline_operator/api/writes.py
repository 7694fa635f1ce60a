"""How the HTTP API changes a Pipeline: as its own field manager, then waits for the operator's
monitoring loop to have acted on the change, so that the answer (and the next read) reflects it,
as Feldera's synchronous database writes do."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..core.lifecycle import PipelineState
from ..kube import Forbidden, Kube
from ..kube_events import ANNOTATION_REQUESTED_BY
from .errors import ApiError, unknown_pipeline

if TYPE_CHECKING:
    from .server import ServedPipeline

FIELD_MANAGER = "pipeline-operator-api"
# How long an answer waits for the monitoring loop to act on a change (it is woken at once; this
# bounds a loaded or restarting operator). After it, the change stands and the answer says so.
SETTLE_SECONDS = 20.0


def nonce() -> str:
    """A new value for a one-shot annotation."""
    return uuid.uuid4().hex


async def patch(kube: Kube, monitor: ServedPipeline, spec: dict[str, Any] | None = None,
                annotations: dict[str, str] | None = None, *, requested_by: str | None = None) -> dict[str, Any]:
    """A merge patch of the Pipeline's spec and annotations; the loop gets the new object at once.

    ``requested_by`` (:meth:`ApiServer.requested_by`) goes into the same patch as the change, so
    the object that carries the change says who asked for it (and the Events that follow)."""
    body: dict[str, Any] = {}
    if spec:
        body["spec"] = spec
    annotations = dict(annotations or {})
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
