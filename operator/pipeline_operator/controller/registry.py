"""Kopf's handlers of the Pipelines and Kopf's settings (what :func:`build_registry` returns, run by
:mod:`.wiring`):

- one daemon per Pipeline runs its monitoring loop (level-based reconciliation);
- a low-level event handler hands every new version of a Pipeline to its loop and wakes it
  at once when the spec (generation) or a one-shot annotation changed;
- a delete handler takes one step of the deletion per call (:mod:`.deletion`) until compute and storage
  are gone, then Kopf removes the finalizer.

Kopf's own bookkeeping uses this operator's prefix and finalizer, never ``kopf.zalando.org``,
and ignores labels and annotations it does not own, so GitOps tools see no churn.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from typing import Any

import kopf

from ..kube.client import Fenced
from ..kube.shards import NamespaceClaims
from ..models import API_GROUP, API_VERSION, PLURAL
from ..reconcile.reconciler import PipelineMonitor
from ..reconcile.services import LoopServices
from ..reconcile.spec import ONE_SHOT_ANNOTATIONS, key_of
from .deletion import DELETE_RETRY_MAX, FINALIZER, delete_pipeline

KOPF_PREFIX = "operator.dataflow.dev"


class KeepRetrying:
    """Kopf's delays between retries of a failed API request, never used up: by default Kopf gives
    up after about a minute and its watch fails, which ends the operator during a longer API server
    outage (an upgrade, an etcd restart). Iterable again for every request; not Sized (no count).

    Kopf takes the next delay before each attempt of a request, the first one included; once the
    operator's client is fenced (``fenced()`` names why: this replica lost the leadership), that
    raises :class:`Fenced` instead, so no request of Kopf's (a finalizer's patch, a retried write)
    leaves after the fence either."""

    def __init__(self, fenced: Callable[[], str | None] = lambda: None) -> None:
        self.fenced = fenced

    def __iter__(self) -> Iterator[float]:
        for delay in itertools.chain((1, 1, 2, 3, 5, 8), itertools.repeat(10.0)):
            reason = self.fenced()
            if reason is not None:
                raise Fenced(f"no request of Kopf's to the Kubernetes API: {reason}")
            yield delay


def _trigger(body: dict[str, Any]) -> tuple[Any, ...]:
    """What wakes a loop: a new generation, a one-shot annotation value, a deletion."""
    meta = body.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    return (meta.get("generation"), meta.get("deletionTimestamp"),
            tuple(annotations.get(a) for a in ONE_SHOT_ANNOTATIONS))


def build_registry(ctx: LoopServices, claims: NamespaceClaims | None = None) -> kopf.OperatorRegistry:
    """Kopf's handlers. With ``claims`` (namespace sharding, docs/sharding.md) a Pipeline is acted on
    only while this installation holds the claim on its namespace: no finalizer, no loop, no
    deletion work in a namespace another installation claims."""
    registry = kopf.OperatorRegistry()

    def claimed(body: kopf.Body, **_: Any) -> bool:
        return claims is None or claims.holds(body.get("metadata", {}).get("namespace", ""))

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.finalizer = FINALIZER
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX, v1=False)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=KOPF_PREFIX, key="last-handled-configuration", v1=False,
            ignored_fields=["metadata.annotations", "metadata.labels", "status"])
        settings.posting.reporting_component = ctx.settings.operator_name
        settings.posting.level = logging.WARNING  # our own Events say what happened
        settings.posting.loggers = False  # never an Event per log line (e.g. per retry of a stuck deletion)
        # Explicit watch timeouts: a silent stream is reconnected (nolar/kopf#698, #1276).
        settings.watching.server_timeout = 120
        settings.watching.client_timeout = 150
        settings.watching.connect_timeout = 5
        settings.networking.request_timeout = 30
        # An API server outage never ends the operator; nothing of Kopf's leaves after the fence.
        settings.networking.error_backoffs = KeepRetrying(fenced=lambda: ctx.kube.fenced)
        settings.scanning.disabled = True  # exact namespaces only: no need to list CRDs or namespaces
        settings.background.cancellation_polling = 5

    @kopf.on.event(API_GROUP, API_VERSION, PLURAL, registry=registry)
    async def on_pipeline_watch_event(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        # Kopf runs this before it decides on the daemon and the deletion handler (whose filters
        # ask ``claimed``): a namespace seen for the first time (--all-namespaces) is claimed here.
        if claims is not None and not await claims.allowed(body.get("metadata", {}).get("namespace", "")):
            return
        monitor: PipelineMonitor | None = memo.get("monitor")
        if monitor is None:
            return
        monitor.see(body)
        trigger = _trigger(dict(body))
        if trigger != monitor.trigger:
            monitor.trigger = trigger
            monitor.wake.set()

    @kopf.daemon(API_GROUP, API_VERSION, PLURAL, registry=registry, cancellation_timeout=10,
                 when=lambda body, **_: not body.get("metadata", {}).get("deletionTimestamp") and claimed(body))
    async def monitor(body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped, **_: Any) -> None:
        pipeline = PipelineMonitor(ctx, key_of(body))
        namespace = pipeline.key.namespace
        pipeline.see(body)
        pipeline.trigger = _trigger(dict(body))
        memo["monitor"] = pipeline
        ctx.monitors.add(pipeline)
        try:
            # A claim taken away (another installation holds the namespace now) ends the loop at once.
            await pipeline.run(lambda: bool(stopped) or (claims is not None and not claims.holds(namespace)))
        finally:
            ctx.monitors.remove(pipeline)

    # One step of the deletion per call: while compute or storage is still there, the step raises
    # kopf.TemporaryError with a delay growing from Kopf's ``retry`` count (1 s doubling to 30 s), and Kopf
    # keeps the finalizer and calls again. No retries or timeout limit: giving up would release the
    # finalizer and leave compute and storage behind. Any other failure is retried too (TEMPORARY).
    @kopf.on.delete(API_GROUP, API_VERSION, PLURAL, registry=registry, backoff=DELETE_RETRY_MAX,
                    errors=kopf.ErrorsMode.TEMPORARY, when=claimed)
    async def delete(body: kopf.Body, retry: int, memo: kopf.Memo, **_: Any) -> None:
        await delete_pipeline(ctx, dict(body), retry=retry, memo=memo)

    del login, configure, on_pipeline_watch_event, monitor, delete
    return registry


__all__ = ["KOPF_PREFIX", "KeepRetrying", "build_registry"]
