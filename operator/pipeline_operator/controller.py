"""The Kopf wiring: thin handlers around :class:`reconciler.PipelineMonitor`.

- one daemon per Pipeline runs its monitoring loop (level-based reconciliation);
- a low-level event handler hands every new version of a Pipeline to its loop and wakes it
  at once when the spec (generation) or a one-shot annotation changed;
- a delete handler stops the pipeline, clears its storage and forgets its events before the
  finalizer is removed.

Kopf's own bookkeeping uses this operator's prefix and finalizer, never ``kopf.zalando.org``,
and ignores labels and annotations it does not own, so GitOps tools see no churn.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from .api import ApiDeps, ApiServer, Metrics
from .backends import Backend as BackendProtocol
from .backends.kubernetes import KubernetesBackend
from .backends.local import LocalBackend
from .compiler import Compiler
from .core.lifecycle import ComputeState
from .kube import Kube
from .kube_events import EventPoster
from .models import API_GROUP, API_VERSION, PLURAL
from .reconciler import ONE_SHOT_ANNOTATIONS, Context, PipelineMonitor, key_of
from .recording import Recorder
from .runtime_client import RuntimeClient
from .settings import Backend, OperatorSettings
from .store import EventStore

log = logging.getLogger(__name__)

FINALIZER = "dataflow.dev/finalizer"
KOPF_PREFIX = "operator.dataflow.dev"


def _trigger(body: dict[str, Any]) -> tuple[Any, ...]:
    """What wakes a loop: a new generation, a one-shot annotation value, a deletion."""
    meta = body.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    return (meta.get("generation"), meta.get("deletionTimestamp"),
            tuple(annotations.get(a) for a in ONE_SHOT_ANNOTATIONS))


def build_registry(ctx: Context) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

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
        # Explicit watch timeouts: a silent stream is reconnected (nolar/kopf#698, #1276).
        settings.watching.server_timeout = 120
        settings.watching.client_timeout = 150
        settings.watching.connect_timeout = 5
        settings.networking.request_timeout = 30
        settings.scanning.disabled = True  # exact namespaces only: no need to list CRDs or namespaces
        settings.background.cancellation_polling = 5

    @kopf.on.event(API_GROUP, API_VERSION, PLURAL, registry=registry)
    async def seen(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        monitor: PipelineMonitor | None = memo.get("monitor")
        if monitor is None:
            return
        monitor.see(body)
        trigger = _trigger(dict(body))
        if trigger != monitor.trigger:
            monitor.trigger = trigger
            monitor.wake.set()

    @kopf.daemon(API_GROUP, API_VERSION, PLURAL, registry=registry, cancellation_timeout=10,
                 when=lambda body, **_: not body.get("metadata", {}).get("deletionTimestamp"))
    async def monitor(body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped, **_: Any) -> None:
        pipeline = PipelineMonitor(ctx, key_of(body))
        pipeline.see(body)
        pipeline.trigger = _trigger(dict(body))
        memo["monitor"] = pipeline
        ctx.monitors.add(pipeline)
        try:
            await pipeline.run(lambda: bool(stopped))
        finally:
            ctx.monitors.remove(pipeline)

    # Deleting waits for compute to stop and storage to be cleared: a retry (TemporaryError) every
    # second; any other failure is retried too (never given up: giving up would release the
    # finalizer and leave compute and storage behind).
    @kopf.on.delete(API_GROUP, API_VERSION, PLURAL, registry=registry, backoff=1, errors=kopf.ErrorsMode.TEMPORARY)
    async def delete(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
        key = key_of(body)
        compute = await ctx.backend.observe_compute(key)
        if compute.state is not ComputeState.ABSENT:
            await ctx.backend.deprovision(key)
            raise kopf.TemporaryError(f"deleting: waiting for compute to stop ({compute.state.value})", delay=1)
        if await ctx.backend.storage_exists(key):
            await ctx.backend.clear_storage(key)
            raise kopf.TemporaryError("deleting: waiting for storage to be cleared", delay=1)
        await ctx.backend.forget(key)
        await ctx.sink.forget(key)
        logger.info("pipeline deleted: compute stopped, storage cleared, events removed")

    del login, configure, seen, monitor, delete
    return registry


def make_backend(settings: OperatorSettings, kube: Kube) -> BackendProtocol:
    if settings.backend is Backend.LOCAL:
        return LocalBackend(settings.state_dir, settings.pipeline_command)
    if settings.dev_endpoint_overrides is not None:
        log.warning("--dev-endpoint-overrides is set: pipelines are reached at the addresses in %s, not "
                    "through their Services (tests and local development only)", settings.dev_endpoint_overrides)
    return KubernetesBackend(kube, settings.pipeline_image, settings.dev_endpoint_overrides)


async def run(settings: OperatorSettings, *, ready_flag: asyncio.Event | None = None,
              stop_flag: asyncio.Event | None = None) -> None:
    """Run the operator until it is told to stop (SIGINT/SIGTERM, or ``stop_flag``)."""
    if not settings.all_namespaces and not settings.namespaces:
        raise ValueError("say which namespaces to watch: --namespace NAME (repeatable) or --all-namespaces")
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    kube = Kube(field_manager=settings.operator_name)
    store = await asyncio.to_thread(EventStore, settings.event_store, settings.events_retention,
                                    settings.events_prune_interval)
    poster = EventPoster(kube, settings.operator_name)
    poster.start()
    metrics = Metrics()
    metrics.count_kubernetes_events(lambda: (poster.posted, poster.dropped))
    ctx = Context(settings=settings, kube=kube, backend=make_backend(settings, kube),
                  compiler=Compiler(settings.state_dir / "programs"),
                  runtime=RuntimeClient(status_timeout=settings.status_timeout),
                  sink=Recorder(store, poster), metrics=metrics)
    api = None
    if settings.api_listen != "off":
        host, _, port = settings.api_listen.rpartition(":")
        api = ApiServer(ApiDeps(pipelines=ctx.monitors, events=store, kube=kube, endpoint=ctx.backend.endpoint,
                                runtime=ctx.runtime, artifact=ctx.compiler.artifact, metrics=metrics),
                        auth=settings.api_auth, default_namespace=settings.api_default_namespace)
        await api.start(host.strip("[]"), int(port))
    ready_flag = ready_flag or asyncio.Event()

    async def mark_ready() -> None:
        await ready_flag.wait()
        if api is not None:
            api.ready = True
    readiness = asyncio.create_task(mark_ready())
    registry = build_registry(ctx)
    where = "all namespaces" if settings.all_namespaces else ", ".join(settings.namespaces)
    log.info("pipeline-operator watching pipelines.%s in %s with the %s backend", API_GROUP, where,
             settings.backend.value)
    try:
        await kopf.operator(registry=registry, standalone=True, clusterwide=settings.all_namespaces,
                            namespaces=settings.namespaces, ready_flag=ready_flag, stop_flag=stop_flag,
                            memo=kopf.Memo())
    finally:
        readiness.cancel()
        if ctx.in_flight:  # status writes under way finish, with their events, before the store closes
            await asyncio.wait(list(ctx.in_flight), timeout=30)
        if api is not None:
            await api.stop()
        await ctx.runtime.close()
        await ctx.backend.close()
        await poster.close()
        await asyncio.to_thread(store.close)
        await ctx.kube.close()
        log.info("pipeline-operator stopped")


__all__ = ["run", "build_registry"]
