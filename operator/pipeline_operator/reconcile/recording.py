"""Where monitor events go: the durable store and Kubernetes Events (``status.history`` is
written by the reconciler in the same status patch as the change that produced them).

Nothing here waits for the store's writer: a monitoring pass must go on while the store's
volume is full, read-only or gone (the store queues, and drops beyond its limit)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import socket
from collections.abc import Callable, Sequence
from typing import Any

from ..core.emission import Emitted
from ..identity import PipelineKey
from ..kube.client import KubeClient
from ..kube.events import KubernetesEventPoster
from ..models import API_GROUP, API_VERSION, KIND, MonitorEvent
from ..store.base import EventStorage
from .services import MonitorEventSink

log = logging.getLogger(__name__)

LATEST_READ_TIMEOUT = 0.5  # a monitoring pass waits at most this long for the store (then uses status.history)
REASON_STORE_RECOVERED = "EventStoreRecovered"


async def post_event(kube: KubeClient, component: str, key: PipelineKey, event_type: str, reason: str,
                     message: str) -> bool:
    """Post one core/v1 Event about a Pipeline (a decision of the operator, not a monitor event);
    a failure is logged and reported as False, never raised."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    body: dict[str, Any] = {
        "metadata": {"namespace": key.namespace, "generateName": f"{key.name}."},
        "involvedObject": {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": KIND, "name": key.name,
                           "namespace": key.namespace, "uid": key.uid},
        "reason": reason, "message": message[:1024], "type": event_type,
        "firstTimestamp": now, "lastTimestamp": now, "count": 1, "source": {"component": component},
        "reportingComponent": component, "reportingInstance": socket.gethostname(),
    }
    try:
        await kube.call(kube.core.create_namespaced_event, key.namespace, body)
        return True
    except Exception as exc:  # noqa: BLE001 - an Event is never worth a failure
        log.warning("%s: could not post the %s Event (%s); the log line above says the same",
                    key, reason, getattr(exc, "reason", exc))
        return False


class Recorder(MonitorEventSink):
    def __init__(self, store: EventStorage, poster: KubernetesEventPoster | None) -> None:
        self.store = store
        self.poster = poster
        self._posting: set[asyncio.Task[bool]] = set()  # Events under way (a reference keeps them alive)
        # Told of every recorded event at once (the HTTP API's live streams); called on the loop, never waits.
        self.listeners: list[Callable[[PipelineKey, Sequence[MonitorEvent]], None]] = []

    async def record(self, key: PipelineKey, events: Sequence[Emitted], reasons: Sequence[str]) -> None:
        recorded = [e.event for e in events]
        self.store.append(key, recorded)
        for listener in self.listeners:
            listener(key, recorded)
        if self.poster is not None:
            self.poster.submit(key, events, reasons)

    def generation(self) -> int:
        return self.store.generation

    async def seed(self, key: PipelineKey, events: Sequence[MonitorEvent],
                   created: dt.datetime | None = None) -> None:
        self.store.seed(key, events)
        recovery = self.store.recovery
        if recovery is None or recovery.generation != self.store.generation:
            return
        if created is not None and created >= recovery.at:
            return  # created after the store was lost: it lost nothing
        message = (f"The operator's event store was started afresh at {recovery.at:%Y-%m-%dT%H:%M:%SZ} "
                   f"({recovery.what}); this pipeline's older monitor events were lost except those in "
                   f"status.history, which were stored again.")
        log.warning("%s: its older monitor events were lost with the event store, except those in status.history "
                    "(stored again)", key)
        if self.poster is not None:  # in the background: a monitoring pass does not wait for the API server
            task = asyncio.create_task(post_event(self.poster.kube, self.poster.component, key, "Warning",
                                                  REASON_STORE_RECOVERED, message))
            self._posting.add(task)
            task.add_done_callback(self._posting.discard)

    async def warn(self, key: PipelineKey, reason: str, message: str) -> None:
        if self.poster is not None:  # in the background, as above
            task = asyncio.create_task(post_event(self.poster.kube, self.poster.component, key, "Warning",
                                                  reason, message))
            self._posting.add(task)
            task.add_done_callback(self._posting.discard)

    async def latest(self, key: PipelineKey) -> MonitorEvent | None:
        """The newest event known for the pipeline, without waiting for the writer: what this
        operator appended since it started, else a bounded read of the store (None if that is slow
        or fails: the caller falls back to ``status.history``)."""
        newest = self.store.newest(key.uid)
        if newest is not None:
            return newest
        try:
            return await asyncio.wait_for(asyncio.to_thread(self.store.latest, key.uid), LATEST_READ_TIMEOUT)
        except TimeoutError:
            log.info("%s: the event store did not answer within %.1fs; carrying on from status.history",
                     key, LATEST_READ_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - a broken store must not stop monitoring
            log.info("%s: reading the event store failed (%s); carrying on from status.history", key, exc)
        return None

    async def forget(self, key: PipelineKey) -> None:
        self.store.forget(key)
        if self.poster is not None:
            self.poster.forget(key)
