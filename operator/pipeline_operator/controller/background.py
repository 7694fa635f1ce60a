"""The operator's background tasks beside Kopf, each named, started by :func:`.wiring.run`: readiness, the
stop signals, standing by, the namespace claims' refusals, the events sweep, holding the leadership, and the
wait for the API server to serve the Pipelines before Kopf starts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable

from ..api import ApiServer
from ..kube.client import KubeClient
from ..kube.leader import LeaderElector
from ..kube.shards import NamespaceClaims
from ..models import API_GROUP, API_VERSION, PLURAL
from ..reconcile.services import LoopServices
from ..retry import Backoff
from ..store.base import EventStorage
from ..store.sweep import keep_sweeping
from .pipeline_cache import PipelineWatch

log = logging.getLogger(__name__)


class Stopping:
    """How the operator is told to stop. Kopf is stopped through :attr:`flag`, never by its own signal
    handlers (replaced once it is ready): a stop the operator asked for is then known as such, and Kopf does
    not arm its SIGKILL timer for signals."""

    def __init__(self) -> None:
        self.flag = asyncio.Event()

    def request(self, sig: signal.Signals) -> None:
        if not self.flag.is_set():
            log.info("%s received: stopping; the pipelines' compute keeps running, and the next operator "
                     "adopts it", sig.name)
        self.flag.set()

    def handle_signals(self) -> None:
        if threading.current_thread() is threading.main_thread():
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self.request, sig)

    def unhandle_signals(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                asyncio.get_running_loop().remove_signal_handler(sig)

    async def follow(self, flag: asyncio.Event) -> None:
        """Stop when ``flag`` is set (the caller's ``stop_flag``)."""
        await flag.wait()
        self.flag.set()


async def mark_ready(ready_flag: asyncio.Event, api: ApiServer | None, stopping: Stopping) -> None:
    """Once Kopf is ready: the operator's own signal handlers again (Kopf installed its own while starting),
    and the API says ready."""
    await ready_flag.wait()
    stopping.handle_signals()
    if api is not None:
        api.ready = True


async def serve_standing_by(watch: PipelineWatch, api: ApiServer | None, standby_serves: bool) -> None:
    """A standby is ready once its watch of the Pipelines has listed them all: it then serves them, and their
    events from the shared store (docs/operations.md, High availability)."""
    await watch.wait_synced()
    if api is not None and standby_serves and not api.ready:
        log.info("standing by: the HTTP API serves the pipelines from this replica's watch and their events "
                 "from the shared event store; the leader reconciles")
        api.ready = True


async def report_refusals(claims: NamespaceClaims, api: ApiServer | None, ready_flag: asyncio.Event) -> None:
    """Not ready while another installation holds a namespace this one should serve: a rollout of an
    overlapping installation stops there, and ``kubectl describe pod`` says why."""
    while True:
        refused = claims.refused()
        if api is not None and refused:
            api.ready = False
            api.not_ready = "; ".join(refused.values())
        elif api is not None and not api.ready and ready_flag.is_set():
            api.ready = True
        await asyncio.sleep(1.0)


async def sweep_events(ctx: LoopServices, store: EventStorage, watch: PipelineWatch,
                       claims: NamespaceClaims | None) -> None:
    """The leader removes the events of Pipelines that no longer exist (docs/operations.md, Deleting
    pipelines), once its watch of the Pipelines has listed them."""
    await watch.wait_synced()
    settings = ctx.settings

    def known() -> set[str]:
        return {monitor.key.uid for monitor in ctx.monitors.all()} | watch.uids()

    def in_scope(namespace: str) -> bool:
        return ((settings.all_namespaces or namespace in settings.namespaces)
                and (claims is None or claims.holds(namespace)))
    await keep_sweeping(store, ctx.kube.get_pipeline, known=known, in_scope=in_scope,
                        interval=settings.events_sweep_interval)


async def keep_leading(elector: LeaderElector, fence: Callable[[str], None], lost: list[str],
                       stopping: Stopping) -> None:
    """Hold the Lease; once it is lost, fence the clients at once, say so, and stop (to come back as a
    standby)."""
    reason = await elector.hold_apart(on_lost=fence)
    lost.append(reason)
    log.error("leader election: %s lost the leadership (%s); it stops acting now and exits, and comes back as "
              "a standby", elector.identity, reason)
    stopping.flag.set()


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
            async with asyncio.timeout(backoff.failure() or 10.0):  # not wait_for (docs/architecture.md)
                await stopping.wait()
    return False


__all__ = ["Stopping", "keep_leading", "mark_ready", "report_refusals", "serve_standing_by", "sweep_events",
           "wait_until_pipelines_are_served"]
