"""The events of Pipelines that no longer exist are removed from the event store by a sweep.

A deletion queues the removal of its pipeline's events (:meth:`EventStorage.forget`) and does not wait
for the store to carry it out: the finalizer stands for the pipeline's compute and storage, and a
store that is read-only, full or unreachable must not hold up ``kubectl delete`` (nor a namespace's
deletion) for as long as it lasts. A queued removal reaches the store once it accepts writes again,
unless the operator stops first (the queue is in memory), and the removal never happens when the
finalizer goes without the operator (``dataflow.dev/release-finalizer``, a finalizer removed by hand
while no operator ran). The sweep catches those: every ``--events-sweep-interval`` seconds (and once
at start) it lists the pipeline uids the store holds, and removes the events of each uid that no
Pipeline has any more.

Nothing a Pipeline still has is ever removed: a uid that a monitoring loop holds, or that the watch of
the Pipelines shows under its name, is left alone, and any other is looked up at the API server (a
read from etcd, not a cache) before its events go: gone (404), or its name now held by another uid
(deleted and created again). A uid never comes back once its Pipeline is gone, so that answer is
final. A Pipeline being deleted still exists (its finalizer holds it): its deletion removes its
events, or the next sweep after it is gone does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ..identity import PipelineKey
from .base import EventStorage

log = logging.getLogger(__name__)

LOOKUPS_PER_SWEEP = 50  # Pipelines looked up at the API server in one sweep, at most (the rest wait for the next)


GetPipeline = Callable[[str, str], Awaitable[dict[str, Any] | None]]


async def sweep(store: EventStorage, get_pipeline: GetPipeline, *, known: Callable[[], set[str]],
                in_scope: Callable[[str], bool], lookups: int = LOOKUPS_PER_SWEEP) -> list[PipelineKey]:
    """One sweep: queue the removal of the events of every stored pipeline whose Pipeline is gone, and
    return those pipelines. ``known()``: the uids the monitoring loops and the watch of the Pipelines
    have now (left alone without a lookup); ``in_scope(namespace)``: this operator acts on that
    namespace; ``get_pipeline(namespace, name)``: the Pipeline from the API server, None when there is
    none. A failed lookup (the API server away, no permission) ends the sweep; the next one tries again."""
    skip = known() | store.forgetting()  # a removal already queued is not queued again while it waits
    uids = [uid for uid in await asyncio.to_thread(store.pipeline_uids) if uid not in skip]
    gone: list[PipelineKey] = []
    for uid in uids:
        if lookups <= 0:
            break
        key = await asyncio.to_thread(store.pipeline_key, uid)
        if key is None or not in_scope(key.namespace):
            continue
        lookups -= 1
        obj = await get_pipeline(key.namespace, key.name)
        if obj is None or (obj.get("metadata") or {}).get("uid") != uid:
            log.info("%s: removing its events from the event store: the Pipeline no longer exists (uid %s)", key, uid)
            store.forget(key)
            gone.append(key)
    return gone


async def keep_sweeping(store: EventStorage, get_pipeline: GetPipeline, *, known: Callable[[], set[str]],
                        in_scope: Callable[[str], bool], interval: float) -> None:
    """Sweep now, then every ``interval`` seconds, until cancelled; a failed sweep is one log line."""
    while True:
        try:
            await sweep(store, get_pipeline, known=known, in_scope=in_scope)
        except Exception as exc:  # noqa: BLE001 - the store or the API server is away: the next sweep tries again
            log.info("event store: the sweep for events of deleted pipelines did not finish (%s: %s); trying again "
                     "in %.0fs", type(exc).__name__, exc, interval)
        await asyncio.sleep(interval)
