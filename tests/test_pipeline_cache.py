"""The watch-fed cache of Pipelines (pipeline_operator/controller/pipeline_cache.py): what a replica serves of the
Pipelines its own loops do not hold, and that it keeps no second copy of those its loops do."""

from __future__ import annotations

import asyncio
from typing import Any

import kubernetes
import pytest

from pipeline_operator.controller.pipeline_cache import PipelineCache, PipelineWatch, ServedPipelines
from pipeline_operator.kube.client import KubeClient
from pipeline_operator.models import API_GROUP, PLURAL
from pipeline_operator.reconcile.services import PipelineRegistry
from pipeline_operator.reconcile.spec import key_of

from .test_operator_lifecycle import spec


def pipeline(name: str, rv: int, uid: str = "u-1", status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": name, "uid": uid, "resourceVersion": str(rv)},
            "spec": {"program": {"sql": "CREATE TABLE t (x INT);"}}, "status": status or {}}


class Loop:
    """What the API needs of a monitoring loop: its key and newest object."""

    def __init__(self, obj: dict[str, Any]) -> None:
        self.key = key_of(obj)
        self.obj: dict[str, Any] | None = obj


def test_a_pipeline_the_loops_hold_is_served_from_the_loop_and_not_kept_twice():
    loops: dict[tuple[str, str], Loop] = {}
    cache = PipelineCache(monitored=lambda ns, name: (ns, name) in loops)
    cache.on_change("ADDED", pipeline("a", 1))
    cache.on_change("ADDED", pipeline("b", 1, uid="u-2"))
    assert cache.get("ns", "a").obj["metadata"]["resourceVersion"] == "1"

    loops[("ns", "a")] = Loop(pipeline("a", 1))
    cache.loop_started("ns", "a")  # a loop starts (Kopf's daemon, also after a takeover)
    assert cache.get("ns", "a") is None  # dropped: the loop holds it
    cache.on_change("MODIFIED", pipeline("a", 2))  # the loop's status write, as the watch delivers it
    assert cache.get("ns", "a") is None
    cache.on_change("MODIFIED", pipeline("a", 3))
    assert cache.get("ns", "a") is None
    assert cache.get("ns", "b").obj["metadata"]["resourceVersion"] == "1"  # not held by a loop: kept

    loops[("ns", "a")].obj = pipeline("a", 2)
    registry = PipelineRegistry()
    registry.add(loops[("ns", "a")])  # type: ignore[arg-type]
    served = ServedPipelines(registry, cache)
    assert served.get("ns", "a") is loops[("ns", "a")]
    assert sorted((p.key.name, p.obj["metadata"]["resourceVersion"]) for p in served.all()) == [("a", "2"), ("b", "1")]


def test_when_the_loop_ends_the_cache_keeps_its_newest_version_while_the_watch_holds_the_pipeline():
    loops: dict[tuple[str, str], Loop] = {}
    cache = PipelineCache(monitored=lambda ns, name: (ns, name) in loops)
    loops[("ns", "a")] = loop = Loop(pipeline("a", 5, status={"deploymentStatus": "Stopping"}))
    cache.on_change("ADDED", pipeline("a", 4))
    assert cache.get("ns", "a") is None

    del loops[("ns", "a")]  # the loop ended (the Pipeline is being deleted)
    cache.loop_ended(loop.obj, {"metadata": {"name": "a", "namespace": "ns", "uid": "u-1", "resourceVersion": "4"}})
    kept = cache.get("ns", "a")
    assert kept is not None and kept.obj["metadata"]["resourceVersion"] == "5"
    assert kept.state is not None

    # Gone from the watch (or a new Pipeline of that name): nothing is kept of the old one.
    cache.on_change("DELETED", pipeline("a", 6))
    cache.loop_ended(loop.obj, None)
    assert cache.get("ns", "a") is None
    cache.loop_ended(loop.obj, {"metadata": {"name": "a", "namespace": "ns", "uid": "u-other"}})
    assert cache.get("ns", "a") is None


def test_an_answer_waiting_on_the_cache_when_a_loop_takes_the_pipeline_still_sees_the_change():
    async def main() -> None:
        loops: dict[tuple[str, str], Loop] = {}
        cache = PipelineCache(monitored=lambda ns, name: (ns, name) in loops)
        cache.on_change("ADDED", pipeline("a", 1))
        cached = cache.get("ns", "a")
        waiter = asyncio.ensure_future(cached.wait_until(
            lambda obj, state: obj["metadata"]["resourceVersion"] == "2", timeout=10))
        await asyncio.sleep(0)
        assert cached.waiting == 1
        loops[("ns", "a")] = Loop(pipeline("a", 2))
        cache.loop_started("ns", "a")
        assert cache.get("ns", "a") is cached  # kept for the answer waiting on it
        cache.on_change("MODIFIED", pipeline("a", 2))
        assert await waiter is True
        assert cached.waiting == 0
        cache.on_change("MODIFIED", pipeline("a", 3))  # nobody waits any more: dropped
        assert cache.get("ns", "a") is None
    asyncio.run(main())


@pytest.mark.apiserver
def test_once_kopf_has_listed_the_pipelines_its_watch_feeds_the_cache_and_the_replicas_own_watch_stops(
        pipelines, namespace, cluster):
    """The handover of :class:`PipelineWatch` (the real API server; Kopf's stream stood in for by the calls its
    follower gets): from Kopf's listing on, the informer's events are not heard; what Kopf's listing does not
    hold is gone; then the informer stops, and the leader runs one watch of the Pipelines."""
    kept = pipelines.create("kept", spec())
    pipelines.create("gone", spec())

    async def main() -> None:
        configuration = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(str(cluster.kubeconfig), client_configuration=configuration)
        kube = KubeClient(configuration, workers=2)
        watch = PipelineWatch(kube, [namespace], PipelineCache())
        try:
            await watch.start()
            await asyncio.wait_for(watch.wait_synced(), 30)
            assert watch.cache.get(namespace, "kept") and watch.cache.get(namespace, "gone")
            informer = watch.informer
            assert informer is not None and watch.watches == 1

            watch.listing(API_GROUP, PLURAL, namespace)  # Kopf starts listing
            await asyncio.to_thread(pipelines.delete, "gone")
            for _ in range(200):  # the informer hears of it, and is not listened to any more
                if informer.get(namespace, "gone") is None:
                    break
                await asyncio.sleep(0.05)
            assert informer.get(namespace, "gone") is None
            assert watch.cache.get(namespace, "gone") is not None and watch.watches == 2
            watch.event(API_GROUP, PLURAL, namespace, None, kept)  # Kopf's listing holds "kept" only
            watch.listed(API_GROUP, PLURAL, namespace)
            assert watch.cache.get(namespace, "gone") is None and watch.cache.get(namespace, "kept") is not None
            assert watch.uids() == {kept["metadata"]["uid"]}
            assert watch.informer is None and watch.watches == 1
            for _ in range(200):
                if not informer.threads_alive:
                    break
                await asyncio.sleep(0.05)
            assert not informer.threads_alive  # one watch of the Pipelines: Kopf's

            watch.event(API_GROUP, PLURAL, namespace, "DELETED", kept)  # Kopf's watch goes on feeding it
            assert watch.cache.get(namespace, "kept") is None and not watch.uids()
            watch.event("other.group", "others", namespace, "ADDED", kept)  # Kopf's watch of another resource
            assert watch.cache.get(namespace, "kept") is None
        finally:
            await watch.stop()
            await kube.close()
    asyncio.run(main())
