"""The Kopf wiring: thin handlers around :class:`reconciler.PipelineMonitor`.

- one daemon per Pipeline runs its monitoring loop (level-based reconciliation);
- a low-level event handler hands every new version of a Pipeline to its loop and wakes it
  at once when the spec (generation) or a one-shot annotation changed;
- a delete handler stops the pipeline and clears its storage before the finalizer is removed, and
  queues the removal of its events (the event store is not waited for: the leader's sweep,
  :mod:`.store.sweep`, removes what such a removal missed); a deletion that cannot finish says so
  (``DeletionStuck``) and can be released by an administrator (``dataflow.dev/release-finalizer: "true"``);
- shutdown (SIGTERM) stops Kopf through a flag of its own and never touches pipelines' compute.

Kopf's own bookkeeping uses this operator's prefix and finalizer, never ``kopf.zalando.org``,
and ignores labels and annotations it does not own, so GitOps tools see no churn.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import json
import logging
import signal
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import kopf
import kubernetes
from kopf._cogs.clients import api as kopf_api
from kopf._cogs.clients import watching as kopf_watching

from .. import jsondepth
from ..api import ApiDeps, ApiServer, Metrics
from ..api.follow import FollowLimits
from ..backends import Backend
from ..backends.kubernetes import REASON_RESTORED, KubernetesBackend
from ..backends.local import LocalBackend
from ..core.lifecycle import ComputeState
from ..feldera.compiler import Compiler, FelderaCompiler
from ..feldera.runtime_client import RuntimeClient
from ..identity import PipelineKey
from ..kube import events as kube_events
from ..kube.client import Conflict, Fenced, Forbidden, Gone, KubeClient
from ..kube.events import KubernetesEventPoster, requester_of
from ..kube.informer import Informer
from ..kube.leader import LeaderElector, LeaseTiming
from ..kube.projection import names_and_versions
from ..kube.shards import CLAIM_LEASE_DURATIONS, NamespaceClaims
from ..models import API_GROUP, API_VERSION, PLURAL, StorageDeletionPolicy
from ..reconcile.reconciler import PipelineMonitor
from ..reconcile.recording import Recorder, post_event
from ..reconcile.services import LoopServices
from ..reconcile.spec import ONE_SHOT_ANNOTATIONS, key_of
from ..retry import Backoff
from ..settings import BackendKind, OperatorSettings, is_database_url
from ..store import open_event_store
from ..store.sweep import keep_sweeping
from . import memory
from .pipeline_cache import PipelineCache, ServedPipelines

log = logging.getLogger(__name__)

FINALIZER = "dataflow.dev/finalizer"
ANNOTATION_RELEASE_FINALIZER = "dataflow.dev/release-finalizer"
REASON_DELETION_STUCK = "DeletionStuck"
REASON_FINALIZER_RELEASED = "FinalizerReleased"
DELETE_RETRY_MAX = 30.0  # seconds between tries of a deletion that does not finish
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


def strip_managed_fields_in_kopf_watches() -> None:
    """Kopf keeps the newest version of every Pipeline it watches, and offers no transform of what its
    watch delivers (client-go and controller-runtime do: ``TransformStripManagedFields``). Nothing here
    or in Kopf reads ``metadata.managedFields``, server-side apply's bookkeeping, which is about 13 KB of
    a Pipeline's 24 KB in memory. So Kopf's watch stream (``continuous_watch``, which its watcher calls
    for the initial list and every watch) is wrapped to drop it from each object as it arrives. Done
    once per process; tests/test_managed_fields.py checks Kopf still has the function this wraps."""
    original = kopf_watching.continuous_watch
    if getattr(original, "strips_managed_fields", False):
        return

    async def continuous_watch(**kwargs: Any) -> AsyncIterator[Any]:
        async for event in original(**kwargs):
            raw: Any = event  # a bookmark, or the event as the API server sent it
            meta = (raw.get("object") or {}).get("metadata") if isinstance(raw, dict) else None
            if isinstance(meta, dict):
                meta.pop("managedFields", None)
            yield event
    continuous_watch.strips_managed_fields = True  # type: ignore[attr-defined]
    kopf_watching.continuous_watch = continuous_watch


_DECODE_IN_THREAD = 64 * 1024  # bytes of an answer from which Kopf's decoding leaves the event loop


class _BoundedJson:
    """Kopf's ``json`` module as its API client sees it: ``loads`` (a watch stream's lines) decodes
    without a depth limit's failure (:func:`jsondepth.decode_objects`), the rest is ``json``'s."""

    def __getattr__(self, name: str) -> Any:
        return getattr(json, name)

    @staticmethod
    def loads(text: str | bytes, **_: Any) -> Any:
        return jsondepth.decode_objects(text)


class _BoundedJsonAnswer:
    """An answer of Kopf's ``request`` whose ``json()`` (a list, an object, a patch's result) is decoded
    by :func:`jsondepth.decode_objects`, off the event loop when it is large."""

    def __init__(self, response: Any) -> None:
        self._response = response

    def __getattr__(self, name: str) -> Any:
        return getattr(self._response, name)

    async def __aenter__(self) -> _BoundedJsonAnswer:
        await self._response.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> Any:
        return await self._response.__aexit__(*exc)

    async def json(self, **_: Any) -> Any:
        raw = await self._response.read()
        if len(raw) < _DECODE_IN_THREAD:
            return jsondepth.decode_objects(raw)
        return await asyncio.to_thread(jsondepth.decode_objects, raw)


def bound_json_depth_in_kopf() -> None:
    """Kopf decodes the API server's answers with ``json.loads``, which gives up with a RecursionError past
    about a thousand levels of nesting: one Pipeline nested that deep (stored before the CRD bounded every
    field, or with its validation bypassed) failed the whole list or watch, and the operator stopped. Kopf's
    API client (``kopf._cogs.clients.api``: its ``request``, through which every call goes, and its ``json``
    module, which decodes a watch stream's lines) is made to decode with :func:`jsondepth.decode_objects`:
    such an object comes through marked (:func:`jsondepth.undecodable`), its deep values cut, and is
    reported and skipped by its loop while every other Pipeline goes on. Done once per process;
    tests/test_hostile_specs.py checks Kopf still has what this replaces."""
    if getattr(kopf_api.request, "bounds_json_depth", False):
        return
    original = kopf_api.request

    async def request(*args: Any, **kwargs: Any) -> Any:
        return _BoundedJsonAnswer(await original(*args, **kwargs))
    request.bounds_json_depth = True  # type: ignore[attr-defined]
    kopf_api.request = request
    setattr(kopf_api, "json", _BoundedJson())  # noqa: B010 (the module's own name for json, not exported)


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

    # Deleting waits for compute to stop and storage to be cleared, retrying inside the handler with
    # a growing delay (never given up: giving up would release the finalizer and leave compute and
    # storage behind); see :func:`delete_pipeline`. Kopf retries the handler only if it fails itself.
    @kopf.on.delete(API_GROUP, API_VERSION, PLURAL, registry=registry, backoff=DELETE_RETRY_MAX,
                    errors=kopf.ErrorsMode.TEMPORARY, when=claimed)
    async def delete(body: kopf.Body, **_: Any) -> None:
        await delete_pipeline(ctx, dict(body))

    del login, configure, on_pipeline_watch_event, monitor, delete
    return registry


async def delete_pipeline(ctx: LoopServices, body: dict[str, Any]) -> None:
    """Stop a deleted Pipeline's compute, clear its storage (or, with ``spec.storage.deletionPolicy:
    Retain``, release it for the next Pipeline of the same name), retrying with a growing delay (1 s up
    to 30 s) until that is done, then queue the removal of its events: the event store is not waited
    for (read-only, full or away, it would hold the deletion for as long as that lasts), and what the
    removal misses (the operator stopped before the store took it) the sweep removes later. After
    ``deletion_timeout`` seconds (counted from the deletion) the Pipeline says so: a ``Stalled``
    condition (reason ``DeletionStuck``) naming what is left, and one Warning Event. The annotation
    ``dataflow.dev/release-finalizer: "true"`` releases the finalizer deliberately, leaving what is
    left behind (logged and posted)."""
    key = key_of(body)
    started = _timestamp((body.get("metadata") or {}).get("deletionTimestamp")) or dt.datetime.now(dt.UTC)
    backoff = Backoff(initial=1.0, maximum=DELETE_RETRY_MAX)
    conditions = ((body.get("status") or {}).get("conditions") or [])
    reported = any(c.get("reason") == REASON_DELETION_STUCK for c in conditions)  # before a restart
    posted = reported
    last_problem: str | None = None
    tries = 0
    while True:
        problem: str | None = None
        try:
            obj = await ctx.kube.get_pipeline(key.namespace, key.name)
        except Exception as exc:  # noqa: BLE001 - the API server may be unreachable: try again later
            obj, problem = body, f"reading the Pipeline failed ({exc})"
        else:
            if obj is None or (obj.get("metadata") or {}).get("uid") != key.uid:
                return  # gone already
        annotations = (obj.get("metadata") or {}).get("annotations") or {}
        if annotations.get(ANNOTATION_RELEASE_FINALIZER) == "true":
            await _release(ctx, key, await _leftovers(ctx, key, last_problem))
            return
        if problem is None:
            try:
                problem = await _deletion_step(ctx, key, _retains_storage(obj))
            except asyncio.CancelledError:
                raise
            except Forbidden as exc:
                problem = f"{exc}; grant it in the operator's Role or ClusterRole"
            except Exception as exc:  # noqa: BLE001 - reported in the condition, retried
                problem = f"{type(exc).__name__}: {exc}"
        if problem is None:
            await ctx.backend.forget(key)
            await ctx.sink.forget(key)
            storage = "retained" if _retains_storage(obj) else "cleared"
            log.info("%s: pipeline deleted: compute stopped, storage %s, removal of its events queued; "
                     "releasing the finalizer", key, storage)
            return
        waited = (dt.datetime.now(dt.UTC) - started).total_seconds()
        if problem != last_problem:
            log.info("%s: deleting: %s; trying again with growing delays (up to %.0fs)", key, problem,
                     DELETE_RETRY_MAX)
            last_problem = problem
        if waited >= ctx.settings.deletion_timeout and not (reported and posted):
            message = (f"Deleting the pipeline has not finished after {waited:.0f}s: {problem}. The operator keeps "
                       f"trying. To release the finalizer anyway, leaving it behind: kubectl annotate pipeline "
                       f"{key.name} -n {key.namespace} {ANNOTATION_RELEASE_FINALIZER}=true")
            if not reported:
                reported = await _report_stuck(ctx, key, obj, message)
            if not posted:
                log.warning("%s: %s", key, message)
                posted = await post_event(ctx.kube, ctx.settings.operator_name, key, "Warning",
                                          REASON_DELETION_STUCK, message)
        delay = backoff.failure() or DELETE_RETRY_MAX
        tries += 1
        log.debug("%s: deleting, try %d: %s; next try in %.0fs", key, tries, problem, delay)
        await asyncio.sleep(delay)


async def wait_until_pipelines_are_served(kube: KubeClient, stopping: asyncio.Event) -> bool:
    """Wait until the API server serves the Pipelines (its discovery names them); False if told to stop first.

    Kopf finds out once, as it starts, which resources the API server serves (its scan of the CRDs
    is off: the operator need not list them) and never watches one it did not find then. A
    kube-apiserver that has just started answers before it serves the CRDs again (for a second or
    two), so an operator started in that moment (with the API server after an outage or an upgrade)
    would run without ever seeing a Pipeline. It waits instead, and says so once."""
    backoff = Backoff(initial=1.0, maximum=10.0)
    waiting = False
    while not stopping.is_set():
        try:
            served = await kube.call(kube.custom.get_api_resources, API_GROUP, API_VERSION)
            if any(r.name == PLURAL for r in served.resources or []):
                if waiting:
                    log.info("the API server serves %s.%s/%s now: watching them", PLURAL, API_GROUP, API_VERSION)
                return True
            why = f"{API_GROUP}/{API_VERSION} does not list {PLURAL}"
        except Exception as exc:  # noqa: BLE001 - not served yet (404), or the API server is away: tried again
            why = f"{type(exc).__name__}: {getattr(exc, 'reason', None) or exc}"
        if not waiting:
            log.warning("the API server does not serve %s.%s/%s (yet: %s); the operator waits for it before "
                        "watching Pipelines (is the CRD installed?)", PLURAL, API_GROUP, API_VERSION, why)
            waiting = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), backoff.failure() or 10.0)
    return False


def _retains_storage(obj: dict[str, Any]) -> bool:
    """``spec.storage.deletionPolicy`` is Retain (read from the object as stored: a deletion must go on even
    if the rest of its spec no longer validates)."""
    storage = ((obj.get("spec") or {}).get("storage") or {})
    return bool(storage.get("deletionPolicy") == StorageDeletionPolicy.RETAIN.value)


async def _deletion_step(ctx: LoopServices, key: PipelineKey, retain_storage: bool = False) -> str | None:
    """One try: what is still there (and asked to go away), or None when everything is gone. Retained
    storage is released from the pipeline instead of deleted, once its compute is gone (nothing writes
    to it any more)."""
    compute = await ctx.backend.observe_compute(key)
    if compute.state is not ComputeState.ABSENT:
        await ctx.backend.deprovision(key)
        why = f": {compute.message}" if compute.message else ""
        return f"{ctx.backend.describe_compute(key)} is still {compute.state.value}{why}"
    if retain_storage:
        await ctx.backend.retain_storage(key)
        return None
    if await ctx.backend.storage_exists(key):
        await ctx.backend.clear_storage(key)
        return f"{ctx.backend.describe_storage(key)} still exists (its deletion was requested)"
    return None


async def _leftovers(ctx: LoopServices, key: PipelineKey, last_problem: str | None) -> str:
    """What a release leaves behind, as seen now (without asking anything to go away)."""
    left = []
    try:
        compute = await ctx.backend.observe_compute(key)
        if compute.state is not ComputeState.ABSENT:
            left.append(f"{ctx.backend.describe_compute(key)} ({compute.state.value})")
        if await ctx.backend.storage_exists(key):
            left.append(ctx.backend.describe_storage(key))
    except Exception as exc:  # noqa: BLE001 - the last known problem is named instead
        return f"{last_problem or 'unknown'} (looking again failed: {exc})"
    return ", ".join(left) or "nothing (compute and storage are gone)"


async def _report_stuck(ctx: LoopServices, key: PipelineKey, obj: dict[str, Any], message: str) -> bool:
    """``Stalled`` True and ``Ready`` False, reason ``DeletionStuck`` (kstatus: Failed); False if the write failed."""
    status = dict(obj.get("status") or {})
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    generation = (obj.get("metadata") or {}).get("generation")
    kept = [c for c in status.get("conditions") or [] if c.get("type") not in ("Stalled", "Ready")]
    for kind, value in (("Stalled", "True"), ("Ready", "False")):
        condition = {"type": kind, "status": value, "reason": REASON_DELETION_STUCK, "message": message[:4096],
                     "lastTransitionTime": now}
        if generation is not None:
            condition["observedGeneration"] = generation
        kept.append(condition)
    status["conditions"] = kept
    try:
        await ctx.kube.write_status(key.namespace, key.name, obj["metadata"]["resourceVersion"], status)
        return True
    except (Conflict, Gone):
        return False
    except Exception as exc:  # noqa: BLE001 - tried again at the next retry
        log.warning("%s: could not write the DeletionStuck condition (%s); trying again", key, exc)
        return False


async def _release(ctx: LoopServices, key: PipelineKey, left: str) -> None:
    """An administrator released the finalizer: say what is left behind, then let the Pipeline go."""
    message = (f"The finalizer was released by the {ANNOTATION_RELEASE_FINALIZER} annotation before deletion "
               f"finished; left behind (remove by hand): {left}")
    log.warning("%s: %s", key, message)
    await post_event(ctx.kube, ctx.settings.operator_name, key, "Warning", REASON_FINALIZER_RELEASED, message)
    try:
        await ctx.sink.forget(key)
    except Exception as exc:  # noqa: BLE001 - the sweep removes the events later; the release goes on
        log.warning("%s: could not remove its monitor events (%s)", key, exc)


def _timestamp(value: Any) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00")) if value else None
    except ValueError:
        return None


def make_backend(settings: OperatorSettings, kube: KubeClient, on_child_change: Callable[[str], None] | None = None,
                 on_restored: Callable[[PipelineKey, str], None] | None = None) -> Backend:
    if settings.backend is BackendKind.LOCAL:
        return LocalBackend(settings.state_dir, settings.pipeline_command, debug_routes=settings.pipeline_debug_routes)
    return KubernetesBackend.from_settings(kube, settings, on_child_change=on_child_change, on_restored=on_restored)


def make_compiler(settings: OperatorSettings) -> Compiler:
    """The stand-in compiler (sqlglot), or Feldera's SQL compiler with the binary store (``--compiler feldera``)."""
    folder = settings.state_dir / "programs"
    if settings.compiler != "feldera":
        return Compiler(folder)
    assert settings.feldera_sql_compiler is not None and settings.program_binaries is not None  # checked by settings
    return FelderaCompiler(folder / "feldera", settings.feldera_sql_compiler.absolute(), settings.java,
                           settings.program_binaries.absolute(), settings.feldera_version)


def _wake(ctx: LoopServices, uid: str) -> None:
    """A child object of this Pipeline changed (a pod went Ready, a claim was bound): look at once."""
    monitor = ctx.monitors.by_uid(uid)
    if monitor is not None:
        monitor.wake.set()


async def run(settings: OperatorSettings, *, ready_flag: asyncio.Event | None = None,
              stop_flag: asyncio.Event | None = None) -> None:
    """Run the operator until it is told to stop (SIGINT/SIGTERM, or ``stop_flag``)."""
    if not settings.all_namespaces and not settings.namespaces:
        raise ValueError("say which namespaces to watch: --namespace NAME (repeatable) or --all-namespaces")
    if settings.leader_election and not settings.lease_namespace():
        raise ValueError("--leader-election needs the namespace of its Lease: --leader-election-namespace, "
                         "--operator-namespace or $POD_NAMESPACE")
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    # Separate clients, each with its own bounded pool: the monitoring loops' calls, the Kubernetes
    # Events, the HTTP API's reviews and writes, and (below) the leader election and the watches
    # never wait behind one another (docs/architecture.md).
    kube = KubeClient(field_manager=settings.operator_name)
    events_kube = KubeClient(field_manager=settings.operator_name, workers=kube_events.WORKERS)
    api_kube = KubeClient(field_manager=settings.operator_name, workers=8)
    store = await asyncio.to_thread(open_event_store, settings.event_store, settings.events_retention,
                                    settings.events_prune_interval, settings.event_store_queue_limit)

    def requester(key: PipelineKey) -> str | None:
        monitor = ctx.monitors.get(key.namespace, key.name)
        return requester_of(monitor.obj if monitor is not None else None)

    poster = KubernetesEventPoster(events_kube, settings.operator_name, requester=requester)
    poster.start()
    metrics = Metrics()
    metrics.count_kubernetes_events(lambda: (poster.posted, poster.dropped, poster.queued))
    metrics.watch_event_store(store.stats, store.commit_seconds)
    restorations: set[asyncio.Task[bool]] = set()

    def restored(key: PipelineKey, message: str) -> None:
        """A child of the Pipeline was changed or deleted by someone and put back: a Warning Event says so."""
        task = asyncio.create_task(post_event(events_kube, settings.operator_name, key, "Warning", REASON_RESTORED,
                                              message))
        restorations.add(task)
        task.add_done_callback(restorations.discard)

    backend = make_backend(settings, kube, on_child_change=lambda uid: _wake(ctx, uid), on_restored=restored)
    recorder = Recorder(store, poster)
    ctx = LoopServices(settings=settings, kube=kube, backend=backend,
                  compiler=make_compiler(settings),
                  runtime=RuntimeClient(status_timeout=settings.status_timeout, token_for=backend.control_token),
                  sink=recorder, metrics=metrics)
    # Every replica watches the Pipelines: a standby serves them (and, from a shared store, their
    # events) through its HTTP API, and the leader serves them before its loops have started.
    # The leader's API serves its loops, not the watch: the cache keeps no copy of a Pipeline a loop holds.
    cache = PipelineCache(monitored=lambda namespace, name: (
        (monitor := ctx.monitors.get(namespace, name)) is not None and monitor.obj is not None))
    watch = Informer(kubernetes.client.ApiClient(kube.api_client.configuration),
                     path=f"/apis/{API_GROUP}/{API_VERSION}", resource=PLURAL,
                     namespaces=None if settings.all_namespaces else list(settings.namespaces),
                     on_change=cache.on_change, name="pipelines", cached_form=names_and_versions)

    ctx.monitors.on_add.append(lambda monitor: cache.loop_started(monitor.key.namespace, monitor.key.name))
    ctx.monitors.on_remove.append(
        lambda monitor: cache.loop_ended(monitor.obj, watch.get(monitor.key.namespace, monitor.key.name)))
    standby_serves = settings.backend is BackendKind.KUBERNETES and is_database_url(settings.event_store)
    api = None
    if settings.api_listen != "off":
        host, _, port = settings.api_listen.rpartition(":")
        api = ApiServer(ApiDeps(pipelines=ServedPipelines(ctx.monitors, cache), events=store, kube=api_kube,
                                endpoint=ctx.backend.endpoint, runtime=ctx.runtime, artifact=ctx.compiler.artifact,
                                metrics=metrics, learn_token=ctx.backend.learn_token, logs=ctx.backend.logs,
                                community_edition=settings.compiler == "feldera",
                                program_binary=ctx.backend.program_binary
                                if isinstance(ctx.backend, KubernetesBackend) else None),
                        auth=settings.api_auth, default_namespace=settings.api_default_namespace,
                        max_concurrency=settings.api_max_concurrency, audience=settings.api_audience,
                        auth_concurrency=settings.api_auth_concurrency, auth_rate=settings.api_auth_rate,
                        tls_cert=settings.api_tls_cert, tls_key=settings.api_tls_key, ui_enabled=settings.api_ui,
                        follow_limits=FollowLimits(settings.api_follow_streams, settings.api_follow_streams_per_client,
                                                   settings.api_follow_queue),
                        max_per_identity=settings.api_max_concurrency_per_identity or None,
                        max_per_namespace=settings.api_max_concurrency_per_namespace or None,
                        queue_timeout=settings.api_queue_timeout, metrics_auth=settings.metrics_auth)
        recorder.listeners.append(api.follow.published)  # live streams hear of each event as it is recorded
        await api.start(host.strip("[]"), int(port))
    ready_flag = ready_flag or asyncio.Event()
    # Kopf is stopped through this flag, never by its own signal handlers (replaced once it is
    # ready): a stop the operator asked for is then known as such, and Kopf does not arm its
    # SIGKILL timer for signals.
    stopping = asyncio.Event()

    def request_stop(sig: signal.Signals) -> None:
        if not stopping.is_set():
            log.info("%s received: stopping; the pipelines' compute keeps running, and the next operator "
                     "adopts it", sig.name)
        stopping.set()

    def handle_signals() -> None:
        if threading.current_thread() is threading.main_thread():
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, request_stop, sig)

    async def mark_ready() -> None:
        await ready_flag.wait()
        handle_signals()  # again: Kopf installed its own while starting
        if api is not None:
            api.ready = True

    async def serve_standing_by() -> None:
        """A standby is ready once its watch of the Pipelines has listed them all: it then serves
        them, and their events from the shared store (docs/operations.md, High availability)."""
        await watch.wait_synced()
        if api is not None and standby_serves and not api.ready:
            log.info("standing by: the HTTP API serves the pipelines from this replica's watch and their events "
                     "from the shared event store; the leader reconciles")
            api.ready = True

    async def report_refusals(claims: NamespaceClaims) -> None:
        """Not ready while another installation holds a namespace this one should serve: a rollout
        of an overlapping installation stops there, and ``kubectl describe pod`` says why."""
        while True:
            refused = claims.refused()
            if api is not None and refused:
                api.ready = False
                api.not_ready = "; ".join(refused.values())
            elif api is not None and not api.ready and ready_flag.is_set():
                api.ready = True
            await asyncio.sleep(1.0)

    async def sweep_events(claims: NamespaceClaims | None) -> None:
        """The leader removes the events of Pipelines that no longer exist (docs/operations.md, Deleting
        pipelines), once its watch of the Pipelines has listed them."""
        await watch.wait_synced()

        def known() -> set[str]:
            return ({monitor.key.uid for monitor in ctx.monitors.all()}
                    | {(obj.get("metadata") or {}).get("uid", "") for obj in watch.list()})

        def in_scope(namespace: str) -> bool:
            return ((settings.all_namespaces or namespace in settings.namespaces)
                    and (claims is None or claims.holds(namespace)))
        await keep_sweeping(store, kube.get_pipeline, known=known, in_scope=in_scope,
                            interval=settings.events_sweep_interval)

    async def follow_stop_flag(flag: asyncio.Event) -> None:
        await flag.wait()
        stopping.set()
    handle_signals()
    await watch.start()
    # The backend's watches start at once (a standby that takes over has them in sync already); the
    # loops start only once they have listed everything, so that no pass decides from a partial view.
    backend_started = asyncio.create_task(ctx.backend.start())
    helpers = [asyncio.create_task(mark_ready()), backend_started, asyncio.create_task(memory.settle_after_bursts())]
    if stop_flag is not None:
        helpers.append(asyncio.create_task(follow_stop_flag(stop_flag)))
    shard = settings.shard()
    claims = None
    if shard is not None:  # a client of its own: renewals never wait behind the loops' calls
        claims = NamespaceClaims(KubeClient(field_manager=settings.operator_name, workers=2), shard,
                                 duration=CLAIM_LEASE_DURATIONS * settings.lease_duration,
                                 namespaces=None if settings.all_namespaces else list(settings.namespaces))
    registry = build_registry(ctx, claims)
    where = "all namespaces" if settings.all_namespaces else ", ".join(settings.namespaces)
    elector: LeaderElector | None = None
    lost: list[str] = []
    if settings.leader_election:
        # A client of its own (two threads): renewals never wait behind the operator's other calls.
        elector = LeaderElector(KubeClient(field_manager=settings.operator_name, workers=2), settings.lease_namespace(),
                                settings.leader_election_id,
                                timing=LeaseTiming(settings.lease_duration, settings.lease_renew_deadline,
                                                   settings.lease_retry_period))
        helpers.append(asyncio.create_task(serve_standing_by()))
        if api is not None:
            api.not_ready = (f"Standing by: another replica holds the Lease {elector.namespace}/{elector.name} "
                             "and reconciles" + ("; this replica serves the API once its watch of the Pipelines "
                                                 "has listed them" if standby_serves else
                                                 "; a standby serves the API only with a shared (postgresql://) "
                                                 "event store and the Kubernetes backend"))

    def fence(reason: str) -> None:
        """No call goes out from now on: a standby may take over in a few seconds (called from the
        elector's own thread, at once, however busy this loop is)."""
        kube.fence(reason)
        events_kube.fence(reason)

    async def keep_leading(elector: LeaderElector) -> None:
        reason = await elector.hold_apart(on_lost=fence)
        lost.append(reason)
        log.error("leader election: %s lost the leadership (%s); it stops acting now and exits, and comes back as "
                  "a standby", elector.identity, reason)
        stopping.set()

    try:
        if elector is None or await elector.acquire(stopping):
            if elector is not None:
                helpers.append(asyncio.create_task(keep_leading(elector)))
                if api is not None and not api.ready:
                    api.not_ready = "The operator is starting"
            await backend_started  # every watch of the backend has listed its objects
            if claims is not None:
                await claims.start()
                helpers.append(asyncio.create_task(claims.run()))
                helpers.append(asyncio.create_task(report_refusals(claims)))
            helpers.append(asyncio.create_task(sweep_events(claims)))
            log.info("pipeline-operator watching pipelines.%s in %s with the %s backend (event loop: %s)", API_GROUP,
                     where, settings.backend.value, type(asyncio.get_running_loop()).__module__.partition(".")[0])
            strip_managed_fields_in_kopf_watches()
            bound_json_depth_in_kopf()
            if await wait_until_pipelines_are_served(kube, stopping):
                await kopf.operator(registry=registry, standalone=True, clusterwide=settings.all_namespaces,
                                    namespaces=settings.namespaces, ready_flag=ready_flag, stop_flag=stopping,
                                    memo=kopf.Memo())
    except Exception as exc:
        if not stopping.is_set():
            raise
        # Kopf re-raises the failure of any task still running when it stopped (a status write
        # that lost a race, a request cut short): at shutdown that loses nothing, as every pass
        # is decided again from the Pipeline's status by the next operator.
        log.warning("a task under way at shutdown failed (%s: %s); nothing is lost: the next operator decides "
                    "again from the Pipelines' status", type(exc).__name__, exc)
    finally:
        for helper in helpers:
            helper.cancel()
        if ctx.in_flight:  # status writes under way finish, with their events, before the store closes
            await asyncio.wait(list(ctx.in_flight), timeout=30)
        if claims is not None:
            await _quietly("the namespace claims", claims.stop())
            await _quietly("the namespace claims' client", claims.kube.close())
        if elector is not None:
            if not lost:  # stopping on its own: a standby takes over at its next try
                await _quietly("the leader-election Lease", elector.release())
            await _quietly("the leader-election client", elector.kube.close())
        await _quietly("the HTTP API", api.stop() if api is not None else None)
        await _quietly("the watch of the Pipelines", watch.stop())
        await _quietly("the runtime client", ctx.runtime.close())
        await _quietly("the backend", ctx.backend.close())
        await _quietly("the Kubernetes Event poster", poster.close())
        await _quietly("the event store", asyncio.to_thread(store.close))
        for client in (ctx.kube, events_kube, api_kube):
            await _quietly("a Kubernetes client", client.close())
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                asyncio.get_running_loop().remove_signal_handler(sig)
        log.info("pipeline-operator stopped")
    if lost:
        raise LeadershipLost(lost[0])


class LeadershipLost(Exception):
    """This replica lost the leader-election Lease and stopped; it is restarted as a standby."""


async def _quietly(what: str, closing: Awaitable[Any] | None) -> None:
    """One step of shutdown: a failure is one log line, and the other steps still run."""
    if closing is None:
        return
    try:
        await closing
    except Exception as exc:  # noqa: BLE001 - shutdown goes on
        log.warning("stopping %s failed (%s: %s); going on with shutdown", what, type(exc).__name__, exc)


__all__ = ["run", "build_registry", "LeadershipLost"]
