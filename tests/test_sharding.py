"""Namespace sharding: installations (shards) claim the namespaces they act on with the Lease
``pipeline-operator-shard`` in each, on the real API server. The claims themselves (disjoint sets,
an overlap refused with a message naming the holder, take-over only after expiry by the taker's own
clock, a failover within a shard keeps its claims, every write guarded by the Lease's
resourceVersion, lazy claims for ``--all-namespaces``, a claim taken away or not renewed in time),
then two operators end to end."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import kubernetes
import pytest

from pipeline_operator.kube.client import KubeClient
from pipeline_operator.kube.shards import LEASE_NAME, NamespaceClaims
from pipeline_operator.settings import OperatorSettings

from .operator_harness import Pipelines, wait_for
from .test_leader_election import LEASE_ARGS, kube_for, readyz
from .test_operator_lifecycle import spec

apiserver = pytest.mark.apiserver
DURATION = 3.0  # seconds a claim lasts in these tests: renewed every 1 s, acting stops 2 s after the last renewal


def claim_of(cluster, namespace: str) -> dict | None:
    found = cluster.kubectl("get", "lease", LEASE_NAME, "-n", namespace, "-o", "json", check=False)
    return json.loads(found.stdout)["spec"] if found.returncode == 0 else None


async def until(what: str, probe: Callable[[], bool]) -> None:
    """Await (letting the claims' tasks run) until ``probe`` holds, for at most 15 s."""
    deadline = time.monotonic() + 15
    while not probe():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


@pytest.fixture
def more_namespaces(cluster, namespace):
    """``more_namespaces(n)``: n fresh namespaces named after the test's own."""
    counter = iter(range(1, 1000))

    def make(count: int) -> list[str]:
        names = [f"{namespace[:55]}-{next(counter)}" for _ in range(count)]
        for name in names:
            cluster.kubectl("create", "namespace", name)
        return names
    return make


def test_the_shard_is_the_lease_namespace_and_id_and_claims_follow_leader_election():
    settings = OperatorSettings(namespaces=["a"], leader_election=True, leader_election_namespace="ops-1",
                                leader_election_id="shard-a")
    assert settings.shard() == "ops-1/shard-a"
    assert settings.model_copy(update={"shard_claims": False}).shard() is None
    assert settings.model_copy(update={"leader_election": False}).shard() is None


@apiserver
def test_shards_with_disjoint_namespaces_each_claim_their_own(cluster, more_namespaces):
    a1, a2, b1 = more_namespaces(3)

    async def scenario() -> None:
        kubes = [kube_for(cluster), kube_for(cluster)]
        a = NamespaceClaims(kubes[0], "ops/shard-a", duration=DURATION, namespaces=[a1, a2])
        b = NamespaceClaims(kubes[1], "ops/shard-b", duration=DURATION, namespaces=[b1])
        try:
            await asyncio.gather(a.start(), b.start())
            assert [await a.allowed(a1), await a.allowed(a2), await b.allowed(b1)] == [True, True, True]
            assert a.refused() == {} and b.refused() == {}
            for ns, shard in ((a1, "ops/shard-a"), (a2, "ops/shard-a"), (b1, "ops/shard-b")):
                record = claim_of(cluster, ns)
                assert record["holderIdentity"] == shard and record["leaseDurationSeconds"] == 3, record
            # Both renew for longer than a claim lasts; neither loses anything.
            runners = [asyncio.create_task(a.run()), asyncio.create_task(b.run())]
            await asyncio.sleep(DURATION + 1)
            assert a.holds(a1) and a.holds(a2) and b.holds(b1)
            assert not any(r.done() for r in runners)
            await asyncio.gather(a.stop(), b.stop())
            assert all(r.done() for r in runners)
        finally:
            for k in kubes:
                await k.close()
    asyncio.run(scenario())


@apiserver
def test_an_overlapping_shard_is_refused_with_a_message_naming_the_holder(cluster, more_namespaces, caplog):
    shared, own = more_namespaces(2)

    async def scenario() -> None:
        kubes = [kube_for(cluster), kube_for(cluster)]
        a = NamespaceClaims(kubes[0], "ops/shard-a", duration=DURATION, namespaces=[shared])
        b = NamespaceClaims(kubes[1], "ops/shard-b", duration=DURATION, namespaces=[shared, own])
        try:
            await a.start()
            with caplog.at_level(logging.INFO, logger="pipeline_operator.kube.shards"):
                await b.start()
                assert not await b.allowed(shared) and await b.allowed(own)
                # Renewals and retries for longer than the claim lasts: the holder keeps it, and the
                # refusal is logged once, not at every retry.
                runners = [asyncio.create_task(a.run()), asyncio.create_task(b.run())]
                await asyncio.sleep(DURATION + 1.5)
                await asyncio.gather(a.stop(), b.stop())
            assert all(r.done() for r in runners)
            assert a.holds(shared) is False  # stopped: it acts no more, though its claim stays
            assert claim_of(cluster, shared)["holderIdentity"] == "ops/shard-a"
            assert list(b.refused()) == [shared]
            message = b.refused()[shared]
            assert f"namespace {shared} is claimed by the shard ops/shard-a" in message
            assert f"kubectl -n {shared} get lease {LEASE_NAME}" in message
            assert "this shard (ops/shard-b) does not act on its Pipelines" in message
            errors = [r for r in caplog.records if r.levelno == logging.ERROR]
            assert [r.getMessage() for r in errors] == [f"namespace claims: {message}"]
        finally:
            for k in kubes:
                await k.close()
    asyncio.run(scenario())


@apiserver
def test_a_claim_not_renewed_is_taken_over_only_after_its_duration_by_the_takers_clock(cluster, more_namespaces,
                                                                                      caplog):
    (ns,) = more_namespaces(1)

    async def scenario() -> None:
        kubes = [kube_for(cluster), kube_for(cluster)]
        a = NamespaceClaims(kubes[0], "ops/shard-a", duration=DURATION, namespaces=[ns])
        b = NamespaceClaims(kubes[1], "ops/shard-b", duration=DURATION, namespaces=[ns])
        try:
            await a.start()
            assert a.holds(ns)
            # shard-a's leader is gone (killed: no renewal, no release). shard-b first sees the claim now
            # and times it from this moment, whatever renewTime says.
            await b.start()
            seen_at = time.monotonic()
            assert not b.holds(ns)
            taking = asyncio.create_task(b.run())
            await until("shard-b to take the claim over", lambda: b.holds(ns))
            waited = time.monotonic() - seen_at
            assert DURATION - 0.1 <= waited < DURATION + b.period + 1, waited
            record = claim_of(cluster, ns)
            assert record["holderIdentity"] == "ops/shard-b" and record["leaseTransitions"] == 1
            assert b.refused() == {}

            # shard-a comes back: its claim is gone, and it says so in one ERROR line.
            caplog.clear()
            with caplog.at_level(logging.ERROR, logger="pipeline_operator.kube.shards"):
                renewing = asyncio.create_task(a.run())
                await until("shard-a to find its claim taken", lambda: ns in a.refused())
            assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [
                f"namespace claims: the claim of ops/shard-a on namespace {ns} was taken by the shard ops/shard-b "
                f"(kubectl -n {ns} get lease {LEASE_NAME}): this shard stops acting on its Pipelines now. Two "
                f"operators must not watch one namespace: remove {ns} from one of them"]
            assert "claimed by the shard ops/shard-b" in a.refused()[ns]
            await asyncio.sleep(DURATION + 1)  # shard-b renews: shard-a never takes it back
            assert b.holds(ns) and not a.holds(ns)
            assert claim_of(cluster, ns)["holderIdentity"] == "ops/shard-b"
            await asyncio.gather(a.stop(), b.stop())
            assert taking.done() and renewing.done()
        finally:
            for k in kubes:
                await k.close()
    asyncio.run(scenario())


@apiserver
def test_a_new_leader_of_the_same_shard_keeps_its_claims_at_once(cluster, more_namespaces):
    (ns,) = more_namespaces(1)

    async def scenario() -> None:
        kubes = [kube_for(cluster), kube_for(cluster)]
        first = NamespaceClaims(kubes[0], "ops/shard-a", duration=30, namespaces=[ns])
        try:
            await first.start()
            before = claim_of(cluster, ns)
            # The leader is killed; the shard's standby leads now and starts its claims: the claim names
            # the shard, not the pod, so it is renewed at once instead of waited out.
            successor = NamespaceClaims(kubes[1], "ops/shard-a", duration=30, namespaces=[ns])
            started = time.monotonic()
            await successor.start()
            assert await successor.allowed(ns) and time.monotonic() - started < 2
            after = claim_of(cluster, ns)
            assert after["leaseTransitions"] == before["leaseTransitions"] == 0
            assert after["acquireTime"] == before["acquireTime"] and after["renewTime"] != before["renewTime"]
        finally:
            for k in kubes:
                await k.close()
    asyncio.run(scenario())


class InterposedKube(KubeClient):
    """A client that runs ``before_replace`` (in a thread) just before its first Lease replace is sent:
    another writer changing the Lease between this shard's read and its write."""

    def __init__(self, configuration, before_replace) -> None:
        super().__init__(configuration, workers=2)
        self.before_replace = before_replace

    async def call(self, fn, *args, **kwargs):
        if getattr(fn, "__name__", "") == "replace_namespaced_lease" and self.before_replace is not None:
            interpose, self.before_replace = self.before_replace, None
            await asyncio.to_thread(interpose)
        return await super().call(fn, *args, **kwargs)


@apiserver
def test_claims_are_written_against_the_resource_version_read(cluster, more_namespaces):
    racing, taken = more_namespaces(2)

    def renew_as_shard_a(ns: str) -> None:
        now = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
        cluster.kubectl("patch", "lease", LEASE_NAME, "-n", ns, "--type=merge", "-p",
                        json.dumps({"spec": {"renewTime": now}}))

    async def scenario() -> None:
        configuration = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(str(cluster.kubeconfig), client_configuration=configuration)
        kubes = [kube_for(cluster), kube_for(cluster), kube_for(cluster)]
        try:
            # Two shards create the same claim at once: one create wins, the other reads the winner's.
            a = NamespaceClaims(kubes[0], "ops/shard-a", duration=DURATION, namespaces=[racing])
            b = NamespaceClaims(kubes[1], "ops/shard-b", duration=DURATION, namespaces=[racing])
            await asyncio.gather(a.start(), b.start())
            winner, loser = (a, b) if a.holds(racing) else (b, a)
            assert winner.holds(racing) and not loser.holds(racing)
            assert claim_of(cluster, racing)["holderIdentity"] == winner.shard
            assert f"claimed by the shard {winner.shard}" in loser.refused()[racing]

            # shard-b takes over an expired claim, but shard-a renews it between shard-b's read and its
            # write: shard-b's write fails on the resourceVersion, it reads the renewed claim and backs off.
            shard_a = NamespaceClaims(kubes[2], "ops/shard-a", duration=DURATION, namespaces=[taken])
            await shard_a.start()
            shard_b = NamespaceClaims(InterposedKube(configuration, lambda: renew_as_shard_a(taken)), "ops/shard-b",
                                      duration=DURATION, namespaces=[taken])
            kubes.append(shard_b.kube)
            await shard_b.start()
            assert not shard_b.holds(taken)
            runner = asyncio.create_task(shard_b.run())  # it tries to take over once the claim has expired
            interposed = time.monotonic()
            await until("shard-b's write", lambda: shard_b.kube.before_replace is None)
            assert time.monotonic() - interposed >= DURATION - 0.5  # not before the claim expired by its clock
            await asyncio.sleep(0.5)  # its write went out right after the renewal, and failed
            assert not shard_b.holds(taken)
            assert claim_of(cluster, taken)["holderIdentity"] == "ops/shard-a"
            assert "claimed by the shard ops/shard-a" in shard_b.refused()[taken]
            await shard_b.stop()
            assert runner.done()
        finally:
            for k in kubes:
                await k.close()
    asyncio.run(scenario())


@apiserver
def test_all_namespaces_claims_a_namespace_the_first_time_it_is_asked(cluster, more_namespaces, caplog):
    (ns,) = more_namespaces(1)

    async def scenario() -> None:
        kube = kube_for(cluster)
        claims = NamespaceClaims(kube, "ops/everywhere", duration=DURATION, namespaces=None)
        try:
            await claims.start()
            assert claim_of(cluster, ns) is None and not claims.holds(ns)
            with caplog.at_level(logging.INFO, logger="pipeline_operator.kube.shards"):
                answers = await asyncio.gather(*(claims.allowed(ns) for _ in range(8)))  # eight Pipelines at once
            assert answers == [True] * 8
            record = claim_of(cluster, ns)
            assert record["holderIdentity"] == "ops/everywhere" and record["leaseTransitions"] == 0
            assert [r.getMessage() for r in caplog.records] == [
                f"namespace claims: ops/everywhere claims namespace {ns} (Lease {ns}/{LEASE_NAME})"]
        finally:
            await kube.close()
    asyncio.run(scenario())


@apiserver
def test_a_claim_overwritten_by_another_shard_stops_the_holder_and_a_deleted_one_is_claimed_again(
        cluster, more_namespaces):
    (ns,) = more_namespaces(1)

    def overwrite() -> bool:  # another shard's write, guarded by resourceVersion as a real one is: retried
        current = cluster.get("lease", LEASE_NAME, ns)
        current["spec"]["holderIdentity"] = "ops/intruder"
        current["spec"]["renewTime"] = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
        return cluster.kubectl("replace", "-f", "-", input=json.dumps(current), check=False).returncode == 0

    async def scenario() -> None:
        kube = kube_for(cluster)
        claims = NamespaceClaims(kube, "ops/shard-a", duration=DURATION, namespaces=[ns])
        try:
            await claims.start()
            runner = asyncio.create_task(claims.run())
            await asyncio.to_thread(wait_for, "the claim overwritten", overwrite, 15, 0.05)
            await until("the holder to stop acting", lambda: not claims.holds(ns))
            assert "claimed by the shard ops/intruder" in claims.refused()[ns]
            # The administrator deletes the claim (the way to release a namespace): it is free, and this
            # shard, which still watches the namespace, claims it at its next try.
            cluster.kubectl("delete", "lease", LEASE_NAME, "-n", ns)
            await until("the namespace claimed again", lambda: claims.holds(ns))
            assert claim_of(cluster, ns)["holderIdentity"] == "ops/shard-a" and claims.refused() == {}
            await claims.stop()
            assert runner.done()
        finally:
            await kube.close()
    asyncio.run(scenario())


@apiserver
def test_a_holder_that_cannot_renew_stops_acting_before_anyone_may_take_over(cluster, more_namespaces, caplog):
    (ns,) = more_namespaces(1)

    async def scenario() -> None:
        kube = kube_for(cluster)
        claims = NamespaceClaims(kube, "ops/shard-a", duration=DURATION, namespaces=[ns])
        try:
            await claims.start()
            renewed = claim_of(cluster, ns)["renewTime"]
            runner = asyncio.create_task(claims.run())
            # A renewal, then the API is cut off.
            await asyncio.to_thread(wait_for, "a renewal", lambda: claim_of(cluster, ns)["renewTime"] != renewed, 10,
                                    0.05)
            cut_at = time.monotonic()
            kube.fence("testing")  # every call fails before it is sent, like an unreachable API server
            with caplog.at_level(logging.ERROR, logger="pipeline_operator.kube.shards"):
                await until("the holder to stop acting", lambda: not claims.holds(ns))
            stopped_after = time.monotonic() - cut_at
            # Within the renew deadline (2 s after the last renewal), before the claim's 3 s could have
            # passed for anyone else.
            assert stopped_after < claims.renew_deadline < DURATION, stopped_after
            assert claims.refused() == {}  # not refused: nobody else holds it
            await asyncio.sleep(claims.period + 0.5)
            errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
            assert len(errors) == 1 and errors[0].startswith(
                f"namespace claims: the claim on namespace {ns} was not renewed within 2 s"), errors
            await claims.stop()
            assert runner.done()
        finally:
            await kube.close()
    asyncio.run(scenario())


@apiserver
def test_a_shard_without_rbac_for_leases_refuses_the_namespace_and_says_what_is_missing(cluster, more_namespaces):
    (ns,) = more_namespaces(1)

    async def scenario() -> None:
        configuration = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(str(cluster.plane.kubeconfig_for("bob")),
                                           client_configuration=configuration)
        kube = KubeClient(configuration, workers=2)
        claims = NamespaceClaims(kube, "ops/shard-a", duration=DURATION, namespaces=[ns])
        try:
            await claims.start()
            assert not await claims.allowed(ns)
            assert claims.refused()[ns].startswith(
                f"the operator may not read or write the Lease {ns}/{LEASE_NAME} (Forbidden): its RBAC needs get, "
                f"create and update on coordination.k8s.io leases in {ns}")
        finally:
            await kube.close()
    asyncio.run(scenario())


# --- two operators end to end ---------------------------------------------------------------------

def shard(operators, tmp_path: Path, lease_namespace: str, name: str, watched: list[str]):
    """One installation: an operator leading the Lease ``lease_namespace/name`` and watching ``watched``,
    writing as the field manager ``name``."""
    args = ["--leader-election", "--leader-election-namespace", lease_namespace, "--leader-election-id", name,
            "--operator-name", name, *LEASE_ARGS]
    for ns in watched[1:]:
        args += ["--namespace", ns]
    return operators(watched[0], *args, state_dir=tmp_path / name, process=True)  # several at once, killed


def managers(pipelines: Pipelines, name: str) -> set[str]:
    """The field managers that wrote the Pipeline (each shard writes as its --operator-name)."""
    shown = pipelines.cluster.kubectl("get", "pipeline", name, "-n", pipelines.namespace, "-o", "json",
                                      "--show-managed-fields")
    return {entry["manager"] for entry in json.loads(shown.stdout)["metadata"].get("managedFields") or []}


@apiserver
def test_two_operators_on_disjoint_namespaces_each_reconcile_their_own(operators, crd_installed, namespace,
                                                                       more_namespaces, tmp_path):
    a1, b1, b2 = more_namespaces(3)
    op_a = shard(operators, tmp_path, namespace, "shard-a", [a1])
    op_b = shard(operators, tmp_path, namespace, "shard-b", [b1, b2])
    by_namespace = {a1: ("shard-a", op_a), b1: ("shard-b", op_b), b2: ("shard-b", op_b)}
    for ns, (_, op) in by_namespace.items():
        pipelines = Pipelines(crd_installed, ns)
        pipelines.create("orders", spec())
        pipelines.wait_status("orders", op, deploymentStatus="Running", timeout=90)
    for ns, (name, _) in by_namespace.items():
        assert claim_of(crd_installed, ns)["holderIdentity"] == f"{namespace}/{name}"
        assert managers(Pipelines(crd_installed, ns), "orders") & {"shard-a", "shard-b"} == {name}
    assert readyz(op_a)[0] == 200 and readyz(op_b)[0] == 200


@apiserver
def test_an_operator_overlapping_another_leaves_its_namespace_alone_and_says_so(operators, crd_installed, namespace,
                                                                               more_namespaces, tmp_path):
    shared, own = more_namespaces(2)
    first = shard(operators, tmp_path, namespace, "shard-a", [shared])
    in_shared, in_own = Pipelines(crd_installed, shared), Pipelines(crd_installed, own)
    in_shared.create("orders", spec())
    in_shared.wait_status("orders", first, deploymentStatus="Running", timeout=90)
    assert claim_of(crd_installed, shared)["holderIdentity"] == f"{namespace}/shard-a"

    second = shard(operators, tmp_path, namespace, "shard-b", [shared, own])
    in_own.create("orders", spec())
    in_own.wait_status("orders", second, deploymentStatus="Running", timeout=90)  # it runs, and acts where it may
    refusal = f"namespace {shared} is claimed by the shard {namespace}/shard-a"
    wait_for("the refusal in the log", lambda: refusal in second.log(), operator=second)
    code, body = readyz(second)
    assert code == 503 and refusal in json.dumps(body), (code, body)

    # After the second operator has surely looked (a later pass of its own Pipeline), the first's
    # Pipeline still has one writer: the first operator, which still reconciles it.
    in_own.a_later_pass("orders", second)
    status = in_shared.a_later_pass("orders", first)
    assert status["deploymentStatus"] == "Running"
    assert "shard-b" not in managers(in_shared, "orders")
    assert f"{shared}/orders" not in second.log()
    assert claim_of(crd_installed, shared)["holderIdentity"] == f"{namespace}/shard-a"
    first.assert_alive()
    second.assert_alive()
