"""What every pipeline's monitoring loop shares (:class:`LoopServices`: the settings, the loops' Kubernetes
client, the backend, the compiler, the runtime client, where monitor events go), where those events go
(:class:`MonitorEventSink`), and the registry of the loops this replica runs (:class:`PipelineRegistry`, which
the HTTP API serves)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

from ..backends import Backend
from ..core.emission import EmissionKind, EmissionRules, Emitted, UuidV7
from ..core.lifecycle import LifecycleConfig
from ..feldera.compiler import Compiler
from ..feldera.runtime_client import RuntimeClient
from ..identity import PipelineKey
from ..kube.client import KubeClient
from ..metrics import Metrics
from ..models import MonitorEvent
from ..settings import OperatorSettings


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class MonitorEventSink:
    """Where recorded monitor events go besides ``status.history`` (store, Kubernetes Events)."""

    async def record(self, key: PipelineKey, events: Sequence[Emitted], reasons: Sequence[str]) -> None:
        return None

    async def latest(self, key: PipelineKey) -> MonitorEvent | None:
        return None

    async def seed(self, key: PipelineKey, events: Sequence[MonitorEvent],
                   created: dt.datetime | None = None) -> None:
        """Events that may be missing from the store (from ``status.history``); ``created`` is when the
        Pipeline was created (whether it had events before the store was lost)."""
        return None

    def generation(self) -> int:
        """Advances whenever the store lost events (started afresh, or dropped some): every
        pipeline then seeds it again from its ``status.history``."""
        return 0

    async def forget(self, key: PipelineKey) -> None:
        return None

    async def warn(self, key: PipelineKey, reason: str, message: str) -> None:
        """A Warning Event about the pipeline (not a monitor event)."""
        return None


ROUTINE_KINDS = frozenset({EmissionKind.HEARTBEAT, EmissionKind.DETAILS})
ROUTINE_WRITES = 4  # routine status writes under way at once (of the loops' client's 16 threads)


@dataclasses.dataclass
class LoopServices:
    """What every pipeline's loop shares."""
    settings: OperatorSettings
    kube: KubeClient
    backend: Backend
    compiler: Compiler
    runtime: RuntimeClient
    sink: MonitorEventSink = dataclasses.field(default_factory=MonitorEventSink)
    ids: UuidV7 = dataclasses.field(default_factory=UuidV7)
    clock: Callable[[], dt.datetime] = utcnow
    monitors: PipelineRegistry[Any] = dataclasses.field(default_factory=lambda: PipelineRegistry())
    in_flight: set[asyncio.Future[Any]] = dataclasses.field(default_factory=set)  # status writes that must finish
    metrics: Metrics | None = None
    routine_writes: asyncio.Semaphore = dataclasses.field(default_factory=lambda: asyncio.Semaphore(ROUTINE_WRITES))

    async def write_status(self, key: PipelineKey, rv: str, body: dict[str, Any], routine: bool) -> dict[str, Any]:
        """A status write; a routine one (heartbeats, details) waits for one of :data:`ROUTINE_WRITES` slots
        first. A fleet started at once keeps its heartbeats in step, ten minutes apart: a thousand of them
        at once would fill the client's pool, and a spec change's write would wait behind all of them."""
        if not routine:
            return await self.kube.write_status(key.namespace, key.name, rv, body)
        async with self.routine_writes:
            return await self.kube.write_status(key.namespace, key.name, rv, body)

    @property
    def lifecycle(self) -> LifecycleConfig:
        return LifecycleConfig(default_provisioning_timeout=self.settings.provisioning_timeout)

    @property
    def rules(self) -> EmissionRules:
        return EmissionRules(details_min_interval=self.settings.details_min_interval,
                             heartbeat_interval=self.settings.heartbeat_interval)


class Keyed(Protocol):
    """What the registry needs of a pipeline's loop: its key."""

    @property
    def key(self) -> PipelineKey: ...


M = TypeVar("M", bound=Keyed)


class PipelineRegistry(Generic[M]):
    """The pipelines this operator monitors, by namespace and name (what the HTTP API serves): the loops
    (:class:`~.reconciler.M`), which this module does not import (the loop imports it)."""

    def __init__(self) -> None:
        self._by_name: dict[tuple[str, str], M] = {}
        self._by_uid: dict[str, M] = {}
        self.on_add: list[Callable[[M], None]] = []  # called after a loop is added
        self.on_remove: list[Callable[[M], None]] = []  # called after a loop is removed

    def add(self, monitor: M) -> None:
        self._by_name[(monitor.key.namespace, monitor.key.name)] = monitor
        self._by_uid[monitor.key.uid] = monitor
        for listener in self.on_add:
            listener(monitor)

    def remove(self, monitor: M) -> None:
        where = (monitor.key.namespace, monitor.key.name)
        if self._by_name.get(where) is monitor:
            del self._by_name[where]
        if self._by_uid.get(monitor.key.uid) is monitor:
            del self._by_uid[monitor.key.uid]
        for listener in self.on_remove:
            listener(monitor)

    def get(self, namespace: str, name: str) -> M | None:
        return self._by_name.get((namespace, name))

    def by_uid(self, uid: str) -> M | None:
        """The loop of the Pipeline with this uid (what a child object's label names)."""
        return self._by_uid.get(uid)

    def in_namespace(self, namespace: str) -> list[M]:
        return [m for (ns, _), m in sorted(self._by_name.items()) if ns == namespace]

    def all(self) -> list[M]:
        return list(self._by_name.values())


__all__ = ["ROUTINE_KINDS", "ROUTINE_WRITES", "LoopServices", "MonitorEventSink", "PipelineRegistry", "utcnow"]
