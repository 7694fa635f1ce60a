"""The Pipelines as a watch delivers them, so that every replica's HTTP API can serve them.

Only the leader monitors pipelines (:class:`reconciler.PipelineMonitor`). A standby, and the
leader before its loops have started, answer from this cache instead: the Pipeline as the API
server last delivered it, its state read from the status the leader wrote, and its events from the
shared event store. Reads then scale with the replicas while one leader writes.

A change asked of a standby's API is a write to the Pipeline like any other (server-side apply, a
merge patch): the leader's watch delivers it and its loop acts, and the standby's answer waits for
the leader's status write to come back through this replica's own watch, exactly as it waits for
its own loop on the leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import kubernetes

from .. import jsondepth
from ..core import resource
from ..core.lifecycle import PipelineState
from ..identity import PipelineKey
from ..kube.client import KubeClient
from ..kube.informer import Informer
from ..kube.projection import names_and_versions
from ..models import API_GROUP, API_VERSION, PLURAL, PipelineStatus
from ..reconcile.services import PipelineRegistry
from ..reconcile.spec import key_of
from ..reconcile.versions import NewestVersion
from ..reconcile.versions import resource_version as _rv

log = logging.getLogger(__name__)


class CachedPipeline:
    """One Pipeline as the watch delivered it: what the API needs of a monitored pipeline (``key``,
    ``obj``, ``state``, ``adopt``, ``poke``, ``wait_until``) without a monitoring loop."""

    def __init__(self, key: PipelineKey) -> None:
        self.key = key
        self.versions = NewestVersion()
        self._state: tuple[str | None, PipelineState] | None = None
        self._changed = asyncio.Event()
        self.waiting = 0  # calls of wait_until in progress

    @property
    def obj(self) -> dict[str, Any] | None:
        return self.versions.obj

    @property
    def state(self) -> PipelineState | None:
        """The state the leader last wrote to the status (parsed once per version)."""
        obj = self.obj
        if obj is None:
            return None
        rv = _rv(obj)
        if self._state is None or self._state[0] != rv:
            self._state = (rv, resource.from_status(PipelineStatus.model_validate(obj.get("status") or {})))
        return self._state[1]

    def see(self, body: Mapping[str, Any] | None) -> None:
        """A version the watch delivered (None: the Pipeline is gone)."""
        self.versions.see(body)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def adopt(self, obj: Mapping[str, Any]) -> None:
        """The answer of a write made by this replica: newer than what the watch delivered so far."""
        self.versions.adopt(obj)

    def poke(self) -> None:
        """Nothing to wake here: the leader's watch delivers the change to its loop."""

    def metrics_sample(self) -> None:
        """Nothing: the replica whose loop monitors the pipeline reports it."""

    def forwarding(self) -> contextlib.AbstractContextManager[None]:
        """Nothing to hold here: no loop of this replica acts on the pipeline."""
        return contextlib.nullcontext()

    # The timeout is part of the contract (answer False after it, never raise): not a cancel scope for the caller.
    async def wait_until(self, predicate: Callable[[dict[str, Any], PipelineState], bool],
                         timeout: float) -> bool:  # noqa: ASYNC109
        """Wait until the leader's status, as this replica's watch delivers it, satisfies ``predicate``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self.waiting += 1
        try:
            while True:
                obj, state = self.obj, self.state
                if obj is not None and state is not None and predicate(obj, state):
                    return True
                left = deadline - loop.time()
                if left <= 0:
                    return False
                try:
                    await asyncio.wait_for(self._changed.wait(), timeout=left)
                except TimeoutError:
                    return False
        finally:
            self.waiting -= 1


class PipelineCache:
    """Every Pipeline the replica's watch delivered, by namespace and name (fed by :meth:`on_change`,
    the callback of an :class:`informer.Informer` of Pipelines).

    ``monitored(namespace, name)`` says whether this replica's monitoring loop holds the Pipeline (the
    leader's loops): the API then serves the loop, and the cache keeps no copy of that Pipeline (a
    thousand Pipelines with their status history are tens of megabytes). It keeps one again from the
    next version delivered after the loop is gone."""

    def __init__(self, monitored: Callable[[str, str], bool] | None = None) -> None:
        self._by_name: dict[tuple[str, str], CachedPipeline] = {}
        self.monitored = monitored

    def on_change(self, kind: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        where = (meta.get("namespace") or "", meta.get("name") or "")
        cached = self._by_name.get(where)
        if kind == "DELETED":
            if cached is not None and cached.key.uid == meta.get("uid"):
                del self._by_name[where]
                cached.see(None)
            return
        if self._held_by_a_loop(where, cached):
            if cached is not None:
                del self._by_name[where]
            return
        problem = jsondepth.undecodable(obj)
        if problem is not None:  # reported by the leader's loop (an Event, a condition); kept out of what is served
            log.warning("%s/%s: the Pipeline cannot be decoded (%s); not served until it is corrected", *where, problem)
            if cached is not None and cached.key.uid == meta.get("uid"):
                del self._by_name[where]
            return
        if cached is None or cached.key.uid != meta.get("uid"):  # new, or deleted and created again
            cached = self._by_name[where] = CachedPipeline(key_of(obj))
        cached.see(obj)

    def loop_started(self, namespace: str, name: str) -> None:
        """A loop of this replica holds the Pipeline now (the leader's loops start, after a takeover too): its
        copy here goes, unless an answer is waiting on it."""
        where = (namespace, name)
        cached = self._by_name.get(where)
        if cached is not None and self._held_by_a_loop(where, cached):
            del self._by_name[where]

    def _held_by_a_loop(self, where: tuple[str, str], cached: CachedPipeline | None) -> bool:
        """Whether a loop of this replica holds the Pipeline, so that the cache keeps no copy of it: not while an
        answer is waiting on the copy (asked before the loop started)."""
        return (self.monitored is not None and self.monitored(*where)
                and (cached is None or not cached.waiting))

    def loop_ended(self, obj: Mapping[str, Any] | None, watched: Mapping[str, Any] | None) -> None:
        """The loop that held a Pipeline ended, leaving ``obj``, its newest version, while the watch still holds
        it (``watched``: what the watch holds of that name). A loop ends with its Pipeline still there when it
        is being deleted, or its namespace is claimed elsewhere, and the watch may deliver no new version for a
        while: the cache keeps the loop's."""
        if obj is None or watched is None:
            return
        if (watched.get("metadata") or {}).get("uid") == (obj.get("metadata") or {}).get("uid"):
            self.on_change("MODIFIED", dict(obj))

    def get(self, namespace: str, name: str) -> CachedPipeline | None:
        return self._by_name.get((namespace, name))

    def items(self) -> Iterable[tuple[tuple[str, str], CachedPipeline]]:
        return self._by_name.items()


class ServedPipelines:
    """What the HTTP API serves: the pipelines this replica monitors (the leader's loops, which
    know more than their last status write), and the watched ones for the rest."""

    def __init__(self, monitors: PipelineRegistry, cache: PipelineCache | None) -> None:
        self.monitors = monitors
        self.cache = cache

    def get(self, namespace: str, name: str) -> Any:
        monitor = self.monitors.get(namespace, name)
        if monitor is not None and monitor.obj is not None:
            return monitor
        return self.cache.get(namespace, name) if self.cache is not None else monitor

    def _merged(self) -> dict[tuple[str, str], Any]:
        found: dict[tuple[str, str], Any] = {}
        if self.cache is not None:
            found.update((where, cached) for where, cached in self.cache.items() if cached.obj is not None)
        for monitor in self.monitors.all():
            if monitor.obj is not None:
                found[(monitor.key.namespace, monitor.key.name)] = monitor
        return found

    def in_namespace(self, namespace: str) -> list[Any]:
        return [p for (ns, _), p in sorted(self._merged().items()) if ns == namespace]

    def all(self) -> list[Any]:
        return list(self._merged().values())


class PipelineWatch:
    """This replica's watch of the Pipelines, feeding its :class:`PipelineCache`: an :class:`Informer` that keeps
    only names, uids and versions of its own (the cache keeps what it serves)."""

    def __init__(self, kube: KubeClient, namespaces: list[str] | None, cache: PipelineCache) -> None:
        self.cache = cache
        self.informer = Informer(kubernetes.client.ApiClient(kube.api_client.configuration),
                                 path=f"/apis/{API_GROUP}/{API_VERSION}", resource=PLURAL, namespaces=namespaces,
                                 on_change=cache.on_change, name="pipelines", cached_form=names_and_versions)

    async def start(self) -> None:
        await self.informer.start()

    async def stop(self) -> None:
        await self.informer.stop()

    async def wait_synced(self) -> None:
        """Until the watch has listed every Pipeline."""
        await self.informer.wait_synced()

    def uids(self) -> set[str]:
        """The uids of every Pipeline the watch holds."""
        return {(obj.get("metadata") or {}).get("uid", "") for obj in self.informer.list()}

    def loop_ended(self, namespace: str, name: str, obj: Mapping[str, Any] | None) -> None:
        """A loop of this replica ended, leaving ``obj``: the cache keeps it while the watch holds that Pipeline."""
        self.cache.loop_ended(obj, self.informer.get(namespace, name))
