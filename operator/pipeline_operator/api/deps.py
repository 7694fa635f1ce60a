"""What the HTTP API uses of the rest of the operator (:class:`ApiDeps`), and the protocols it sees it through: the
pipelines it serves (:class:`ServedPipeline`, :class:`ServedPipelineLookup`) and the event store, read
(:class:`MonitorEventReader`)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..core.lifecycle import PipelineState
from ..feldera.runtime_client import RuntimeClient
from ..identity import PipelineKey
from ..kube.client import KubeClient
from ..metrics import Metrics, PipelineSample
from ..models import MonitorEvent


class ServedPipeline(Protocol):
    """One pipeline as the API serves it: monitored here (the loop's
    :class:`~pipeline_operator.reconcile.reconciler.PipelineMonitor`) or watched only
    (:class:`~pipeline_operator.controller.pipeline_cache.CachedPipeline`, on a standby)."""
    key: PipelineKey

    @property
    def obj(self) -> dict[str, Any] | None: ...

    @property
    def state(self) -> PipelineState | None: ...

    def adopt(self, obj: Mapping[str, Any]) -> None: ...

    def poke(self) -> None: ...

    def metrics_sample(self) -> PipelineSample | None:
        """What ``/metrics`` folds into its per-namespace series; None where no loop of this replica monitors it."""
        ...

    def forwarding(self) -> contextlib.AbstractContextManager[None]:
        """While the API forwards a runtime action and keeps it in the spec (see :meth:`Actions._runtime_desired`)."""
        ...

    async def settled(self) -> None:
        """Return once a status write of this replica that a client may already have seen is taken in."""
        ...

    async def wait_until(self, predicate: Callable[[dict[str, Any], PipelineState], bool],
                         timeout: float) -> bool: ...  # noqa: ASYNC109


class ServedPipelineLookup(Protocol):
    """The pipelines the API serves (:class:`~pipeline_operator.controller.pipeline_cache.ServedPipelines`)."""
    def get(self, namespace: str, name: str) -> ServedPipeline | None: ...

    def in_namespace(self, namespace: str) -> Sequence[ServedPipeline]: ...

    def all(self) -> Sequence[ServedPipeline]: ...


class MonitorEventReader(Protocol):
    """The event store, read as Feldera's JSON (:class:`store.EventStorage`, either backend); blocking,
    and raising :class:`store.StoreUnavailable` when the store cannot be read now."""
    def list_json(self, uid: str, selector: str = "status") -> str: ...

    def list(self, uid: str, limit: int | None = None) -> list[MonitorEvent]: ...  # newest first

    def get_json(self, uid: str, event_id: uuid.UUID | None, selector: str = "status") -> str | None: ...

    def count(self, uid: str | None = None) -> int: ...


@dataclass
class ApiDeps:
    """Everything the HTTP API uses of the rest of the operator."""
    pipelines: ServedPipelineLookup
    events: MonitorEventReader
    kube: KubeClient
    endpoint: Callable[[PipelineKey], str | None]          # where a pipeline answers (the backend's)
    runtime: RuntimeClient                                 # to forward requests to a pipeline
    artifact: Callable[[str], dict[str, Any] | None]       # a compiled program by digest (blocking)
    metrics: Metrics = field(default_factory=Metrics)
    # Learns a pipeline's control token where this replica does not know it yet (a standby forwarding an action).
    learn_token: Callable[[PipelineKey], Awaitable[None]] | None = None
    # A pipeline's log, opened (the backend's ``logs``; see backends.Backend): GET /v0/pipelines/{name}/logs.
    logs: Callable[[PipelineKey, bool], contextlib.AbstractAsyncContextManager[AsyncIterator[bytes]]] | None = None
    # The pipelines run Feldera's community edition (``--compiler feldera``): /stop?force=false is refused.
    community_edition: bool = False
    # Whether a token is a pipeline's control token, and the program binary its pod runs (Kubernetes backend with
    # --compiler feldera; see binaries.py): GET /pipeline-binaries/{namespace}/{name}.
    program_binary: Callable[[PipelineKey, str], Awaitable[tuple[bool, dict[str, Any] | None]]] | None = None
