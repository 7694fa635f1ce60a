"""The watch-fed cache of Pipelines (pipeline_operator/controller/pipeline_cache.py): what a replica serves of the
Pipelines its own loops do not hold, and that it keeps no second copy of those its loops do."""

from __future__ import annotations

import asyncio
from typing import Any

from pipeline_operator.controller.pipeline_cache import PipelineCache, ServedPipelines
from pipeline_operator.reconcile.services import PipelineRegistry
from pipeline_operator.reconcile.spec import key_of


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

