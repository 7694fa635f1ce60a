"""The operator's Kubernetes clients, built in one place from the settings.

Separate clients, each with its own bounded pool (its size a named setting): the monitoring loops' calls,
the Kubernetes Events, the HTTP API's reviews and writes, leader election and the namespace claims never
wait behind one another (docs/architecture.md). The watches (informers) build their own API clients.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable
from typing import Any

from ..kube.client import KubeClient
from ..settings import OperatorSettings

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Clients:
    """One :class:`KubeClient` per room; ``lease`` only with leader election, ``claims`` only with namespace
    claims (sharding)."""
    loops: KubeClient  # the monitoring loops, the backend, the deletions, the sweep's lookups
    events: KubeClient  # Kubernetes Events
    api: KubeClient  # the HTTP API's TokenReviews, SubjectAccessReviews and writes
    lease: KubeClient | None  # leader election's renewals
    claims: KubeClient | None  # the namespace claims' renewals

    @classmethod
    def from_settings(cls, settings: OperatorSettings) -> Clients:
        def client(workers: int) -> KubeClient:
            return KubeClient(field_manager=settings.operator_name, workers=workers)
        return cls(loops=client(settings.kube_workers), events=client(settings.kube_events_workers),
                   api=client(settings.kube_api_workers),
                   lease=client(settings.kube_lease_workers) if settings.leader_election else None,
                   claims=client(settings.kube_claims_workers) if settings.shard() is not None else None)

    def fence(self, reason: str) -> None:
        """No call of the loops or the Events goes out from now on: a standby may take over in a few seconds
        (called from the elector's own thread, at once, however busy the event loop is)."""
        self.loops.fence(reason)
        self.events.fence(reason)

    async def close(self) -> None:
        for client in (self.loops, self.events, self.api, self.lease, self.claims):
            if client is not None:
                await quietly("a Kubernetes client", client.close())


async def quietly(what: str, closing: Awaitable[Any] | None) -> None:
    """One step of shutdown: a failure is one log line, and the other steps still run."""
    if closing is None:
        return
    try:
        await closing
    except Exception as exc:  # noqa: BLE001 - shutdown goes on
        log.warning("stopping %s failed (%s: %s); going on with shutdown", what, type(exc).__name__, exc)


__all__ = ["Clients", "quietly"]
