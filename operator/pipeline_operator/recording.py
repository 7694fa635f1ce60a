"""Where monitor events go: the durable store and Kubernetes Events (``status.history`` is
written by the reconciler in the same status patch as the change that produced them)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from .core.emission import Emitted
from .identity import PipelineKey
from .kube_events import EventPoster
from .models import MonitorEvent
from .reconciler import EventSink
from .store import EventStore


class Recorder(EventSink):
    def __init__(self, store: EventStore, poster: EventPoster | None) -> None:
        self.store = store
        self.poster = poster

    async def record(self, key: PipelineKey, events: Sequence[Emitted], reasons: Sequence[str]) -> None:
        self.store.append(key, [e.event for e in events])
        if self.poster is not None:
            self.poster.submit(key, events, reasons)

    async def seed(self, key: PipelineKey, events: Sequence[MonitorEvent]) -> None:
        self.store.seed(key, events)

    async def latest(self, key: PipelineKey) -> MonitorEvent | None:
        await asyncio.to_thread(self.store.flush)
        return await asyncio.to_thread(self.store.latest, key.uid)

    async def forget(self, key: PipelineKey) -> None:
        await asyncio.to_thread(self.store.delete, key.uid)
        if self.poster is not None:
            self.poster.forget(key)
