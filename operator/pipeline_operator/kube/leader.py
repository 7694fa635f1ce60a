"""Leader election with a ``coordination.k8s.io/v1`` Lease, as client-go's ``leaderelection``
package does it (and with it the operators of Flink, Strimzi and Spark).

Any number of replicas run; the one holding the Lease reconciles, the others stand by and serve
their probes. The holder renews the Lease every ``retry_period``; a standby takes it over only
once it has seen the same Lease record, unchanged, for ``duration`` by its own clock (never by
comparing clocks across machines), and every change of hands is one optimistic write (the
Lease's ``resourceVersion``): two replicas can never both win.

The leader that cannot renew within ``renew_deadline`` (shorter than ``duration``) gives up: the
operator fences its Kubernetes client (no call goes out any more) and stops, so it has stopped
acting before any standby can take over; status writes stay fenced by the Pipeline's
``resourceVersion`` as always. A leader that stops on its own (SIGTERM, a rolling update) releases
the Lease, so a standby takes over at its next try instead of waiting out ``duration``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from .client import KubeClient, Unavailable

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LeaseTiming:
    """client-go's defaults: the Lease lasts 15 s, the leader gives up after 10 s without a renewal,
    and every replica tries every 2 s."""

    duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.duration:
            raise ValueError("leader election needs retry period < renew deadline < lease duration "
                             f"(got {self.retry_period} s, {self.renew_deadline} s, {self.duration} s)")


def default_identity() -> str:
    """The pod's name (``$POD_NAME``, else the host name, which is the pod's name in a pod) and a
    unique suffix, as client-go does: a restarted replica is a new candidate."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"


def lease_now() -> str:
    """Now as a Lease's ``MicroTime``."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_record(holder: str, duration: float, transitions: int, acquired: str) -> dict[str, Any]:
    """A Lease's ``spec`` as this holder writes it, renewed now (leader election and namespace claims alike).

    ``leaseDurationSeconds`` is a whole number of seconds: ``duration`` rounded up, never down, so that
    another replica never waits less than the holder counts on (a leader stops acting at its renew deadline,
    a margin before the Lease ends)."""
    return {"holderIdentity": holder, "leaseDurationSeconds": max(1, math.ceil(duration)), "acquireTime": acquired,
            "renewTime": lease_now(), "leaseTransitions": transitions}


class LeaderElector:
    """One candidate for the Lease ``namespace/name``. ``kube`` should be a client of its own (a
    small pool), so that renewals never wait behind the operator's other calls."""

    def __init__(self, kube: KubeClient, namespace: str, name: str, identity: str | None = None,
                 timing: LeaseTiming | None = None) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity or default_identity()
        self.timing = timing or LeaseTiming()
        self.holder: str | None = None  # as last seen
        self.is_leader = False
        self._observed: tuple[Any, ...] | None = None  # the Lease record last seen, and when (monotonic)
        self._observed_at = 0.0
        self._last_renewal = 0.0
        self._api = kubernetes.client.CoordinationV1Api(kube.api_client)
        self._apart: tuple[threading.Thread, asyncio.AbstractEventLoop, asyncio.Task[str]] | None = None

    # -- one try ---------------------------------------------------------------------------------

    async def _read(self) -> dict[str, Any] | None:
        try:
            lease = await self.kube.call(self._api.read_namespaced_lease, self.name, self.namespace,
                                         _request_timeout=self._timeout())
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return dict(self.kube.api_client.sanitize_for_serialization(lease))

    def _timeout(self) -> tuple[float, float]:
        return (min(2.0, self.timing.retry_period), self.timing.retry_period * 2)

    def _record(self, holder: str, transitions: int, acquired: str) -> dict[str, Any]:
        return lease_record(holder, self.timing.duration, transitions, acquired)

    async def try_acquire_or_renew(self) -> bool:
        """One attempt (client-go's ``tryAcquireOrRenew``): True when this candidate holds the Lease
        after it. API errors and conflicts are a False, never an exception."""
        now = time.monotonic()
        try:
            lease = await self._read()
            if lease is None:
                body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                        "metadata": {"name": self.name, "namespace": self.namespace,
                                     "labels": {"app.kubernetes.io/name": "pipeline-operator",
                                                "app.kubernetes.io/component": "leader-election"}},
                        "spec": self._record(self.identity, 0, lease_now())}
                await self.kube.call(self._api.create_namespaced_lease, self.namespace, body,
                                     _request_timeout=self._timeout())
                return self._won(now, fresh=True)
            spec = lease.get("spec") or {}
            holder = spec.get("holderIdentity") or None
            record = (holder, spec.get("renewTime"), spec.get("leaseDurationSeconds"),
                      lease["metadata"].get("resourceVersion"))
            if record != self._observed:
                self._observed, self._observed_at = record, now
            self.holder = holder
            duration = float(spec.get("leaseDurationSeconds") or self.timing.duration)
            if holder and holder != self.identity and self._observed_at + duration > now:
                return False
            transitions = int(spec.get("leaseTransitions") or 0) + (0 if holder == self.identity else 1)
            acquired = spec.get("acquireTime") if holder == self.identity else lease_now()
            lease["spec"] = self._record(self.identity, transitions, acquired or lease_now())
            await self.kube.call(self._api.replace_namespaced_lease, self.name, self.namespace, lease,
                                 _request_timeout=self._timeout())
            return self._won(now, fresh=holder != self.identity)
        except ApiException as exc:
            if exc.status not in (409, 404):  # 409/404: another candidate changed it first
                log.warning("leader election: the Lease %s/%s could not be read or written (%s %s)",
                            self.namespace, self.name, exc.status, exc.reason)
            return False
        except (TimeoutError, Unavailable) as exc:
            log.warning("leader election: the API server did not answer (%s)", exc)
            return False

    def _won(self, when: float, fresh: bool) -> bool:
        if fresh:
            log.info("leader election: %s holds the Lease %s/%s now", self.identity, self.namespace, self.name)
        self.holder = self.identity
        self.is_leader = True
        self._last_renewal = when
        return True

    # -- the loops -------------------------------------------------------------------------------

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Stand by until this candidate holds the Lease (True), or ``stop`` is set (False)."""
        announced: str | None = "?"
        while not stop.is_set():
            if await self.try_acquire_or_renew():
                return True
            if self.holder != announced:
                announced = self.holder
                log.info("leader election: standing by; the Lease %s/%s is held by %s", self.namespace, self.name,
                         self.holder or "nobody (taking it at the next try)")
            try:
                async with asyncio.timeout(self.timing.retry_period):  # not wait_for (docs/architecture.md)
                    await stop.wait()
            except TimeoutError:
                pass
        return False

    async def hold(self) -> str:
        """Renew the Lease every retry period while this candidate leads. Returns why leadership was
        lost: another holder, or no renewal within the renew deadline."""
        while True:
            await asyncio.sleep(self.timing.retry_period)
            deadline = self._last_renewal + self.timing.renew_deadline
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.is_leader = False
                    return (f"the Lease {self.namespace}/{self.name} was not renewed within "
                            f"{self.timing.renew_deadline:g} s")
                try:
                    renewed = await asyncio.wait_for(self.try_acquire_or_renew(), remaining)
                except TimeoutError:
                    continue
                if renewed:
                    break
                if self.holder not in (None, self.identity):
                    self.is_leader = False
                    return f"the Lease {self.namespace}/{self.name} is held by {self.holder}"
                await asyncio.sleep(min(self.timing.retry_period / 4, max(0.0, deadline - time.monotonic())))

    async def hold_apart(self, on_lost: Callable[[str], None]) -> str:
        """:meth:`hold` on an event loop of its own, in a thread of its own, so that no renewal waits
        for the operator's loop, however busy thousands of pipelines keep it (client-go renews from a
        goroutine of its own for the same reason). ``on_lost`` runs in that thread the moment the
        leadership is lost, before any standby can take over: it fences the operator's clients even
        while the operator's loop is busy. Returns why it was lost; cancelled, it stops renewing."""
        main = asyncio.get_running_loop()
        lost: asyncio.Future[str] = main.create_future()
        loop = asyncio.new_event_loop()
        task = loop.create_task(self.hold())

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                reason = loop.run_until_complete(task)
            except asyncio.CancelledError:
                return
            except Exception as exc:  # hold() answers API errors itself: whatever else, nothing renews now
                log.exception("leader election: renewing the Lease failed")
                reason = f"renewing the Lease {self.namespace}/{self.name} failed ({type(exc).__name__}: {exc})"
            finally:
                loop.run_until_complete(loop.shutdown_default_executor())
                loop.close()
            on_lost(reason)

            def report() -> None:
                if not lost.done():
                    lost.set_result(reason)
            with contextlib.suppress(RuntimeError):  # the operator's loop has ended already
                main.call_soon_threadsafe(report)

        thread = threading.Thread(target=run, name="leader-election", daemon=True)
        self._apart = (thread, loop, task)
        thread.start()
        try:
            return await lost
        finally:
            await self._stop_apart()

    async def _stop_apart(self) -> None:
        """Stop renewing from the thread of :meth:`hold_apart` (and wait for it: nothing renews the Lease
        while :meth:`release` gives it up)."""
        if self._apart is None:
            return
        thread, loop, task = self._apart
        self._apart = None
        try:
            loop.call_soon_threadsafe(task.cancel)
        except RuntimeError:
            pass  # its loop has ended already: leadership was lost
        await asyncio.to_thread(thread.join, self.timing.retry_period * 4)

    async def release(self) -> None:
        """Give the Lease up (a leader stopping on its own): a standby takes it at its next try."""
        await self._stop_apart()
        if not self.is_leader:
            return
        self.is_leader = False
        try:
            lease = await self._read()
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            spec = lease["spec"]
            now = lease_now()
            lease["spec"] = {"holderIdentity": None, "leaseDurationSeconds": 1, "acquireTime": now, "renewTime": now,
                             "leaseTransitions": spec.get("leaseTransitions") or 0}
            await self.kube.call(self._api.replace_namespaced_lease, self.name, self.namespace, lease,
                                 _request_timeout=self._timeout())
            log.info("leader election: released the Lease %s/%s", self.namespace, self.name)
        except (ApiException, Unavailable) as exc:
            log.warning("leader election: could not release the Lease %s/%s (%s); a standby takes it over once it "
                        "expires", self.namespace, self.name, exc)
