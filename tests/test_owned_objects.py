"""What a tenant who may edit the objects of their namespace can do to a pipeline's children: nothing
lasting. The operator reaches a pipeline only at its own pod's IP (never through its Service, which a
tenant can point anywhere), puts back each child someone changed or deleted (a Kubernetes Event
``ChildRestored`` naming the field), changes nothing of a child nobody touched, and deletes an object
only if it is still the one it verified as its own (a uid precondition).

One operator process (deploy/'s Role, the stand-in kubelet) serves the module's end-to-end tests."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from pipeline_operator.backends import LogsUnavailable
from pipeline_operator.backends.kubernetes import KubernetesBackend, KubernetesOptions, child_name, labels
from pipeline_operator.backends.kubernetes.objects import owner, token_secret_name
from pipeline_operator.backends.kubernetes.owned import OWNED_KEY
from pipeline_operator.identity import PipelineKey
from pipeline_operator.kube.client import KubeClient
from pipeline_operator.models import BootstrapPolicy, PipelineSpec, RuntimeDesiredStatus

from .fake_kubelet import FakeKubelet, allocate_pod_ip, release_pod_ip
from .operator_harness import OperatorProcess, Pipelines, wait_for
from .test_api import http_json
from .test_kubernetes_backend import RBAC, in_process, key_of, operator_kubeconfig  # noqa: F401
from .test_operator_lifecycle import FAST_PIPELINE, SQL

pytestmark = pytest.mark.apiserver

# What the API server stores differently from what the operator writes, so that an untouched pipeline shows
# that only real changes are put back: quantities not in canonical form ("0.25" is stored as "250m", "1024Mi"
# as "1Gi"), an empty variable (stored without its value), peers of every form in the NetworkPolicy.
TRICKY = {"env": [*FAST_PIPELINE, {"name": "EMPTY", "value": ""}],
          "resources": {"requests": {"cpu": "0.25", "memory": "1024Mi"}, "limits": {"memory": "2048Mi"}},
          "allowIngressFrom": [{"podSelector": {"matchLabels": {"role": "loader"}}},
                               {"namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "Exists"}]}},
                               {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}]}


def running_spec() -> dict:
    return {"desiredStatus": "Provisioned", "program": {"sql": SQL}, "deployment": TRICKY}


class Stand:
    """A namespace with its stand-in kubelet and one operator (deploy/'s Role, its HTTP API without
    authentication, NetworkPolicies on)."""

    def __init__(self, cluster, namespace: str, workdir: Path) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.pipelines = Pipelines(cluster, namespace)
        self.kubelet = FakeKubelet(cluster.kubeconfig, namespace, workdir / "kubelet")
        self.kubelet.start()
        kubeconfig = operator_kubeconfig(cluster, namespace, (RBAC / "role.yaml").read_text())
        self.op = OperatorProcess(cluster, namespace, workdir / "state", [
            "--backend", "kubernetes", "--pipeline-image", "registry.example/pipeline:1",
            "--pipeline-image-prefix", "registry.example/", "--api-auth", "none", "--metrics-auth", "none",
            "--api-default-namespace", namespace], kubeconfig).start()

    def get(self, kind: str, name: str) -> dict | None:
        res = self.cluster.kubectl("get", kind, name, "-n", self.namespace, "-o", "json", check=False)
        return json.loads(res.stdout) if res.returncode == 0 else None

    def kubectl(self, *args: str, input: str | None = None) -> None:
        self.cluster.kubectl(*args, "-n", self.namespace, input=input)

    def restored(self, name: str) -> list[str]:
        """The messages of the ChildRestored Events on the Pipeline ``name``."""
        events = json.loads(self.cluster.kubectl("get", "events", "-n", self.namespace, "-o", "json",
                                                 "--field-selector", f"reason=ChildRestored,involvedObject.name={name}")
                            .stdout)["items"]
        return [e["message"] for e in events]

    def wait_restored(self, name: str, message: str, timeout: float = 30) -> None:
        wait_for(f"the Event {message!r}", lambda: message in self.restored(name), timeout, operator=self.op)

    def passes(self) -> float:
        """Monitoring passes the operator has made so far (its /metrics)."""
        with urllib.request.urlopen(f"{self.op.api_url}/metrics", timeout=10) as r:
            text = r.read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("pipeline_operator_monitoring_pass_seconds_count"))

    def stop(self) -> None:
        try:
            self.op.stop()
        finally:
            self.kubelet.stop()


@pytest.fixture(scope="module")
def stand(crd_installed, tmp_path_factory) -> Iterator[Stand]:
    namespace = f"owned-{int(time.time() * 1000) % 10**9}"
    crd_installed.kubectl("create", "namespace", namespace)
    s = Stand(crd_installed, namespace, tmp_path_factory.mktemp("owned"))
    try:
        yield s
    finally:
        s.stop()
    assert not s.kubelet.errors, s.kubelet.errors


@pytest.fixture(scope="module")
def running(stand) -> PipelineKey:
    """One pipeline, Running, that the tests below tamper with."""
    key = key_of(stand.pipelines.create("target", running_spec()))
    stand.pipelines.wait_status("target", stand.op, timeout=90, deploymentStatus="Running")
    return key


class Decoy:
    """An HTTP server at a loopback address of its own, on the pipelines' port, answering anything with
    ``{"decoy": true}``: where a tenant would like the operator's requests (and tokens) to go."""

    def __init__(self) -> None:
        self.ip = allocate_pod_ip()
        self.requests: list[str] = []
        decoy = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                decoy.requests.append(f"{self.command} {self.path} {self.headers.get('Authorization')}")
                body = b'{"decoy": true}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer  # noqa: N815 - http.server's names

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((self.ip, 8080), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        release_pod_ip(self.ip)


@pytest.fixture
def decoy() -> Iterator[Decoy]:
    d = Decoy()
    yield d
    d.close()


def test_a_service_a_tenant_changed_sends_nothing_elsewhere_and_is_put_back(stand, running, decoy):
    name = child_name(running)
    # The decoy answers at its address: the tenant's target is reachable, were the operator to go there.
    assert http_json(f"http://{decoy.ip}:8080/stats")[1] == {"decoy": True}
    decoy.requests.clear()
    edits = [("ExternalName", {"spec": {"type": "ExternalName", "externalName": decoy.ip, "selector": None,
                                        "ports": None, "clusterIP": None, "clusterIPs": None}},
              f"Service {name} spec.externalName, spec.ports, spec.selector, spec.type were changed; put back"),
             ("another selector", {"spec": {"selector": {"app": "decoy"}}},
              f"Service {name} spec.selector was changed; put back"),
             ("other ports", {"spec": {"ports": [{"name": "http", "port": 8080, "targetPort": 9999,
                                                  "protocol": "TCP"}]}},
              f"Service {name} spec.ports was changed; put back")]
    for what, patch, message in edits:
        stand.kubectl("patch", "service", name, "--type", "merge", "-p", json.dumps(patch))
        # Passed through the HTTP API: the real pipeline answers (its figures), never the decoy.
        status, body = http_json(f"{stand.op.api_url}/v0/pipelines/target/stats", timeout=30)
        assert status == 200 and "decoy" not in body, (what, status, body)
        stand.wait_restored("target", message)
        spec = stand.get("service", name)["spec"]
        assert spec["type"] == "ClusterIP" and spec["selector"] == {"app.kubernetes.io/instance": name,
                                                                     "dataflow.dev/pipeline-uid": running.uid}
        assert spec["ports"] == [{"name": "http", "port": 8080, "targetPort": 8080, "protocol": "TCP"}]
    # The status polls go on reaching the pipeline: a pause forwarded to it is what its status then says.
    status, _ = http_json(f"{stand.op.api_url}/v0/pipelines/target/pause", "POST", timeout=30)
    assert status == 202
    stand.pipelines.wait_status("target", stand.op, timeout=30, deploymentRuntimeStatus="Paused")
    http_json(f"{stand.op.api_url}/v0/pipelines/target/resume", "POST", timeout=30)
    stand.pipelines.wait_status("target", stand.op, timeout=30, deploymentRuntimeStatus="Running")
    assert decoy.requests == []


def _token(stand: Stand, key: PipelineKey) -> str:
    return base64.b64decode(stand.get("secret", token_secret_name(key))["data"]["token"]).decode()


def test_each_kind_of_child_changed_or_deleted_is_put_back_with_an_event_naming_the_field(stand, running):
    name = child_name(running)
    claim = f"{name}-storage"
    token = _token(stand, running)
    container = stand.get("statefulset", name)["spec"]["template"]["spec"]["containers"][0]
    edits = [
        ("statefulset", name, {"spec": {"template": {"spec": {"hostNetwork": True}}}},
         f"StatefulSet {name} spec.template.spec.hostNetwork was changed; put back"),
        ("statefulset", name, {"spec": {"template": {"spec": {"containers": [{**container, "image": "evil:1"}]}}}},
         f"StatefulSet {name} spec.template.spec.containers was changed; put back"),
        ("configmap", name, {"data": {"config.json": "{}"}}, f"ConfigMap {name} data was changed; put back"),
        ("secret", token_secret_name(running), {"metadata": {"labels": {"app.kubernetes.io/name": "other"}}},
         f"Secret {token_secret_name(running)} metadata.labels was changed; put back"),
        ("networkpolicy", name, {"spec": {"podSelector": {"matchLabels": {"nobody": "x"}}}},
         f"NetworkPolicy {name} spec.podSelector.matchLabels was changed; put back"),
        ("persistentvolumeclaim", claim, {"metadata": {"labels": {"app.kubernetes.io/part-of": "other"}}},
         f"PersistentVolumeClaim {claim} metadata.labels was changed; put back"),
    ]
    for kind, child, patch, message in edits:
        before = stand.get(kind, child)
        stand.kubectl("patch", kind, child, "--type", "merge", "-p", json.dumps(patch))
        stand.wait_restored("target", message)
        after = stand.get(kind, child)
        for field in ("spec", "data"):
            if kind != "persistentvolumeclaim" and field in before:
                assert after[field] == before[field], (kind, field)
        assert {k: after["metadata"]["labels"].get(k) for k in labels(running)} == labels(running)
    # Deleted while the pipeline runs: made again, the token Secret with the token the pod was started with.
    for kind, child, what in (("service", name, "Service"), ("configmap", name, "ConfigMap"),
                              ("networkpolicy", name, "NetworkPolicy"),
                              ("secret", token_secret_name(running), "Secret")):
        stand.kubectl("delete", kind, child)
        stand.wait_restored("target", f"{what} {child} was deleted; created again")
    assert _token(stand, running) == token
    assert stand.pipelines.status("target")["deploymentStatus"] == "Running"
    # Forwarded actions still carry the token the pod knows.
    assert http_json(f"{stand.op.api_url}/v0/pipelines/target/pause", "POST", timeout=30)[0] == 202
    stand.pipelines.wait_status("target", stand.op, timeout=30, deploymentRuntimeStatus="Paused")
    http_json(f"{stand.op.api_url}/v0/pipelines/target/resume", "POST", timeout=30)


def test_an_untouched_pipeline_is_never_put_back(stand):
    stand.pipelines.create("calm", running_spec())
    stand.pipelines.wait_status("calm", stand.op, timeout=90, deploymentStatus="Running")
    start = stand.passes()
    wait_for("several monitoring passes", lambda: stand.passes() >= start + 20, 60, operator=stand.op)
    assert stand.restored("calm") == []
    assert "put back" not in stand.op.log() or all("calm" not in line for line in stand.op.log().splitlines()
                                                   if "put back" in line)


# -- the endpoint: only the operator's own pod, at its own IP ----------------------------------------------------


def _planted(tmp_path: Path, **options: Any) -> tuple[KubernetesBackend, KubeClient]:
    """A backend whose caches the test fills (nothing is listed: no API server is asked)."""
    kube = KubeClient(kubernetes.client.Configuration(host="http://127.0.0.1:9"))
    return KubernetesBackend(kube, KubernetesOptions(default_image="x", **options), ["ns"]), kube


def _children(key: PipelineKey, ip: str, **pod_changes: Any) -> tuple[dict, dict]:
    name = child_name(key)
    sts = {"metadata": {"name": name, "namespace": key.namespace, "uid": f"sts-{key.uid}", "resourceVersion": "1",
                        "labels": labels(key), "ownerReferences": [owner(key)]}}
    pod = {"metadata": {"name": f"{name}-0", "namespace": key.namespace, "uid": f"pod-{key.uid}",
                        "resourceVersion": "1", "labels": labels(key),
                        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": name,
                                             "uid": f"sts-{key.uid}", "controller": True}]},
           "spec": {"containers": [{"name": "pipeline", "image": "x"}]},
           "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}}
    for path, value in pod_changes.items():
        where = pod
        *parents, last = path.split("__")
        for part in parents:
            where = where[part]
        where[last] = value
    return sts, pod


@pytest.mark.parametrize("change", [
    {},
    {"spec__hostNetwork": True},  # the node's address: whatever listens there
    {"metadata__ownerReferences": []},  # a pod someone made by that name
    {"metadata__ownerReferences": [{"kind": "StatefulSet", "uid": "sts-of-someone-else", "controller": True}]},
    {"status__phase": "Pending"},
    {"status__conditions": [{"type": "Ready", "status": "False"}]},
    {"status__podIP": "evil.example.com"},
    {"status__podIP": "0.0.0.0"},
])
def test_the_endpoint_is_the_ip_of_the_pod_the_operators_statefulset_controls(tmp_path, change):
    backend, kube = _planted(tmp_path)
    key = PipelineKey("ns", "a", "0123456789abcdef")
    sts, pod = _children(key, "10.1.2.3", **change)
    backend._informers["statefulset"].remember(sts)
    backend._informers["pod"].remember(pod)
    # The Service is never looked at: there is none here, and the answer does not depend on it.
    expected = "http://10.1.2.3:8080" if not change else None
    assert backend.endpoint(key) == expected
    asyncio.run(backend.close())
    asyncio.run(kube.close())


def test_two_pipelines_whose_pods_claim_one_address_get_no_endpoint_and_no_token_goes_astray(tmp_path):
    backend, kube = _planted(tmp_path)
    a, b = PipelineKey("ns", "a", "0123456789abcdef"), PipelineKey("ns", "b", "fedcba9876543210")
    backend._tokens.update({a.uid: "token-a", b.uid: "token-b"})
    for key in (a, b):
        for kind, obj in zip(("statefulset", "pod"), _children(key, "10.9.9.9"), strict=True):
            backend._informers[kind].remember(obj)
    assert backend.endpoint(a) == "http://10.9.9.9:8080"
    assert backend.control_token("http://10.9.9.9:8080") == "token-a"
    assert backend.endpoint(b) is None  # a's pod still claims the address in the cache: one of them is gone
    assert backend.control_token("http://10.9.9.9:8080") == "token-a"
    # a's pod goes (the watch says so): b's pod has the address, and its token goes with it.
    del backend._informers["pod"]._objects["ns"][f"{child_name(a)}-0"]
    assert backend.endpoint(a) is None and backend.endpoint(b) == "http://10.9.9.9:8080"
    assert backend.control_token("http://10.9.9.9:8080") == "token-b"
    asyncio.run(backend.close())
    asyncio.run(kube.close())


def test_a_pipeline_on_the_api_server_is_reached_at_its_pods_ip(stand, running):
    name = child_name(running)
    pod = stand.get("pod", f"{name}-0")
    assert pod["status"]["podIP"] == stand.kubelet.pod_ips[name]
    # The operator reached it there (no other address exists for it): it is Running.
    status = stand.pipelines.status("target")
    assert status["deploymentStatus"] == "Running"
    # It was started with the deployment id its status records (Feldera's --deployment-id).
    args = stand.get("statefulset", name)["spec"]["template"]["spec"]["containers"][0]["command"]
    assert args[args.index("--deployment-id") + 1] == status["deploymentId"]


def with_backend(stand: Stand, fn: Any) -> Any:
    """``fn(backend)`` on a backend of the operator's own credentials (not started), closed afterwards."""
    async def main() -> Any:
        configuration = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(str(stand.op.kubeconfig), client_configuration=configuration)
        kube = KubeClient(configuration)
        backend = KubernetesBackend(kube, KubernetesOptions(default_image="x"), [stand.namespace])
        try:
            return await fn(backend)
        finally:
            await backend.close()
            await kube.close()
    return asyncio.run(main())


# -- fencing ----------------------------------------------------------------------------------------------------


def test_a_delete_with_a_stale_uid_is_refused_by_the_api_server(stand, running):
    """An object deleted and made again by someone else under the same name (the operator's cache may still
    show the old one) is never deleted: the delete carries the uid of the object the operator verified."""
    name = "stale-uid-probe"
    body = {"apiVersion": "v1", "kind": "ConfigMap", "data": {"mine": "yes"},
            "metadata": {"name": name, "namespace": stand.namespace}}
    stand.cluster.apply(body)
    old_uid = stand.get("configmap", name)["metadata"]["uid"]
    stand.kubectl("delete", "configmap", name)
    stand.cluster.apply(body)  # someone else's, by the same name
    new_uid = stand.get("configmap", name)["metadata"]["uid"]
    assert new_uid != old_uid

    async def go(backend: KubernetesBackend) -> tuple[bool, bool]:
        stale = await backend._delete("configmap", stand.namespace, name, old_uid)
        current = await backend._delete("configmap", stand.namespace, name, new_uid)
        return stale, current
    stale, current = with_backend(stand, go)
    assert stale is False and current is True
    assert stand.get("configmap", name) is None or stand.get("configmap", name)["metadata"]["uid"] == new_uid


def test_the_caches_keep_a_digest_of_the_owned_part_not_the_spec_nor_the_token(stand, running):
    async def go(backend: KubernetesBackend) -> dict[str, Any]:
        await backend.start()
        return {kind: backend._cache(kind, stand.namespace, token_secret_name(running) if kind == "secret"
                                     else child_name(running))
                for kind in ("statefulset", "configmap", "secret", "networkpolicy", "service")}
    cached = with_backend(stand, go)
    token = _token(stand, running)
    for kind, obj in cached.items():
        assert obj is not None and 0 <= obj[OWNED_KEY] < 2**64, kind
        assert set(obj) <= {"metadata", "status", "pipeline", "controller", OWNED_KEY}, (kind, set(obj))
        assert set(obj["metadata"]) <= {"name", "namespace", "uid", "resourceVersion"}, (kind, obj["metadata"])
        assert "spec" not in obj and "data" not in obj and token not in json.dumps(obj), kind


def test_provisioning_remembers_what_it_wrote(tmp_path):
    """What a put-back rebuilds is what provisioning wrote, from what it remembers (not the current spec)."""
    backend, kube = _planted(tmp_path, network_policies=True, operator_pod_labels={"app": "operator"})
    key = PipelineKey("ns", "a", "0123456789abcdef")
    spec = PipelineSpec.model_validate({"program": {"sql": SQL}, "deployment": TRICKY, "runtimeConfig": {
        "workers": 2, "io_workers": 3, "env": {"OTHER": "1"},
        "resources": {"cpu_cores_max": 1.5, "memory_mb_min": 100}}})
    from pipeline_operator.backends.kubernetes.objects import build_objects
    from pipeline_operator.backends.kubernetes.owned import _Owned, owned_digest
    deployment = "0123e4b6-7c1a-4d2e-8f00-0123456789ab"
    objects = build_objects(key, spec, {"sql": SQL}, RuntimeDesiredStatus.PAUSED, backend.options,
                            BootstrapPolicy.ALLOW, silent_bootstrap=True, deployment_id=deployment)
    container = objects["statefulset"]["spec"]["template"]["spec"]["containers"][0]
    assert "--silent-bootstrap" in container["command"] and deployment in container["command"]
    assert {"name": "TOKIO_WORKER_THREADS", "value": "3"} in container["env"]
    owned = _Owned.of({}, f"{child_name(key)}-storage", spec, objects["configmap"]["data"]["config.json"],
                      RuntimeDesiredStatus.PAUSED, BootstrapPolicy.ALLOW, True, deployment)
    for kind in ("statefulset", "configmap", "networkpolicy", "service"):
        assert owned_digest(kind, backend._rebuild(key, kind, owned)) == owned_digest(kind, objects[kind]), kind
    asyncio.run(backend.close())
    asyncio.run(kube.close())


async def _provision(backend: KubernetesBackend, key: PipelineKey) -> None:
    await backend.provision(key, PipelineSpec.model_validate(running_spec()), {"sql": SQL},
                            RuntimeDesiredStatus.RUNNING, BootstrapPolicy.AWAIT_APPROVAL)


async def _until(what: str, probe: Any) -> None:
    for _ in range(600):
        if probe():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_child_someone_else_made_by_that_name_is_left_alone_and_not_read_on_every_pass(
        in_process, pipelines, cluster, namespace):  # noqa: F811
    backend = in_process()
    key = key_of(pipelines.create("crowded", running_spec()))
    name = child_name(key)

    async def go(b: KubernetesBackend) -> tuple[int, int, int]:
        await _provision(b, key)
        # The pipeline's Service deleted, and one of the same name made by someone else (not labelled as ours).
        await asyncio.to_thread(cluster.kubectl, "delete", "service", name, "-n", namespace)
        await asyncio.to_thread(cluster.apply, {"apiVersion": "v1", "kind": "Service", "metadata": {
            "name": name, "namespace": namespace}, "spec": {"ports": [{"port": 80}], "selector": {"app": "other"}}})
        # The watch delivers the deletion (and nothing of the other: it is not labelled as the operator's).
        await _until("the deletion in the cache", lambda: b._cache("service", namespace, name) is None)
        before = b.stats()["reads"]
        for _ in range(10):
            await b.observe_compute(key)
        return before, b.stats()["reads"], b.stats()["restored"]
    before, after, restored = backend.run(go)
    assert after - before == 1 and restored == 0  # read once, found someone else's, left alone
    assert backend.get("service", name)["spec"]["selector"] == {"app": "other"}


def test_the_log_of_a_pod_the_pipelines_statefulset_does_not_control_is_not_read(
        in_process, pipelines, cluster, namespace):  # noqa: F811
    backend = in_process()
    key = key_of(pipelines.create("impostor", running_spec()))
    name = child_name(key)

    async def go(b: KubernetesBackend) -> tuple[list[bytes], str]:
        await _provision(b, key)
        async with b.logs(key, follow=False) as chunks:  # no pod yet: an empty log
            empty = [chunk async for chunk in chunks]
        # A pod by the name the StatefulSet's pod would have, labelled as the pipeline's, made by someone else.
        await asyncio.to_thread(cluster.apply, {"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": f"{name}-0", "namespace": namespace, "labels": labels(key)},
            "spec": {"containers": [{"name": "pipeline", "image": "registry.example/other:1"}]}})
        await _until("the pod in the cache", lambda: b._cache("pod", namespace, f"{name}-0") is not None)
        try:
            async with b.logs(key, follow=False) as chunks:
                return empty, f"read: {[chunk async for chunk in chunks]}"
        except LogsUnavailable as exc:
            return empty, str(exc)
    empty, refused = backend.run(go)
    assert empty == []
    assert refused == (f"pod {namespace}/{name}-0 is not the one the pipeline's StatefulSet controls; the operator "
                       "does not read its log")


def test_after_a_restart_the_service_and_the_claims_labels_are_guarded_at_once(
        in_process, pipelines, cluster, namespace):  # noqa: F811
    """What a restarted operator knows without the start's parameters: the Service and the claim's labels (the
    StatefulSet, ConfigMap, Secret and NetworkPolicy are guarded again from the pipeline's next start)."""
    backend = in_process()
    key = key_of(pipelines.create("restarted", running_spec()))
    name = child_name(key)
    backend.provision(key, running_spec())  # then the backend is gone, as after an operator restart
    cluster.kubectl("patch", "service", name, "-n", namespace, "--type", "merge", "-p",
                    json.dumps({"spec": {"selector": {"app": "decoy"}}}))
    cluster.kubectl("patch", "persistentvolumeclaim", f"{name}-storage", "-n", namespace, "--type", "merge", "-p",
                    json.dumps({"metadata": {"labels": {"app.kubernetes.io/part-of": "other"}}}))
    cluster.kubectl("patch", "configmap", name, "-n", namespace, "--type", "merge", "-p",
                    json.dumps({"data": {"extra": "kept"}}))
    restored: list[str] = []

    async def go(b: KubernetesBackend) -> None:
        for _ in range(3):
            await b.observe_compute(key)
    backend.run(go, on_restored=lambda k, message: restored.append(message))
    assert sorted(restored) == [f"PersistentVolumeClaim {name}-storage metadata.labels was changed; put back",
                                f"Service {name} spec.selector was changed; put back"]
    assert backend.get("service", name)["spec"]["selector"]["app.kubernetes.io/instance"] == name
    assert backend.get("configmap", name)["data"]["extra"] == "kept"
