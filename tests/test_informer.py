"""The list+watch cache (pipeline_operator/kube/informer.py) against the real API server."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from pipeline_operator.kube.informer import ADDED, DELETED, MODIFIED, Informer
from pipeline_operator.kube.projection import SHARED, names_and_versions, projection
from pipeline_operator_dev import controlplane

pytestmark = pytest.mark.apiserver
SELECTOR = "app.kubernetes.io/managed-by=informer-test"


@pytest.fixture(scope="module")
def own_plane(binaries) -> Iterator[controlplane.ControlPlane]:
    """A control plane of this module's own: these tests stop its API server."""
    plane = controlplane.ControlPlane(binaries).start()
    try:
        yield plane
    finally:
        plane.stop()


def client_for(kubeconfig: Path) -> kubernetes.client.ApiClient:
    configuration = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(str(kubeconfig), client_configuration=configuration)
    return kubernetes.client.ApiClient(configuration)


def configmap(name: str, namespace: str | None = None, labelled: bool = True, **data: str) -> dict[str, Any]:
    labels = {"app.kubernetes.io/managed-by": "informer-test"} if labelled else {}
    meta = {"name": name, "labels": labels, **({"namespace": namespace} if namespace else {})}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}


class Recorder:
    """The changes an informer delivered, with what ``get()`` answered when each was delivered."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str, bool]] = []  # (kind, name, resourceVersion, get() agreed)
        self.threads: set[str] = set()
        self.informer: Informer | None = None

    def __call__(self, kind: str, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        assert self.informer is not None
        held = self.informer.get(meta["namespace"], meta["name"])
        agreed = held is None if kind == DELETED else held is obj
        self.seen.append((kind, meta["name"], meta["resourceVersion"], agreed))
        self.threads.add(threading.current_thread().name)

    def of(self, name: str) -> list[str]:
        return [kind for kind, n, _, _ in self.seen if n == name]


def informer_for(client: kubernetes.client.ApiClient, namespaces: list[str] | None, recorder: Recorder | None = None,
                 cls: type[Informer] = Informer, **options: Any) -> Informer:
    informer = cls(client, path="/api/v1", resource="configmaps", namespaces=namespaces, label_selector=SELECTOR,
                   on_change=recorder, name="test-configmaps", **options)
    if recorder is not None:
        recorder.informer = informer
    return informer


async def until(what: str, probe: Callable[[], Any], within: float = 30.0) -> Any:
    """Await (letting the informer's callbacks run) until ``probe`` returns something truthy."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {within}s waiting for {what}; last: {probe()!r}")


def run(kubeconfig: Path, body: Callable[[kubernetes.client.ApiClient, kubernetes.client.CoreV1Api],
                                         Awaitable[Any]]) -> Any:
    """``body(informer_client, admin_core_api)`` on a fresh loop, both clients closed afterwards."""
    async def main() -> Any:
        with client_for(kubeconfig) as informers, client_for(kubeconfig) as admin:
            return await body(informers, kubernetes.client.CoreV1Api(admin))
    return asyncio.run(main())


def test_initial_sync_lists_in_pages_and_only_what_the_selector_names(cluster, namespace):
    for i in range(7):
        cluster.apply(configmap(f"cm-{i}", namespace))
    cluster.kubectl("create", "configmap", "not-ours", "-n", namespace)

    async def body(client, core):
        informer = informer_for(client, [namespace], page_size=3)
        assert not informer.synced
        await informer.start()
        try:
            assert await informer.wait_synced(30)
            assert informer.synced and informer.connected and informer.problem(namespace) is None
            assert sorted(o["metadata"]["name"] for o in informer.list(namespace)) == [f"cm-{i}" for i in range(7)]
            assert informer.get(namespace, "not-ours") is None and informer.get(namespace, "kube-root-ca.crt") is None
            assert informer.get(namespace, "cm-3")["metadata"]["labels"]["app.kubernetes.io/managed-by"] == \
                "informer-test"
            stats = informer.stats()
            assert stats["lists"] == 1 and stats["pages"] == 3 and stats["objects"] == 7  # 3 + 3 + 1
        finally:
            await informer.stop()
    run(cluster.kubeconfig, body)


def test_additions_changes_and_deletions_arrive_on_the_loop_with_the_cache_updated(cluster, namespace):
    async def body(client, core):
        recorder = Recorder()
        informer = informer_for(client, [namespace], recorder)
        await informer.start()
        try:
            assert await informer.wait_synced(30)
            core.create_namespaced_config_map(namespace, configmap("theirs", labelled=False))
            core.create_namespaced_config_map(namespace, configmap("mine", v="1"))
            core.patch_namespaced_config_map("mine", namespace, {"data": {"v": "2"}})
            core.delete_namespaced_config_map("mine", namespace)
            await until("the deletion", lambda: recorder.of("mine") == [ADDED, MODIFIED, DELETED])
            assert all(agreed for *_, agreed in recorder.seen), recorder.seen
            assert recorder.threads == {threading.current_thread().name}  # the loop's thread, not a watch's
            assert recorder.of("theirs") == [] and informer.get(namespace, "theirs") is None
            # Selected by the API server: the unlabelled object (created first) was never even sent.
            assert informer.stats()["events"] == 3
        finally:
            await informer.stop()
    run(cluster.kubeconfig, body)


def test_a_transform_decides_what_is_delivered_and_keep_what_is_held(cluster, namespace):
    """client-go's transform: the listed and the watched objects alike are delivered as the projection
    keeps them (strings of SHARED parts interned across objects); ``keep`` holds only their names and versions."""
    cluster.apply(configmap("listed", namespace, big="x" * 20_000))
    shape = {"metadata": {"name": True, "namespace": True, "uid": True, "resourceVersion": True, "labels": SHARED}}

    async def body(client, core):
        delivered: dict[str, list[tuple[str, dict[str, Any]]]] = {}

        def seen(kind, obj):
            delivered.setdefault(obj["metadata"]["name"], []).append((kind, obj))
        informer = informer_for(client, [namespace], transform=projection(shape), cached_form=names_and_versions)
        informer.on_change = seen
        await informer.start()
        try:
            assert await informer.wait_synced(30)
            core.create_namespaced_config_map(namespace, configmap("watched", big="y" * 20_000))
            core.patch_namespaced_config_map("watched", namespace, {"data": {"big": "z"}})
            await until("the change", lambda: [k for k, _ in delivered.get("watched", [])] == [ADDED, MODIFIED])
            (_, listed), = delivered["listed"]
            _, watched = delivered["watched"][-1]
            for obj in (listed, watched):
                assert set(obj) == {"metadata"} and "data" not in obj  # 20 KB of data never reaches the cache
                assert set(obj["metadata"]) == {"name", "namespace", "uid", "resourceVersion", "labels"}
                assert obj["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "informer-test"}
            # One string for both objects (decoded from different answers of the API server).
            (listed_key, listed_value), = listed["metadata"]["labels"].items()
            (watched_key, watched_value), = watched["metadata"]["labels"].items()
            assert listed_key is watched_key and listed_value is watched_value
            held = informer.get(namespace, "watched")
            assert held == {"metadata": {key: watched["metadata"][key]
                                         for key in ("name", "namespace", "uid", "resourceVersion")}}
            core.delete_namespaced_config_map("watched", namespace)
            await until("the deletion", lambda: delivered["watched"][-1][0] == DELETED)
            assert informer.get(namespace, "watched") is None and informer.stats()["objects"] == 1
        finally:
            await informer.stop()
    run(cluster.kubeconfig, body)


class ExpiringOnce(Informer):
    """Between its first list and its first watch, ``meanwhile`` runs."""

    meanwhile: Callable[[], None] = staticmethod(lambda: None)

    def _list(self, stream):
        listed = super()._list(stream)
        if self.stats()["lists"] == 1:
            type(self).meanwhile()
        return listed


def test_a_too_old_resource_version_is_answered_by_listing_again(own_plane):
    """The objects change and the API server restarts between the list and the watch: its watch cache
    starts afresh, the list's resourceVersion is too old for it (410 Gone), and a new list shows the
    changes."""
    namespace = "expiring"
    own_plane.kubectl("create", "namespace", namespace)
    for name in ("stays", "goes", "changes"):
        own_plane.kubectl("apply", "-f", "-", input=json.dumps(configmap(name, namespace)))

    async def body(client, core):
        def meanwhile() -> None:
            core.delete_namespaced_config_map("goes", namespace)
            core.patch_namespaced_config_map("changes", namespace, {"data": {"v": "2"}})
            core.create_namespaced_config_map(namespace, configmap("comes"))
            own_plane.restart_apiserver()
        ExpiringOnce.meanwhile = staticmethod(meanwhile)
        recorder = Recorder()
        informer = informer_for(client, [namespace], recorder, cls=ExpiringOnce)
        await informer.start()
        try:
            await until("the relist", lambda: informer.stats()["lists"] >= 2 and informer.connected)
            assert informer.stats()["relists_gone"] == 1 and informer.stats()["errors"] == 0
            await until("the relist's changes", lambda: ("DELETED", "goes") in [(k, n) for k, n, *_ in recorder.seen]
                        and informer.get(namespace, "comes") is not None)
            assert sorted(o["metadata"]["name"] for o in informer.list(namespace)) == ["changes", "comes", "stays"]
            assert informer.get(namespace, "changes")["data"] == {"v": "2"}
            assert recorder.of("goes") == [ADDED, DELETED] and recorder.of("changes") == [ADDED, MODIFIED]
            assert recorder.of("stays") == [ADDED] and recorder.of("comes") == [ADDED]
        finally:
            await informer.stop()
    run(own_plane.kubeconfig, body)


def test_a_remembered_object_is_not_replaced_by_an_older_watch_event(cluster, namespace):
    async def body(client, core):
        recorder = Recorder()
        informer = informer_for(client, [namespace], recorder)
        await informer.start()
        try:
            assert await informer.wait_synced(30)
            # Without awaiting in between: the watch's events for these writes wait in the loop's queue.
            first = core.create_namespaced_config_map(namespace, configmap("written", v="1"))
            second = client.sanitize_for_serialization(
                core.patch_namespaced_config_map("written", namespace, {"data": {"v": "2"}}))
            informer.remember(second)
            assert informer.get(namespace, "written")["data"] == {"v": "2"}
            third = core.patch_namespaced_config_map("written", namespace, {"data": {"v": "3"}})
            await until("the third version", lambda: recorder.of("written"))
            # ADDED (v1) was older than what was remembered and MODIFIED (v2) the same version: neither
            # changed the cache; the first change delivered is the third version.
            assert [(k, rv) for k, _, rv, _ in recorder.seen] == [(MODIFIED, third.metadata.resource_version)]
            assert informer.get(namespace, "written")["data"] == {"v": "3"}
            assert int(first.metadata.resource_version) < int(second["metadata"]["resourceVersion"])
        finally:
            await informer.stop()
    run(cluster.kubeconfig, body)


def test_stop_ends_every_thread_at_once_even_mid_watch(cluster, namespace):
    other = f"{namespace[:55]}-other"
    cluster.kubectl("create", "namespace", other)

    async def body(client, core):
        informer = informer_for(client, [namespace, other])
        await informer.start()
        assert await informer.wait_synced(30)
        await until("both watches", lambda: informer.stats()["watches"] >= 2)
        assert informer.threads_alive == 2
        started = time.monotonic()
        await informer.stop()
        assert informer.threads_alive == 0 and time.monotonic() - started < 3  # the watches last 240 s or more
    run(cluster.kubeconfig, body)


def test_a_cluster_wide_informer_sees_every_namespace(cluster, namespace):
    async def body(client, core):
        informer = informer_for(client, None)
        await informer.start()
        try:
            assert await informer.wait_synced(30)
            core.create_namespaced_config_map(namespace, configmap("anywhere"))
            await until("the object", lambda: informer.get(namespace, "anywhere"))
            assert informer.problem(namespace) is None and informer.problem("any-other") is None
        finally:
            await informer.stop()
    run(cluster.kubeconfig, body)


def test_a_forbidden_list_is_a_problem_naming_the_missing_permission(cluster, namespace):
    """alice may do nothing: the informer says which verbs to grant, keeps trying, and syncs once granted."""
    async def body(client, core):
        informer = informer_for(client_for(cluster.plane.kubeconfig_for("alice")), [namespace], backoff_max=1)
        await informer.start()
        try:
            assert informer.problem(namespace).message == f"configmaps in {namespace} are not listed yet"
            problem = await until("the refusal", lambda: (informer.problem(namespace) or None) and
                                  informer.problem(namespace).forbidden and informer.problem(namespace))
            assert not informer.synced and not informer.connected
            assert f"may not list or watch configmaps in {namespace}" in problem.message
            assert "grant the verbs list and watch on configmaps" in problem.message
            cluster.kubectl("create", "role", "reader", "-n", namespace, "--verb=list,watch", "--resource=configmaps")
            cluster.kubectl("create", "rolebinding", "reader", "-n", namespace, "--role=reader", "--user=alice")
            assert await informer.wait_synced(30) and informer.problem(namespace) is None
        finally:
            await informer.stop()
            informer.api_client.close()
    run(cluster.kubeconfig, body)


def test_an_api_server_outage_disconnects_and_the_cache_converges_afterwards(own_plane):
    own_plane.kubectl("create", "namespace", "outage")

    async def body(client, core):
        core.create_namespaced_config_map("outage", configmap("before"))
        informer = informer_for(client, ["outage"], backoff_max=1)
        await informer.start()
        try:
            assert await informer.wait_synced(30) and informer.get("outage", "before")
            await asyncio.to_thread(own_plane.stop_apiserver)
            try:
                problem = await until("the disconnection", lambda: informer.problem("outage"), 60)
                assert not informer.connected and not problem.forbidden
                assert "the watch of configmaps in outage failed" in problem.message
                assert informer.get("outage", "before") is not None  # kept, but not to be relied on
            finally:
                await asyncio.to_thread(own_plane.start_apiserver)
            await until("the reconnection", lambda: informer.connected, 60)
            core.delete_namespaced_config_map("before", "outage")
            core.create_namespaced_config_map("outage", configmap("after"))
            await until("the cache to converge", lambda: [o["metadata"]["name"] for o in informer.list()] == ["after"])
            assert informer.stats()["errors"] >= 1 and informer.stats()["lists"] >= 2
        finally:
            await informer.stop()
    run(own_plane.kubeconfig, body)
