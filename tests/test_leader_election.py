"""Leader election with a coordination.k8s.io Lease on the real API server: the elector itself
(one winner among candidates, standing by, release, expiry by the standby's own clock, losing the
Lease), and operators as replicas (`--leader-election`): one reconciles, the other stands by
(not ready) and takes over when the leader is killed, stopped or loses the Lease."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import signal
import threading
import time
import urllib.error
import urllib.request

import pytest
from kubernetes.client.exceptions import ApiException

from pipeline_operator.controller.registry import KeepRetrying
from pipeline_operator.kube import client as kube_module
from pipeline_operator.kube.client import Fenced, KubeClient, Unavailable
from pipeline_operator.kube.leader import LeaderElector, LeaseTiming, lease_now, lease_record

from .operator_harness import wait_for
from .test_operator_lifecycle import FAST_PIPELINE, SQL
from .test_status_http import listening

pytestmark = pytest.mark.apiserver
FAST_LEASE = LeaseTiming(duration=3.0, renew_deadline=2.0, retry_period=0.25)


def kube_for(cluster) -> KubeClient:
    import kubernetes
    configuration = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(str(cluster.kubeconfig), client_configuration=configuration)
    return KubeClient(configuration, workers=2)


def lease(cluster, namespace: str, name: str = "pipeline-operator") -> dict:
    return cluster.get("lease", name, namespace)


def test_timing_is_checked():
    with pytest.raises(ValueError, match="retry period < renew deadline < lease duration"):
        LeaseTiming(duration=5, renew_deadline=5, retry_period=1)


def test_one_candidate_wins_the_others_stand_by_and_take_over_after_release_or_expiry(cluster, namespace):
    async def scenario() -> None:
        kubes = [kube_for(cluster) for _ in range(4)]
        electors = [LeaderElector(k, namespace, "pipeline-operator", f"candidate-{i}", FAST_LEASE)
                    for i, k in enumerate(kubes)]
        try:
            results = await asyncio.gather(*(e.try_acquire_or_renew() for e in electors))
            assert sum(results) == 1, results  # one write wins, whatever the race
            leader = electors[results.index(True)]
            others = [e for e in electors if e is not leader]
            record = lease(cluster, namespace)["spec"]
            assert record["holderIdentity"] == leader.identity and record["leaseDurationSeconds"] == 3
            assert record["leaseTransitions"] == 0

            # Standing by while the leader renews: nobody else gets it, for longer than the lease lasts.
            holding = asyncio.create_task(leader.hold())
            stop = asyncio.Event()
            asyncio.get_running_loop().call_later(4.5, stop.set)
            assert not any(await asyncio.gather(*(e.acquire(stop) for e in others)))
            assert all(e.holder == leader.identity for e in others) and not holding.done()

            # The leader releases it (stopping on its own): a standby takes it at its next try.
            holding.cancel()
            await leader.release()
            assert lease(cluster, namespace)["spec"].get("holderIdentity") is None
            started = time.monotonic()
            second = others[0]
            assert await second.acquire(asyncio.Event())
            assert time.monotonic() - started < 1.0
            assert lease(cluster, namespace)["spec"]["leaseTransitions"] == 1

            # The new leader stops renewing (killed): a standby waits out the lease duration by its own
            # clock, from the moment it saw the last renewal, then takes over.
            third = others[1]
            assert not await third.try_acquire_or_renew()
            seen_at = time.monotonic()
            assert await third.acquire(asyncio.Event())
            waited = time.monotonic() - seen_at
            assert FAST_LEASE.duration - 0.3 <= waited < FAST_LEASE.duration + 2, waited
            assert lease(cluster, namespace)["spec"]["holderIdentity"] == third.identity

            # The old leader, back, can neither renew nor take it, and knows it lost the leadership.
            assert not await second.try_acquire_or_renew() and second.holder == third.identity
            reason = await asyncio.wait_for(second.hold(), FAST_LEASE.renew_deadline + 3)
            assert reason == f"the Lease {namespace}/pipeline-operator was not renewed within 2 s"
            assert not second.is_leader
        finally:
            for k in kubes:
                await k.close()
    asyncio.run(scenario())


def test_a_leader_that_cannot_renew_gives_up_within_the_renew_deadline(cluster, namespace):
    async def scenario() -> None:
        kube = kube_for(cluster)
        elector = LeaderElector(kube, namespace, "lost", "only", FAST_LEASE)
        try:
            assert await elector.try_acquire_or_renew()
            kube.fence("testing")  # every renewal now fails before it is sent, like an unreachable API server
            started = time.monotonic()
            reason = await asyncio.wait_for(elector.hold(), 10)
            assert reason == f"the Lease {namespace}/lost was not renewed within 2 s"
            # it gave up before any standby could take over (lease duration 3 s from its last renewal)
            assert time.monotonic() - started < FAST_LEASE.duration
            with pytest.raises(Fenced, match="testing"):
                await kube.call(lambda: None)
        finally:
            await kube.close()
    asyncio.run(scenario())


def test_renewals_go_on_while_the_operators_loop_is_blocked_and_a_loss_fences_at_once(cluster, namespace):
    """hold_apart renews from a thread of its own: a loop busy for longer than the Lease lasts keeps
    the leadership, and losing it calls on_lost even while that loop is still busy."""
    async def scenario() -> None:
        kube = kube_for(cluster)
        elector = LeaderElector(kube, namespace, "apart", "busy", FAST_LEASE)
        fenced: list[tuple[str, str]] = []
        try:
            assert await elector.try_acquire_or_renew()
            holding = asyncio.create_task(elector.hold_apart(
                on_lost=lambda reason: fenced.append((reason, threading.current_thread().name))))
            await asyncio.sleep(0.1)  # the thread has started
            before = lease(cluster, namespace, "apart")["spec"]["renewTime"]
            time.sleep(FAST_LEASE.duration + 1)  # noqa: ASYNC251 - the point: the loop is blocked, nothing of it runs
            record = lease(cluster, namespace, "apart")["spec"]
            assert record["holderIdentity"] == "busy" and record["renewTime"] > before, (before, record)
            assert not holding.done() and not fenced

            kube.fence("testing")  # renewals now fail, as with an unreachable API server
            time.sleep(FAST_LEASE.renew_deadline + 1)  # noqa: ASYNC251 - blocked again: the thread gives up alone
            assert fenced == [(f"the Lease {namespace}/apart was not renewed within 2 s", "leader-election")]
            assert await asyncio.wait_for(holding, 5) == fenced[0][0]
        finally:
            await kube.close()
    asyncio.run(scenario())


def test_a_renewal_that_fails_unexpectedly_is_a_lost_leadership_and_fences():
    """Nothing renews the Lease once hold() has failed: the operator must stop acting, as on a lost Lease."""
    import kubernetes

    async def scenario() -> None:
        kube = KubeClient(kubernetes.client.Configuration(), workers=1)
        elector = LeaderElector(kube, "ns", "broken", "only", FAST_LEASE)

        async def hold() -> str:
            raise RuntimeError("a bug")
        elector.hold = hold  # type: ignore[method-assign]
        fenced: list[str] = []
        try:
            reason = await asyncio.wait_for(elector.hold_apart(on_lost=fenced.append), 5)
            assert reason == "renewing the Lease ns/broken failed (RuntimeError: a bug)"
            assert fenced == [reason]
        finally:
            await kube.close()
    asyncio.run(scenario())


def test_a_leader_stopping_on_its_own_stops_renewing_before_it_releases(cluster, namespace):
    async def scenario() -> None:
        kube = kube_for(cluster)
        elector = LeaderElector(kube, namespace, "apart", "leaving", FAST_LEASE)
        try:
            assert await elector.try_acquire_or_renew()
            holding = asyncio.create_task(elector.hold_apart(on_lost=lambda reason: None))
            await asyncio.sleep(1)
            holding.cancel()  # shutdown: the operator cancels its helpers, then releases
            await elector.release()
            assert not any(t.name == "leader-election" for t in threading.enumerate())
            await asyncio.sleep(FAST_LEASE.retry_period * 2)  # no renewal comes after the release
            assert lease(cluster, namespace, "apart")["spec"].get("holderIdentity") is None
        finally:
            await kube.close()
    asyncio.run(scenario())


class SilentApiServer:
    """A stand-in for an API server that reads requests and never answers one: it counts what arrives,
    and can fence a client the moment a request does (the leader gives up while that request waits)."""

    def __init__(self, on_request=None, answer: bytes = b"") -> None:
        self.requests: list[tuple[float, str]] = []  # (monotonic time, request line)
        self.on_request = on_request
        self.answer = answer  # sent to every request, when given
        self.url = ""
        self._writers: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                await reader.readexactly(int(length.group(1)) if length else 0)
                self.requests.append((time.monotonic(), head.split(b"\r\n", 1)[0].decode()))
                if self.on_request is not None:
                    self.on_request()
                if self.answer:
                    writer.write(self.answer)

    @contextlib.asynccontextmanager
    async def serving(self):
        try:
            async with listening(self):
                yield self
        finally:
            for writer in self._writers:
                writer.close()


def silent_kube(server: SilentApiServer) -> KubeClient:
    import kubernetes
    configuration = kubernetes.client.Configuration()
    configuration.host = server.url
    return KubeClient(configuration, workers=1)


QUICK = (1.0, 0.2)  # seconds to connect, and to wait for an answer that never comes


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "POST"])
def test_a_write_that_gets_no_answer_is_never_sent_again(method, monkeypatch):
    """urllib3 retries a request whose answer did not come in time (PUT and DELETE among them) up to three
    times: a leader's write would leave again after the fence, up to several request timeouts later. A write
    is sent once."""
    import kubernetes
    monkeypatch.setattr(kube_module, "REQUEST_TIMEOUT", QUICK)

    async def scenario() -> list[tuple[float, str]]:
        async with SilentApiServer().serving() as server:
            kube = silent_kube(server)
            leases = kubernetes.client.CoordinationV1Api(kube.api_client)
            body = {"metadata": {"name": "l"}, "spec": lease_record("me", 15, 0, lease_now())}
            write = {"PUT": lambda: kube.call(leases.replace_namespaced_lease, "l", "ns", body),
                     "DELETE": lambda: kube.delete_pipeline("ns", "p"),
                     "PATCH": lambda: kube.write_status("ns", "p", "1", {}),
                     "POST": lambda: kube.call(leases.create_namespaced_lease, "ns", body)}[method]
            try:
                with pytest.raises(Unavailable, match="timed out"):
                    await write()
                await asyncio.sleep(QUICK[1] * 2)  # a retry would have come by now
                return server.requests
            finally:
                await kube.close()

    requests = asyncio.run(scenario())
    assert [line.split()[0] for _, line in requests] == [method], requests


def test_a_write_answered_try_later_is_not_sent_again():
    """urllib3 also sends a PUT or DELETE again when the answer is a 429 or 503 with Retry-After (the API
    server's priority and fairness): for a write, that answer is the answer."""
    import kubernetes
    too_many = (b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Type: application/json\r\n"
                b"Content-Length: 2\r\n\r\n{}")

    async def scenario() -> list[tuple[float, str]]:
        async with SilentApiServer(answer=too_many).serving() as server:
            kube = silent_kube(server)
            leases = kubernetes.client.CoordinationV1Api(kube.api_client)
            body = {"metadata": {"name": "l"}, "spec": lease_record("me", 15, 0, lease_now())}
            try:
                with pytest.raises(ApiException) as answer:
                    await kube.call(leases.replace_namespaced_lease, "l", "ns", body, _request_timeout=QUICK)
                assert answer.value.status == 429
                return server.requests
            finally:
                await kube.close()

    requests = asyncio.run(scenario())
    assert len(requests) == 1, requests


def test_nothing_is_sent_again_once_fenced_and_reads_are_retried_until_then(monkeypatch):
    """A read whose answer does not come is tried again (urllib3's retries: a kept-alive connection the API
    server closed is no failure), but not once the client is fenced, even in the middle of a call."""
    monkeypatch.setattr(kube_module, "REQUEST_TIMEOUT", QUICK)

    async def scenario() -> tuple[int, list[tuple[float, str]], float]:
        async with SilentApiServer().serving() as server:
            kube = silent_kube(server)
            try:
                with pytest.raises(Unavailable):
                    await kube.get_pipeline("ns", "p")
                unfenced = len(server.requests)
                server.requests.clear()
                server.on_request = lambda: kube.fence("testing")  # the leader gives up while the read waits
                with pytest.raises(Unavailable):
                    await kube.get_pipeline("ns", "p")
                fenced_at = time.monotonic()
                await asyncio.sleep(QUICK[1] * 2)
                return unfenced, server.requests, fenced_at
            finally:
                await kube.close()

    unfenced, requests, fenced_at = asyncio.run(scenario())
    assert unfenced == 4  # once, and urllib3's three retries
    assert len(requests) == 1 and requests[0][0] < fenced_at, requests


class _KopfContext:
    """What Kopf's ``request`` uses of its authenticated context: the server and an aiohttp session."""

    def __init__(self, server: str, session) -> None:
        self.server, self.session = server, session

    def add_response(self, response) -> None:
        pass


def test_no_request_of_kopfs_leaves_after_the_fence():
    """Kopf's own requests (its finalizer's and annotations' patches) retry for ever (KeepRetrying: an API
    server outage never ends the operator), each attempt after a delay: once the operator's client is fenced,
    the next attempt is not sent, nor is any new request."""
    import aiohttp
    import kopf
    from kopf._cogs.clients import api as kopf_api

    unavailable = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                   b"Content-Length: 2\r\n\r\n{}")
    fence: list[str] = []

    async def scenario() -> list[tuple[float, str]]:
        async with SilentApiServer(answer=unavailable, on_request=lambda: fence.append("lost")).serving() as server:
            settings = kopf.OperatorSettings()
            settings.networking.error_backoffs = KeepRetrying(fenced=lambda: fence[0] if fence else None)
            async with aiohttp.ClientSession() as session:
                context = _KopfContext(server.url, session)
                with pytest.raises(Fenced):  # after its first delay (1 s), not retried for ever
                    await asyncio.wait_for(kopf_api.request(
                        "patch", "/apis/dataflow.dev/v1alpha1/namespaces/ns/pipelines/p", payload={},
                        settings=settings, context=context, logger=logging.getLogger("kopf-request")), 10)
                with pytest.raises(Fenced):  # a new request after the fence
                    await kopf_api.request("get", "/api", settings=settings, context=context,
                                           logger=logging.getLogger("kopf-request"))
            return server.requests

    requests = asyncio.run(scenario())
    assert [line.split()[0] for _, line in requests] == ["PATCH"], requests


def test_kopfs_delays_never_run_out_before_a_fence():
    delays = iter(KeepRetrying())
    assert [next(delays) for _ in range(10)] == [1, 1, 2, 3, 5, 8, 10.0, 10.0, 10.0, 10.0]


def test_the_written_lease_duration_is_rounded_up():
    """leaseDurationSeconds is a whole number: a standby must not wait less than the leader's duration (a
    shorter wait eats into the margin between the leader's renew deadline and the Lease's end)."""
    import kubernetes
    assert lease_record("me", 10.2, 0, lease_now())["leaseDurationSeconds"] == 11
    assert lease_record("me", 15, 0, lease_now())["leaseDurationSeconds"] == 15
    assert lease_record("me", 0.3, 0, lease_now())["leaseDurationSeconds"] == 1
    kube = KubeClient(kubernetes.client.Configuration(), workers=1)
    try:
        elector = LeaderElector(kube, "ns", "l", "me", LeaseTiming(duration=10.4, renew_deadline=10.0,
                                                                   retry_period=2.0))
        assert elector._record("me", 0, lease_now())["leaseDurationSeconds"] == 11
    finally:
        asyncio.run(kube.close())


# --- operators as replicas ------------------------------------------------------------------------

LEASE_ARGS = ["--lease-duration", "3", "--lease-renew-deadline", "2", "--lease-retry-period", "0.25"]


def readyz(op) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"{op.api_url}/readyz", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return 0, {}


def replicas(operators, namespace: str, count: int = 2):
    args = ["--leader-election", "--leader-election-namespace", namespace, *LEASE_ARGS]
    started = [operators(namespace, *args, process=True) for _ in range(count)]  # killed, logs apart
    wait_for("a leader", lambda: [op for op in started if readyz(op)[0] == 200] or None, timeout=60)
    leader = next(op for op in started if readyz(op)[0] == 200)
    standbys = [op for op in started if op is not leader]
    for op in standbys:
        code, body = wait_for("the standby's readyz", lambda op=op: readyz(op) if readyz(op)[0] else None)
        assert code == 503 and body["message"].startswith(
            f"Standing by: another replica holds the Lease {namespace}/pipeline-operator"), body
    return leader, standbys


def test_replicas_elect_one_leader_and_the_standby_takes_over_when_it_is_killed(operators, pipelines, namespace,
                                                                                 cluster):
    leader, (standby,) = replicas(operators, namespace)
    pipelines.create("orders", {"desiredStatus": "Provisioned", "program": {"sql": SQL},
                                "deployment": {"env": FAST_PIPELINE}})
    pipelines.wait_status("orders", leader, deploymentStatus="Running", timeout=60)
    assert "watching pipelines" in leader.log() and "watching pipelines" not in standby.log()
    assert "standing by; the Lease" in standby.log()
    holder = lease(cluster, namespace)["spec"]["holderIdentity"]

    leader.kill()  # SIGKILL: no release; the standby waits the lease out
    killed_at = time.monotonic()
    wait_for("the standby to lead", lambda: readyz(standby)[0] == 200 or None, timeout=30, operator=standby)
    took_over = time.monotonic() - killed_at
    assert 2.5 < took_over < 15, took_over
    record = lease(cluster, namespace)["spec"]
    assert record["holderIdentity"] != holder and record["leaseTransitions"] >= 1
    status = pipelines.a_later_pass("orders", standby)  # the new leader writes the status
    assert status["deploymentStatus"] == "Running"
    ids = [e["eventId"] for e in status["history"]]
    assert len(ids) == len(set(ids))  # no event twice


def test_a_leader_stopped_with_sigterm_hands_over_at_once(operators, namespace, cluster):
    leader, (standby,) = replicas(operators, namespace)
    before = lease(cluster, namespace)["spec"]
    assert leader.stop(signal.SIGTERM) == 0
    exited_at = time.monotonic()
    assert "released the Lease" in leader.log()
    wait_for("the standby to lead", lambda: readyz(standby)[0] == 200 or None, timeout=30, operator=standby)
    # Released, not expired: the standby took it at a try of its own, without waiting the 3 s out.
    assert time.monotonic() - exited_at < 3.0
    record = lease(cluster, namespace)["spec"]
    assert record["leaseTransitions"] == before["leaseTransitions"] + 1
    assert record["holderIdentity"] not in (None, before["holderIdentity"])


def test_a_leader_that_loses_the_lease_stops_acting_and_exits(operators, pipelines, namespace, cluster):
    leader, (standby,) = replicas(operators, namespace)
    standby.stop(signal.SIGTERM)
    pipelines.create("orders", {"desiredStatus": "Provisioned", "program": {"sql": SQL},
                                "deployment": {"env": FAST_PIPELINE}})
    pipelines.wait_status("orders", leader, deploymentStatus="Running", timeout=60)
    # Another holder appears (a replica the leader could not reach in time, say): the leader must stop.
    def take_over() -> bool:  # a write guarded by resourceVersion, as a real candidate's is: retried on conflict
        current = lease(cluster, namespace)
        current["spec"]["holderIdentity"] = "another-replica"
        current["spec"]["renewTime"] = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
        return cluster.kubectl("replace", "-f", "-", input=json.dumps(current), check=False).returncode == 0
    wait_for("the Lease taken by another holder", take_over, timeout=15, interval=0.05)
    assert leader.proc.wait(15) == 3, leader.log()[-3000:]
    assert f"lost the leadership (the Lease {namespace}/pipeline-operator is held by another-replica)" \
        in leader.log()
    # It acted no more: the Pipeline's status is not written after it exited.
    before = pipelines.get("orders")["metadata"]["resourceVersion"]
    time.sleep(2)
    assert pipelines.get("orders")["metadata"]["resourceVersion"] == before
