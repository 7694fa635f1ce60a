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
from ..reconcile.reconciler import PipelineMonitor
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

    async def settled(self) -> None:
        """Nothing in flight here: the leader writes the status, and this replica reads it from its watch."""

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
                    async with asyncio.timeout(left):  # not wait_for (docs/architecture.md)
                        await self._changed.wait()
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

    def __init__(self, monitors: PipelineRegistry[PipelineMonitor], cache: PipelineCache | None) -> None:
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
    """This replica's one watch of the Pipelines, feeding its :class:`PipelineCache` and knowing which Pipelines
    exist (their uids, for the events sweep).

    A standby, and the leader until Kopf has listed the Pipelines, watch them with an :class:`Informer` of
    their own (keeping only names, uids and versions: the cache keeps what it serves). Once Kopf runs, its
    watch feeds the cache instead (:meth:`listing`, :meth:`event`, :meth:`listed`, heard through
    :func:`.kopf_workarounds.following_kopf_watches`): from the moment Kopf starts listing a namespace the
    informer's events of it are ignored, and once Kopf has listed every namespace, what its listings did not
    hold is gone (deleted in between) and the informer stops. The leader then runs one watch of the Pipelines,
    Kopf's, and so after every relist of Kopf's: a Pipeline its new listing does not hold is gone."""

    def __init__(self, kube: KubeClient, namespaces: list[str] | None, cache: PipelineCache) -> None:
        self.cache = cache
        self.namespaces = namespaces  # None: all namespaces
        self.informer: Informer | None = Informer(
            kubernetes.client.ApiClient(kube.api_client.configuration), path=f"/apis/{API_GROUP}/{API_VERSION}",
            resource=PLURAL, namespaces=namespaces, on_change=self._from_informer, name="pipelines",
            cached_form=names_and_versions)
        self._uids: dict[tuple[str, str], str] = {}  # every Pipeline delivered and not deleted: its uid
        self._kopf: dict[str | None, set[tuple[str, str]] | None] = {}  # Kopf's streams: listing (what) or listed
        self._synced = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        if self.informer is not None:
            await self.informer.start()
            self._spawn(self._informer_synced(self.informer))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.informer is not None:
            informer, self.informer = self.informer, None
            await informer.stop()

    async def wait_synced(self) -> None:
        """Until the watch (the informer's or Kopf's) has listed every Pipeline."""
        await self._synced.wait()

    def uids(self) -> set[str]:
        """The uids of every Pipeline the watch holds."""
        return set(self._uids.values())

    def loop_ended(self, namespace: str, name: str, obj: Mapping[str, Any] | None) -> None:
        """A loop of this replica ended, leaving ``obj``: the cache keeps it while the watch holds that Pipeline."""
        uid = self._uids.get((namespace, name))
        self.cache.loop_ended(obj, None if uid is None else {"metadata": {"uid": uid}})

    @property
    def watches(self) -> int:
        """The watches of the Pipelines this replica runs: the informer's, Kopf's (1 once Kopf has taken over)."""
        return (self.informer is not None) + bool(self._kopf)

    # -- the feeds ---------------------------------------------------------------------------------------------

    def _deliver(self, kind: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        where = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        if kind == "DELETED":
            if self._uids.get(where) == meta.get("uid"):
                del self._uids[where]
        else:
            self._uids[where] = str(meta.get("uid") or "")
        self.cache.on_change(kind, obj)

    def _from_informer(self, kind: str, obj: dict[str, Any]) -> None:
        namespace = (obj.get("metadata") or {}).get("namespace") or ""
        if None not in self._kopf and namespace not in self._kopf:  # not Kopf's yet
            self._deliver(kind, obj)

    async def _informer_synced(self, informer: Informer) -> None:
        await informer.wait_synced()
        self._synced.set()

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def listing(self, group: str, plural: str, namespace: str | None) -> None:
        """Kopf lists the Pipelines of ``namespace`` (None: all namespaces), at start or again after its watch
        failed: from now on its stream is what this namespace's cache hears."""
        if (group, plural) == (API_GROUP, PLURAL):
            self._kopf[namespace] = set()

    def event(self, group: str, plural: str, namespace: str | None, kind: str | None, obj: dict[str, Any]) -> None:
        """An object of Kopf's listing (``kind`` None) or watch."""
        if (group, plural) != (API_GROUP, PLURAL):
            return
        listing = self._kopf.get(namespace)
        meta = obj.get("metadata") or {}
        if kind is None and listing is not None:
            listing.add((str(meta.get("namespace") or ""), str(meta.get("name") or "")))
        self._deliver(kind or "ADDED", obj)

    def listed(self, group: str, plural: str, namespace: str | None) -> None:
        """Kopf's listing of ``namespace`` is over: what it did not hold is gone. Once every namespace is
        listed, the informer stops."""
        if (group, plural) != (API_GROUP, PLURAL):
            return
        held = self._kopf.get(namespace) or set()
        self._kopf[namespace] = None
        for (ns, name), uid in list(self._uids.items()):
            if (namespace is None or ns == namespace) and (ns, name) not in held:
                self._deliver("DELETED", {"metadata": {"namespace": ns, "name": name, "uid": uid}})
        expected = [None] if self.namespaces is None else self.namespaces
        if all(ns in self._kopf and self._kopf[ns] is None for ns in expected):
            self._synced.set()
            if self.informer is not None:
                informer, self.informer = self.informer, None
                log.info("Kopf's watch has listed the Pipelines: this replica's cache of them follows it, and "
                         "its own watch of them stops")
                self._spawn(informer.stop())
