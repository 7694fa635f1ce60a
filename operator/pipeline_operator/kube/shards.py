"""Namespace claims: several operator installations (shards) share a cluster, never a namespace.

A fleet too large for one leader is split by namespace: each *shard* is one installation (its
replicas elect one leader with the Lease ``--leader-election-id`` in ``--leader-election-namespace``)
watching its own set of namespaces. Two shards acting on the same namespace would fight over every
Pipeline in it (both driving its compute, both writing its status), so the leader of each shard
claims every namespace it acts on, and a namespace claimed by another shard is left alone.

A claim is a ``coordination.k8s.io/v1`` Lease named ``pipeline-operator-shard`` in the claimed
namespace itself, so two installations meet there whichever namespaces they run in. Its
``holderIdentity`` is the shard (``<lease namespace>/<leader-election id>``), not a pod: a failover
within the shard keeps its claims. It is renewed every third of its duration, and taken over by
another shard only when it was released (no holder) or its record has been seen unchanged for its
duration by the taker's own clock (as in leader election, clocks of different machines are never
compared); every change of hands is one write guarded by the Lease's ``resourceVersion``, so two
shards never both win a namespace. A claim lasts several leader-election Lease durations
(:data:`CLAIM_LEASE_DURATIONS`): the shard's standby must be able to take over its leadership and
renew the claims before any other shard may consider them abandoned.

A shard that cannot renew a claim stops acting in that namespace after two thirds of the claim's
duration, before any other shard may take it over. A shard that stops on its own keeps its claims
(a restart or a rolling update must not hand its namespaces to an overlapping shard); an
administrator releases a namespace by deleting its Lease (docs/sharding.md).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from .client import KubeClient, Unavailable
from .leader import lease_now, lease_record

log = logging.getLogger(__name__)

LEASE_NAME = "pipeline-operator-shard"
CLAIM_LEASE_DURATIONS = 4  # a claim lasts this many leader-election Lease durations


@dataclasses.dataclass
class _Claim:
    """What this shard knows of one namespace's claim."""

    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    tried: bool = False
    held: bool = False
    renewed_at: float = -math.inf  # monotonic: when the last successful write was started
    observed: tuple[Any, ...] | None = None  # the Lease record last seen, and when (monotonic)
    observed_at: float = 0.0
    refusal: str | None = None  # why this shard does not act here (another shard holds it, RBAC)
    failing: bool = False  # the last try failed for want of an answer (logged once per streak)


class NamespaceClaims:
    """The claims of one shard, ``shard`` (``<lease namespace>/<leader-election id>``), run by its
    leader. ``namespaces`` are claimed at :meth:`start`; None (``--all-namespaces``) claims each
    namespace the first time :meth:`allowed` is asked about it. ``kube`` should be a client of its
    own (a small pool), so that renewals never wait behind the operator's other calls."""

    def __init__(self, kube: KubeClient, shard: str, *, duration: float, namespaces: Sequence[str] | None) -> None:
        if duration <= 0:
            raise ValueError(f"a namespace claim needs a positive duration (got {duration} s)")
        self.kube = kube
        self.shard = shard
        self.duration = duration
        self.period = duration / 3  # renewals and retries
        self.renew_deadline = duration * 2 / 3  # acting stops this long after the last renewal
        self.namespaces = list(namespaces) if namespaces is not None else None
        self._claims: dict[str, _Claim] = {}
        self._stopped = False
        self._runner: asyncio.Task[None] | None = None
        self._api = kubernetes.client.CoordinationV1Api(kube.api_client)

    # -- what the operator asks ------------------------------------------------------------------

    async def start(self) -> None:
        """Claim every configured namespace at once; refusals are logged and remembered."""
        await asyncio.gather(*(self.allowed(namespace) for namespace in self.namespaces or ()))

    async def allowed(self, namespace: str) -> bool:
        """True while this shard holds the claim on ``namespace`` (claimed now if it was never
        tried); False when another live shard holds it, or the claim could not be renewed in time."""
        if self._stopped:
            return False
        claim = self._claims.setdefault(namespace, _Claim())
        if not claim.tried:
            async with claim.lock:
                if not claim.tried and not self._stopped:
                    await self._try(namespace, claim)
        return self.holds(namespace)

    def holds(self, namespace: str) -> bool:
        """:meth:`allowed` without trying a claim: for callers that cannot wait (Kopf's filters)."""
        claim = self._claims.get(namespace)
        return (not self._stopped and claim is not None and claim.held
                and time.monotonic() - claim.renewed_at < self.renew_deadline)

    def refused(self) -> dict[str, str]:
        """Namespace -> why this shard does not act there (the other shard and its Lease, or RBAC)."""
        return {namespace: claim.refusal for namespace, claim in sorted(self._claims.items())
                if claim.refusal is not None and not claim.held}

    async def run(self) -> None:
        """Renew the claims held and try the others again every period, until cancelled or stopped.
        A renewal that failed for want of an answer is tried again sooner, within its deadline."""
        self._runner = asyncio.current_task()
        delay = self.period
        while not self._stopped:
            await asyncio.sleep(delay)
            claims = list(self._claims.items())
            await asyncio.gather(*(self._retry(namespace, claim) for namespace, claim in claims))
            delay = self.period / 4 if any(c.failing and c.held for _, c in claims) else self.period

    async def stop(self) -> None:
        """Stop acting and renewing. Claims are kept, not released: a shard that restarts finds its
        namespaces still its own, and an overlapping shard cannot slip in meanwhile."""
        self._stopped = True
        if self._runner is not None and self._runner is not asyncio.current_task():
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)

    # -- one try ---------------------------------------------------------------------------------

    async def _retry(self, namespace: str, claim: _Claim) -> None:
        async with claim.lock:
            if not self._stopped:
                await self._try(namespace, claim)

    def _timeout(self) -> tuple[float, float]:
        return (min(5.0, self.period), self.period)

    async def _try(self, namespace: str, claim: _Claim) -> None:
        """Take or renew the claim on ``namespace`` (one read and one guarded write; read again when
        another writer came first). API errors are logged and leave the claim as it was."""
        try:
            for _ in range(3):
                if await self._take_or_renew(namespace, claim):
                    claim.failing = False
                    return
            self._unanswered(namespace, claim, "its Lease kept changing while it was written")
        except ApiException as exc:
            if exc.status == 403:
                self._refuse(namespace, claim, None,
                             f"the operator may not read or write the Lease {namespace}/{LEASE_NAME} "
                             f"({exc.reason}): its RBAC needs get, create and update on "
                             f"coordination.k8s.io leases in {namespace} (docs/sharding.md)")
                claim.failing = False
            else:
                self._unanswered(namespace, claim, f"{exc.status} {exc.reason}")
        except (TimeoutError, Unavailable) as exc:
            self._unanswered(namespace, claim, str(exc))
        finally:
            claim.tried = True  # set last: a concurrent first caller waits for this try's outcome

    async def _take_or_renew(self, namespace: str, claim: _Claim) -> bool:
        """One read and one write; False when another writer changed the Lease in between."""
        now = time.monotonic()
        try:
            lease = await self.kube.call(self._api.read_namespaced_lease, LEASE_NAME, namespace,
                                         _request_timeout=self._timeout())
        except ApiException as exc:
            if exc.status != 404:
                raise
            lease = None
        try:
            if lease is None:
                body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                        "metadata": {"name": LEASE_NAME, "namespace": namespace,
                                     "labels": {"app.kubernetes.io/name": "pipeline-operator",
                                                "app.kubernetes.io/component": "shard-claim"}},
                        "spec": self._record(0, lease_now())}
                await self.kube.call(self._api.create_namespaced_lease, namespace, body,
                                     _request_timeout=self._timeout())
                self._won(namespace, claim, now, previous=None)
                return True
            lease = dict(self.kube.api_client.sanitize_for_serialization(lease))
            spec = lease.get("spec") or {}
            holder = spec.get("holderIdentity") or None
            record = (holder, spec.get("renewTime"), spec.get("leaseDurationSeconds"),
                      lease["metadata"].get("resourceVersion"))
            if record != claim.observed:
                claim.observed, claim.observed_at = record, now
            if holder not in (None, self.shard):
                duration = float(spec.get("leaseDurationSeconds") or self.duration)
                if claim.observed_at + duration > now:
                    self._refuse(namespace, claim, holder, self._claimed_by(namespace, holder))
                    return True
            ours = holder == self.shard
            transitions = int(spec.get("leaseTransitions") or 0) + (0 if ours else 1)
            lease["spec"] = self._record(transitions, (spec.get("acquireTime") if ours else None) or lease_now())
            await self.kube.call(self._api.replace_namespaced_lease, LEASE_NAME, namespace, lease,
                                 _request_timeout=self._timeout())
            self._won(namespace, claim, now, previous=holder)
            return True
        except ApiException as exc:
            if exc.status in (404, 409):  # created, replaced or deleted by another writer meanwhile
                return False
            raise

    def _record(self, transitions: int, acquired: str) -> dict[str, Any]:
        # Rounded up: another shard waits at least as long as this one counts on.
        return lease_record(self.shard, self.duration, transitions, acquired)

    # -- outcomes --------------------------------------------------------------------------------

    def _claimed_by(self, namespace: str, holder: str) -> str:
        return (f"namespace {namespace} is claimed by the shard {holder} (kubectl -n {namespace} get lease "
                f"{LEASE_NAME}): this shard ({self.shard}) does not act on its Pipelines. Two operators must "
                f"not watch one namespace: remove {namespace} from one of them, or, to move it to this one, "
                f"stop {holder} watching it, then kubectl -n {namespace} delete lease {LEASE_NAME}")

    def _won(self, namespace: str, claim: _Claim, when: float, previous: str | None) -> None:
        if not claim.held:
            if previous is None:
                log.info("namespace claims: %s claims namespace %s (Lease %s/%s)", self.shard, namespace,
                         namespace, LEASE_NAME)
            elif previous == self.shard:  # a new leader of this shard, or a renewal after an outage
                log.info("namespace claims: %s holds its claim on namespace %s (Lease %s/%s)", self.shard,
                         namespace, namespace, LEASE_NAME)
            else:
                log.warning("namespace claims: %s took over the claim on namespace %s from the shard %s, which had "
                            "not renewed it for %.1f s", self.shard, namespace, previous, when - claim.observed_at)
        claim.held, claim.renewed_at, claim.refusal = True, when, None

    def _refuse(self, namespace: str, claim: _Claim, holder: str | None, why: str) -> None:
        if claim.held and holder is not None:
            log.error("namespace claims: the claim of %s on namespace %s was taken by the shard %s (kubectl -n %s "
                      "get lease %s): this shard stops acting on its Pipelines now. Two operators must not watch "
                      "one namespace: remove %s from one of them", self.shard, namespace, holder, namespace,
                      LEASE_NAME, namespace)
        elif why != claim.refusal:
            log.error("namespace claims: %s", why)
        claim.held, claim.refusal = False, why

    def _unanswered(self, namespace: str, claim: _Claim, why: str) -> None:
        if claim.held and time.monotonic() - claim.renewed_at >= self.renew_deadline:
            log.error("namespace claims: the claim on namespace %s was not renewed within %g s (%s): this shard "
                      "stops acting on its Pipelines until it is renewed, before another shard may take it over",
                      namespace, self.renew_deadline, why)
            claim.held = False
        elif not claim.failing:
            if claim.held:
                log.warning("namespace claims: the claim on namespace %s could not be renewed (%s); this shard "
                            "keeps acting there until %g s after its last renewal, and retries", namespace, why,
                            self.renew_deadline)
            else:
                log.warning("namespace claims: namespace %s could not be claimed (%s); this shard does not act "
                            "there until it is, and retries every %g s", namespace, why, self.period)
        claim.failing = True


__all__ = ["CLAIM_LEASE_DURATIONS", "LEASE_NAME", "NamespaceClaims"]
