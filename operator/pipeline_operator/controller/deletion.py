"""Deleting a Pipeline: one step per call of Kopf's delete handler (:mod:`.registry`), until its compute
is stopped and its storage cleared (or retained), then the removal of its events is queued and Kopf removes
the finalizer.

While the deletion is not done, the step raises ``kopf.TemporaryError`` with a delay growing from Kopf's
``retry`` count (1 s, doubling, up to 30 s): Kopf keeps the finalizer, records its progress in the
``operator.dataflow.dev/`` annotations (never in the status, which the operator writes) and calls again. It
never gives up. A deletion that cannot finish says so (``DeletionStuck``), once, and can be released by an
administrator (``dataflow.dev/release-finalizer: "true"``).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import MutableMapping
from typing import Any

import kopf

from ..core.lifecycle import ComputeState
from ..identity import PipelineKey
from ..kube.client import Conflict, Forbidden, Gone
from ..models import StorageDeletionPolicy
from ..reconcile.recording import post_event
from ..reconcile.services import LoopServices
from ..reconcile.spec import key_of

log = logging.getLogger(__name__)

FINALIZER = "dataflow.dev/finalizer"
ANNOTATION_RELEASE_FINALIZER = "dataflow.dev/release-finalizer"
REASON_DELETION_STUCK = "DeletionStuck"
REASON_FINALIZER_RELEASED = "FinalizerReleased"
DELETE_RETRY_FIRST = 1.0  # seconds before the second try of a deletion that does not finish
DELETE_RETRY_MAX = 30.0  # seconds between tries of a deletion that does not finish, at most
# What one call leaves for the next in Kopf's per-object memo (this process only).
_LAST_PROBLEM = "deletion_last_problem"
_STUCK_POSTED = "deletion_stuck_posted"


def retry_delay(retry: int) -> float:
    """Seconds before the next try, after ``retry`` earlier retries (Kopf's count): 1, 2, 4, ... up to 30."""
    return min(DELETE_RETRY_FIRST * 2.0 ** min(retry, 16), DELETE_RETRY_MAX)


async def delete_pipeline(ctx: LoopServices, body: dict[str, Any], *, retry: int = 0,
                          memo: MutableMapping[str, Any] | None = None) -> None:
    """One try at deleting a Pipeline: stop its compute, clear its storage (or, with
    ``spec.storage.deletionPolicy: Retain``, release it for the next Pipeline of the same name); once that is
    done, queue the removal of its events and return (the finalizer goes). The event store is not waited for
    (read-only, full or away, it would hold the deletion for as long as that lasts), and what the removal
    misses (the operator stopped before the store took it) the sweep removes later.

    While something is left, raise ``kopf.TemporaryError`` naming it, with :func:`retry_delay` of ``retry``
    (Kopf's count of earlier retries). After ``deletion_timeout`` seconds (counted from the deletion) the
    Pipeline says so: a ``Stalled`` condition (reason ``DeletionStuck``) naming what is left, and one Warning
    Event (the condition, read from the Pipeline, keeps both from being repeated, across restarts too). The
    annotation ``dataflow.dev/release-finalizer: "true"`` releases the finalizer deliberately, leaving what is
    left behind (logged and posted). ``memo`` (Kopf's per-object memo) keeps the last problem between calls."""
    memo = {} if memo is None else memo
    key = key_of(body)
    started = _timestamp((body.get("metadata") or {}).get("deletionTimestamp")) or dt.datetime.now(dt.UTC)
    last_problem: str | None = memo.get(_LAST_PROBLEM)
    problem: str | None = None
    try:
        obj = await ctx.kube.get_pipeline(key.namespace, key.name)
    except Exception as exc:  # noqa: BLE001 - the API server may be unreachable: try again later
        obj, problem = body, f"reading the Pipeline failed ({exc})"
    else:
        if obj is None or (obj.get("metadata") or {}).get("uid") != key.uid:
            return  # gone already
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    if annotations.get(ANNOTATION_RELEASE_FINALIZER) == "true":
        await _release(ctx, key, await _leftovers(ctx, key, last_problem))
        return
    if problem is None:
        try:
            problem = await _deletion_step(ctx, key, _retains_storage(obj))
        except Forbidden as exc:
            problem = f"{exc}; grant it in the operator's Role or ClusterRole"
        except Exception as exc:  # noqa: BLE001 - reported in the condition, retried
            problem = f"{type(exc).__name__}: {exc}"
    if problem is None:
        await ctx.backend.forget(key)
        await ctx.sink.forget(key)
        storage = "retained" if _retains_storage(obj) else "cleared"
        log.info("%s: pipeline deleted: compute stopped, storage %s, removal of its events queued; "
                 "releasing the finalizer", key, storage)
        return
    conditions = ((obj.get("status") or {}).get("conditions") or [])
    reported = any(c.get("reason") == REASON_DELETION_STUCK for c in conditions)  # also before a restart
    posted = memo.setdefault(_STUCK_POSTED, reported)
    waited = (dt.datetime.now(dt.UTC) - started).total_seconds()
    if problem != last_problem:
        log.info("%s: deleting: %s; trying again with growing delays (up to %.0fs)", key, problem,
                 DELETE_RETRY_MAX)
        memo[_LAST_PROBLEM] = problem
    if waited >= ctx.settings.deletion_timeout and not (reported and posted):
        message = (f"Deleting the pipeline has not finished after {waited:.0f}s: {problem}. The operator keeps "
                   f"trying. To release the finalizer anyway, leaving it behind: kubectl annotate pipeline "
                   f"{key.name} -n {key.namespace} {ANNOTATION_RELEASE_FINALIZER}=true")
        if not reported:
            await _report_stuck(ctx, key, obj, message)
        if not posted:
            log.warning("%s: %s", key, message)
            memo[_STUCK_POSTED] = await post_event(ctx.kube, ctx.settings.operator_name, key, "Warning",
                                                   REASON_DELETION_STUCK, message)
    delay = retry_delay(retry)
    log.debug("%s: deleting, try %d: %s; next try in %.0fs", key, retry + 1, problem, delay)
    raise kopf.TemporaryError(problem, delay=delay)


def _retains_storage(obj: dict[str, Any]) -> bool:
    """``spec.storage.deletionPolicy`` is Retain (read from the object as stored: a deletion must go on even
    if the rest of its spec no longer validates)."""
    storage = ((obj.get("spec") or {}).get("storage") or {})
    return bool(storage.get("deletionPolicy") == StorageDeletionPolicy.RETAIN.value)


async def _deletion_step(ctx: LoopServices, key: PipelineKey, retain_storage: bool = False) -> str | None:
    """One try: what is still there (and asked to go away), or None when everything is gone. Retained
    storage is released from the pipeline instead of deleted, once its compute is gone (nothing writes
    to it any more)."""
    compute = await ctx.backend.observe_compute(key)
    if compute.state is not ComputeState.ABSENT:
        await ctx.backend.deprovision(key)
        why = f": {compute.message}" if compute.message else ""
        return f"{ctx.backend.describe_compute(key)} is still {compute.state.value}{why}"
    if retain_storage:
        await ctx.backend.retain_storage(key)
        return None
    if await ctx.backend.storage_exists(key):
        await ctx.backend.clear_storage(key)
        return f"{ctx.backend.describe_storage(key)} still exists (its deletion was requested)"
    return None


async def _leftovers(ctx: LoopServices, key: PipelineKey, last_problem: str | None) -> str:
    """What a release leaves behind, as seen now (without asking anything to go away)."""
    left = []
    try:
        compute = await ctx.backend.observe_compute(key)
        if compute.state is not ComputeState.ABSENT:
            left.append(f"{ctx.backend.describe_compute(key)} ({compute.state.value})")
        if await ctx.backend.storage_exists(key):
            left.append(ctx.backend.describe_storage(key))
    except Exception as exc:  # noqa: BLE001 - the last known problem is named instead
        return f"{last_problem or 'unknown'} (looking again failed: {exc})"
    return ", ".join(left) or "nothing (compute and storage are gone)"


async def _report_stuck(ctx: LoopServices, key: PipelineKey, obj: dict[str, Any], message: str) -> bool:
    """``Stalled`` True and ``Ready`` False, reason ``DeletionStuck`` (kstatus: Failed); False if the write failed."""
    status = dict(obj.get("status") or {})
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    generation = (obj.get("metadata") or {}).get("generation")
    kept = [c for c in status.get("conditions") or [] if c.get("type") not in ("Stalled", "Ready")]
    for kind, value in (("Stalled", "True"), ("Ready", "False")):
        condition = {"type": kind, "status": value, "reason": REASON_DELETION_STUCK, "message": message[:4096],
                     "lastTransitionTime": now}
        if generation is not None:
            condition["observedGeneration"] = generation
        kept.append(condition)
    status["conditions"] = kept
    try:
        await ctx.kube.write_status(key.namespace, key.name, obj["metadata"]["resourceVersion"], status)
        return True
    except (Conflict, Gone):
        return False
    except Exception as exc:  # noqa: BLE001 - tried again at the next retry
        log.warning("%s: could not write the DeletionStuck condition (%s); trying again", key, exc)
        return False


async def _release(ctx: LoopServices, key: PipelineKey, left: str) -> None:
    """An administrator released the finalizer: say what is left behind, then let the Pipeline go."""
    message = (f"The finalizer was released by the {ANNOTATION_RELEASE_FINALIZER} annotation before deletion "
               f"finished; left behind (remove by hand): {left}")
    log.warning("%s: %s", key, message)
    await post_event(ctx.kube, ctx.settings.operator_name, key, "Warning", REASON_FINALIZER_RELEASED, message)
    try:
        await ctx.sink.forget(key)
    except Exception as exc:  # noqa: BLE001 - the sweep removes the events later; the release goes on
        log.warning("%s: could not remove its monitor events (%s)", key, exc)


def _timestamp(value: Any) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00")) if value else None
    except ValueError:
        return None


__all__ = ["ANNOTATION_RELEASE_FINALIZER", "DELETE_RETRY_MAX", "FINALIZER", "delete_pipeline", "retry_delay"]
