"""The composition root: :func:`run` builds the operator's parts from its settings and starts them.

What is built: the clients and their pools (:class:`.clients.Clients`), the event store, the Kubernetes Event
poster and the recorder, the backend, the compiler and the runtime client (the loops' shared
:class:`LoopServices`), this replica's watch of the Pipelines and what the HTTP API serves from it, the API,
the namespace claims and leader election. What is started: the backend's watches, the background tasks
(:mod:`.background`), then, on the leader, Kopf with the handlers of :mod:`.registry`. Shutdown (SIGTERM)
stops Kopf through a flag of its own and never touches pipelines' compute.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import kopf

from ..api import ApiDeps, ApiServer, Metrics
from ..api.follow import FollowLimits
from ..backends import Backend
from ..backends.kubernetes import REASON_RESTORED, KubernetesBackend
from ..backends.local import LocalBackend
from ..feldera.compiler import Compiler, FelderaCompiler
from ..feldera.runtime_client import RuntimeClient
from ..identity import PipelineKey
from ..kube.client import KubeClient
from ..kube.events import KubernetesEventPoster, requester_of
from ..kube.leader import LeaderElector, LeaseTiming
from ..kube.shards import CLAIM_LEASE_DURATIONS, NamespaceClaims
from ..models import API_GROUP
from ..reconcile.recording import Recorder, post_event
from ..reconcile.services import LoopServices
from ..settings import BackendKind, OperatorSettings, is_database_url
from ..store import open_event_store
from ..store.base import EventStorage
from . import background, kopf_workarounds, memory
from .background import Stopping
from .clients import Clients, quietly
from .pipeline_cache import PipelineCache, PipelineWatch, ServedPipelines
from .registry import build_registry

log = logging.getLogger(__name__)


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
    check(settings)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    clients = Clients.from_settings(settings)
    store = await asyncio.to_thread(open_event_store, settings.event_store, settings.events_retention,
                                    settings.events_prune_interval, settings.event_store_queue_limit)
    metrics = Metrics()
    ctx, poster = build_loop_services(settings, clients, store, metrics)
    # Every replica watches the Pipelines, once: a standby serves them (and, from a shared store, their
    # events) through its HTTP API, and the leader serves them before its loops have started (its own
    # watch until Kopf's has listed them, then Kopf's). The leader's API serves its loops, not the watch:
    # the cache keeps no copy of a Pipeline a loop holds.
    watch = PipelineWatch(clients.loops, None if settings.all_namespaces else list(settings.namespaces),
                          PipelineCache(monitored=lambda namespace, name: (
                              (monitor := ctx.monitors.get(namespace, name)) is not None and monitor.obj is not None)))
    ctx.monitors.on_add.append(lambda monitor: watch.cache.loop_started(monitor.key.namespace, monitor.key.name))
    ctx.monitors.on_remove.append(lambda monitor: watch.loop_ended(monitor.key.namespace, monitor.key.name,
                                                                   monitor.obj))
    standby_serves = settings.backend is BackendKind.KUBERNETES and is_database_url(settings.event_store)
    api = build_api(settings, ctx, clients, store, watch.cache, metrics)
    if api is not None:
        host, _, port = settings.api_listen.rpartition(":")
        await api.start(host.strip("[]"), int(port))
    ready_flag = ready_flag or asyncio.Event()
    stopping = Stopping()
    stopping.handle_signals()
    await watch.start()
    # The backend's watches start at once (a standby that takes over has them in sync already); the
    # loops start only once they have listed everything, so that no pass decides from a partial view.
    backend_started = asyncio.create_task(ctx.backend.start())
    helpers = [asyncio.create_task(background.mark_ready(ready_flag, api, stopping)), backend_started,
               asyncio.create_task(memory.settle_after_bursts())]
    if stop_flag is not None:
        helpers.append(asyncio.create_task(stopping.follow(stop_flag)))
    claims = build_claims(settings, clients)
    elector = build_elector(settings, clients)
    lost: list[str] = []
    if elector is not None:
        helpers.append(asyncio.create_task(background.serve_standing_by(watch, api, standby_serves)))
        if api is not None:
            api.not_ready = (f"Standing by: another replica holds the Lease {elector.namespace}/{elector.name} "
                             "and reconciles" + ("; this replica serves the API once its watch of the Pipelines "
                                                 "has listed them" if standby_serves else
                                                 "; a standby serves the API only with a shared (postgresql://) "
                                                 "event store and the Kubernetes backend"))
    try:
        if elector is None or await elector.acquire(stopping.flag):
            if elector is not None:
                helpers.append(asyncio.create_task(background.keep_leading(elector, clients.fence, lost, stopping)))
                if api is not None and not api.ready:
                    api.not_ready = "The operator is starting"
            await backend_started  # every watch of the backend has listed its objects
            if claims is not None:
                await claims.start()
                helpers.append(asyncio.create_task(claims.run()))
                helpers.append(asyncio.create_task(background.report_refusals(claims, api, ready_flag)))
            helpers.append(asyncio.create_task(background.sweep_events(ctx, store, watch, claims)))
            where = "all namespaces" if settings.all_namespaces else ", ".join(settings.namespaces)
            log.info("pipeline-operator watching pipelines.%s in %s with the %s backend (event loop: %s)", API_GROUP,
                     where, settings.backend.value, type(asyncio.get_running_loop()).__module__.partition(".")[0])
            kopf_workarounds.apply()
            if await background.wait_until_pipelines_are_served(clients.loops, stopping.flag):
                with kopf_workarounds.following_kopf_watches(watch):  # Kopf's watch feeds the cache from now on
                    await kopf.operator(registry=build_registry(ctx, claims), standalone=True,
                                        clusterwide=settings.all_namespaces, namespaces=settings.namespaces,
                                        ready_flag=ready_flag, stop_flag=stopping.flag, memo=kopf.Memo())
    except Exception as exc:
        if not stopping.flag.is_set():
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
            await quietly("the namespace claims", claims.stop())
        if elector is not None and not lost:  # stopping on its own: a standby takes over at its next try
            await quietly("the leader-election Lease", elector.release())
        await quietly("the HTTP API", api.stop() if api is not None else None)
        await quietly("the watch of the Pipelines", watch.stop())
        await quietly("the runtime client", ctx.runtime.close())
        await quietly("the backend", ctx.backend.close())
        await quietly("the Kubernetes Event poster", poster.close())
        await quietly("the event store", asyncio.to_thread(store.close))
        await clients.close()
        stopping.unhandle_signals()
        log.info("pipeline-operator stopped")
    if lost:
        raise LeadershipLost(lost[0])


def check(settings: OperatorSettings) -> None:
    """What the settings alone cannot check: the namespaces to watch, the Lease's namespace."""
    if not settings.all_namespaces and not settings.namespaces:
        raise ValueError("say which namespaces to watch: --namespace NAME (repeatable) or --all-namespaces")
    if settings.leader_election and not settings.lease_namespace():
        raise ValueError("--leader-election needs the namespace of its Lease: --leader-election-namespace, "
                         "--operator-namespace or $POD_NAMESPACE")


def build_loop_services(settings: OperatorSettings, clients: Clients, store: EventStorage,
                        metrics: Metrics) -> tuple[LoopServices, KubernetesEventPoster]:
    """What every pipeline's loop shares: the loops' client, the backend, the compiler, the runtime client,
    the recorder of monitor events (the store, and Kubernetes Events through the poster, started here)."""
    services: list[LoopServices] = []  # the loops' services, once built (the callbacks below need them)

    def requester(key: PipelineKey) -> str | None:
        monitor = services[0].monitors.get(key.namespace, key.name) if services else None
        return requester_of(monitor.obj if monitor is not None else None)

    poster = KubernetesEventPoster(clients.events, settings.operator_name, requester=requester)
    poster.start()
    metrics.count_kubernetes_events(lambda: (poster.posted, poster.dropped, poster.queued))
    metrics.watch_event_store(store.stats, store.commit_seconds)
    restorations: set[asyncio.Task[bool]] = set()

    def restored(key: PipelineKey, message: str) -> None:
        """A child of the Pipeline was changed or deleted by someone and put back: a Warning Event says so."""
        task = asyncio.create_task(post_event(clients.events, settings.operator_name, key, "Warning", REASON_RESTORED,
                                              message))
        restorations.add(task)
        task.add_done_callback(restorations.discard)

    def wake(uid: str) -> None:
        """A child object of this Pipeline changed (a pod went Ready, a claim was bound): look at once."""
        monitor = services[0].monitors.by_uid(uid) if services else None
        if monitor is not None:
            monitor.wake.set()

    backend = make_backend(settings, clients.loops, on_child_change=wake, on_restored=restored)
    services.append(LoopServices(settings=settings, kube=clients.loops, backend=backend,
                                 compiler=make_compiler(settings),
                                 runtime=RuntimeClient(status_timeout=settings.status_timeout,
                                                       token_for=backend.control_token),
                                 sink=Recorder(store, poster), metrics=metrics))
    return services[0], poster


def build_api(settings: OperatorSettings, ctx: LoopServices, clients: Clients, store: EventStorage,
              cache: PipelineCache, metrics: Metrics) -> ApiServer | None:
    """The HTTP API (None with ``--api-listen off``): it serves the loops' pipelines and the watched ones; live
    event streams hear of each event as it is recorded."""
    if settings.api_listen == "off":
        return None
    api = ApiServer(ApiDeps(pipelines=ServedPipelines(ctx.monitors, cache), events=store, kube=clients.api,
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
    if isinstance(ctx.sink, Recorder):
        ctx.sink.listeners.append(api.follow.published)
    return api


def build_claims(settings: OperatorSettings, clients: Clients) -> NamespaceClaims | None:
    """The namespace claims of this installation (sharding), with a client of their own."""
    shard = settings.shard()
    if shard is None or clients.claims is None:
        return None
    return NamespaceClaims(clients.claims, shard, duration=CLAIM_LEASE_DURATIONS * settings.lease_duration,
                           namespaces=None if settings.all_namespaces else list(settings.namespaces))


def build_elector(settings: OperatorSettings, clients: Clients) -> LeaderElector | None:
    """Leader election (``--leader-election``), with a client of its own."""
    if clients.lease is None:
        return None
    return LeaderElector(clients.lease, settings.lease_namespace(), settings.leader_election_id,
                         timing=LeaseTiming(settings.lease_duration, settings.lease_renew_deadline,
                                            settings.lease_retry_period))


class LeadershipLost(Exception):
    """This replica lost the leader-election Lease and stopped; it is restarted as a standby."""


__all__ = ["LeadershipLost", "run"]
