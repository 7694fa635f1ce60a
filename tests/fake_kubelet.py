"""Standing in for what the test API server lacks: the StatefulSet controller and kubelet, the
PersistentVolume controller and the PVC-protection controller, for one namespace.

It does what those write through the real API, nothing more: for each StatefulSet of a pipeline
it creates the pod ``<name>-0`` (as the StatefulSet controller does), runs the container's command
as a local process (the reference pipeline process, or the launcher that downloads the program binary from the
operator and runs it; reading the ConfigMap's program and a local directory standing for the volume), reports
the pod's status and ``readyReplicas`` once the process listens, and restarts a process that exits, counting
restarts and reporting CrashLoopBackOff, as the kubelet does; it binds PersistentVolumeClaims (except those of a
StorageClass named ``unavailable``, which stay Pending, as with no provisioner); it removes the pvc-protection
finalizer of a deleted claim no process uses. As a kubelet does, it gives each pod an IP of its own
(``status.podIP``: a loopback address ``127.a.b.c`` unique on this machine, since Linux routes all of
127.0.0.0/8 to the loopback interface) and runs the container's process bound to that IP on the
container's port (8080), where the operator reaches it as it would in a cluster.

By default a container's command runs as a process of this test environment's Python; with a
``runtime`` (tests/oci.py) it runs in a container of the operator's image instead.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

_POD_IPS_LOCK = threading.Lock()
_POD_IPS: set[str] = set()  # pod IPs given out by the kubelets of this process and not released
POD_PORT = 8080  # the pipeline container's port (backends/kubernetes/objects.py PORT)


def allocate_pod_ip(port: int = POD_PORT) -> str:
    """A loopback address for a pod, none of this process's pods has and on which nothing on this machine
    listens on ``port`` (other test runs on the same machine pick theirs at random too). Never 127.0.0.x
    (where the test's own servers listen)."""
    with _POD_IPS_LOCK:
        while True:
            ip = f"127.{random.randint(2, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"
            if ip in _POD_IPS:
                continue
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                probe.bind((ip, port))  # without SO_REUSEADDR: fails if anything has (or had) it
            except OSError:
                continue
            finally:
                probe.close()
            _POD_IPS.add(ip)
            return ip


def release_pod_ip(ip: str | None) -> None:
    with _POD_IPS_LOCK:
        _POD_IPS.discard(ip or "")


def pod_ip_of(address: str) -> str:
    """The IP of ``http://<ip>:<port>``."""
    host = address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    return str(ipaddress.ip_address(host))


def mounted_command(command: list[str], config: dict[str, str], pod: Path, storage: Path, pod_ip: str) -> list[str]:
    """The container's command as this stand-in runs it, with what the kubelet would mount put on the host: the
    ConfigMap's ``config.json``/``config.yaml`` written into the pod's folder (its storage path, the claim's
    mount ``/storage``, pointing at the claim's folder) and ``--config-file`` naming them, the address to bind
    the pod's IP (its network namespace has no other interface). The pod's folder is its working directory
    (``/work``), where the process writes its ``port`` file."""
    # The reference process, or the launcher of a program binary (its arguments after ``--``).
    assert command[:2] in (["pipeline-operator", "pipeline-process"], ["pipeline-operator", "launch-pipeline"]), command
    assert "--config-file" in command and "--bind-address" in command, command
    pipeline_config = json.loads(config["config.json"])
    assert pipeline_config["storage_config"]["path"] == "/storage", pipeline_config["storage_config"]
    pipeline_config["storage_config"]["path"] = str(storage)
    (pod / "config.json").write_text(json.dumps(pipeline_config, indent=2))
    (pod / "config.yaml").write_text(json.dumps(pipeline_config, indent=2) + "\n")
    rewritten = list(command)
    rewritten[rewritten.index("--config-file") + 1] = str(pod / "config.yaml")
    rewritten[rewritten.index("--bind-address") + 1] = pod_ip
    return rewritten


class ContainerRuntime:
    """How the kubelet starts and kills a container: ``start(argv, env, paths, log, cwd)`` runs the
    container's command ``argv`` (``pipeline-operator pipeline-process ...``) with ``env`` in ``cwd``, the
    host ``paths`` it uses (configuration and port file's folder, volume) made available at the same paths;
    ``kill(process)`` ends it at once."""

    def start(self, argv: list[str], env: dict[str, str], paths: list[Path], log: Path,
              cwd: Path | None = None) -> subprocess.Popen:
        rewritten = [sys.executable, "-m", "pipeline_operator.cli", *argv[1:]]
        with open(log, "ab") as out:
            return subprocess.Popen(rewritten, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                    cwd=cwd)

    def kill(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class FakeKubelet(threading.Thread):
    def __init__(self, kubeconfig: Path, namespace: str, workdir: Path,
                 runtime: ContainerRuntime | None = None) -> None:
        super().__init__(daemon=True, name=f"fake-kubelet-{namespace}")
        configuration = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(str(kubeconfig), client_configuration=configuration)
        client = kubernetes.client.ApiClient(configuration)
        self.apps = kubernetes.client.AppsV1Api(client)
        self.core = kubernetes.client.CoreV1Api(client)
        self.namespace = namespace
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.processes: dict[str, subprocess.Popen] = {}  # StatefulSet name -> process
        self.restarts: dict[str, int] = {}
        self.ready: set[str] = set()
        self.pod_ips: dict[str, str] = {}  # StatefulSet name -> its pod's IP
        self.stop_flag = threading.Event()
        self.errors: list[str] = []
        self.runtime = runtime or ContainerRuntime()

    def run(self) -> None:
        while not self.stop_flag.is_set():
            try:
                self.sync()
            except ApiException as exc:
                if exc.status not in (404, 409):  # an object went away or changed meanwhile: next round
                    self.errors.append(repr(exc))
            except Exception as exc:  # noqa: BLE001 - reported by the tests that use it
                self.errors.append(repr(exc))
            self.stop_flag.wait(0.2)  # the next round, or at once when stopped

    def stop(self) -> None:
        self.stop_flag.set()
        self.join(10)
        for proc in self.processes.values():
            self.runtime.kill(proc)
        for ip in self.pod_ips.values():
            release_pod_ip(ip)

    def kill_pod(self, sts_name: str) -> None:
        """The pod's process dies (like a node failure); the StatefulSet reports 0 ready."""
        proc = self.processes.get(sts_name)
        if proc is not None:
            self.runtime.kill(proc)

    # -- one round ----------------------------------------------------------------------------

    def sync(self) -> None:
        ns = self.namespace
        statefulsets = {s.metadata.name: s for s in self.apps.list_namespaced_stateful_set(ns).items}
        for name, sts in statefulsets.items():
            proc = self.processes.get(name)
            if proc is None:
                if self._claim_bound(sts):  # the scheduler places no pod whose volume is not bound
                    self._create_pod(sts)
                    started = self._start(sts)
                    if started is not None:
                        self.processes[name] = started
                continue
            port_file = self.workdir / "pods" / name / "port"
            alive = proc.poll() is None
            if alive and port_file.exists() and name not in self.ready:
                self._set_ready(sts, 1)
                self._pod_status(name, ready=True)
                self.ready.add(name)
            elif not alive:
                if name in self.ready:
                    self._set_ready(sts, 0)
                    self.ready.discard(name)
                self.restarts[name] = self.restarts.get(name, 0) + 1
                self._pod_status(name, ready=False, exit_code=proc.returncode)
                started = self._start(sts)  # the kubelet restarts the container
                if started is not None:
                    self.processes[name] = started
                else:
                    del self.processes[name]
        for name in list(self.processes):
            if name not in statefulsets:  # deleted: the pod goes
                self._remove_pod(name)
                del self.processes[name]
        for pvc in self.core.list_namespaced_persistent_volume_claim(ns).items:
            self._sync_claim(pvc)

    def _remove_pod(self, name: str) -> None:
        """The StatefulSet is gone: its pod's process ends, the pod is deleted and forgotten."""
        self.kill_pod(name)
        self.ready.discard(name)
        self.restarts.pop(name, None)
        release_pod_ip(self.pod_ips.pop(name, None))
        try:
            self.core.delete_namespaced_pod(f"{name}-0", self.namespace, grace_period_seconds=0)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def _create_pod(self, sts: Any) -> None:
        if sts.metadata.name not in self.pod_ips:
            self.pod_ips[sts.metadata.name] = allocate_pod_ip()
        template = self.apps.api_client.sanitize_for_serialization(sts.spec.template)
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": f"{sts.metadata.name}-0", "namespace": self.namespace,
                            "labels": template["metadata"]["labels"],
                            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet",
                                                 "name": sts.metadata.name, "uid": sts.metadata.uid,
                                                 "controller": True, "blockOwnerDeletion": True}]},
               "spec": template["spec"]}
        try:
            self.core.create_namespaced_pod(self.namespace, pod)
        except ApiException as exc:
            if exc.status != 409:
                raise

    def _pod_status(self, sts_name: str, ready: bool, exit_code: int | None = None) -> None:
        restarts = self.restarts.get(sts_name, 0)
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if ready:
            state = {"running": {"startedAt": now}}
        elif restarts > 1:
            state = {"waiting": {"reason": "CrashLoopBackOff",
                                 "message": f"back-off restarting failed container pipeline (exit code {exit_code})"}}
        else:
            state = {"waiting": {"reason": "ContainerCreating"}}
        ip = self.pod_ips.get(sts_name)
        status = {"phase": "Running" if ready else "Pending", "podIP": ip, "podIPs": [{"ip": ip}] if ip else None,
                  "conditions": [{"type": "Ready", "status": "True" if ready else "False",
                                  "lastTransitionTime": now}],
                  "containerStatuses": [{"name": "pipeline", "ready": ready, "restartCount": restarts,
                                         "image": "pipeline", "imageID": "", "state": state}]}
        try:
            self.core.patch_namespaced_pod_status(f"{sts_name}-0", self.namespace, {"status": status})
        except ApiException as exc:
            if exc.status != 404:
                raise

    def _claim_bound(self, sts: Any) -> bool:
        volumes = {v.name: v for v in sts.spec.template.spec.volumes}
        claim = volumes["storage"].persistent_volume_claim.claim_name
        try:
            pvc = self.core.read_namespaced_persistent_volume_claim(claim, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return pvc.status is not None and pvc.status.phase == "Bound"

    def _set_ready(self, sts: Any, ready: int) -> None:
        status = {"replicas": 1, "readyReplicas": ready, "availableReplicas": ready, "currentReplicas": 1,
                  "updatedReplicas": 1, "observedGeneration": sts.metadata.generation}
        try:
            self.apps.patch_namespaced_stateful_set_status(sts.metadata.name, self.namespace, {"status": status})
        except ApiException as exc:
            if exc.status != 404:  # deleted meanwhile: nothing to report
                raise

    def _env(self, container: Any) -> dict[str, str] | None:
        """The container's environment as the kubelet builds it: values, and Secret keys
        (``secretKeyRef``); None while a referenced Secret or key is missing (the kubelet's
        CreateContainerConfigError: it tries again later)."""
        env = {"PATH": os.environ.get("PATH", "")}
        for e in container.env or []:
            ref = e.value_from.secret_key_ref if e.value_from is not None else None
            if ref is None:
                env[e.name] = e.value or ""
                continue
            try:
                secret = self.core.read_namespaced_secret(ref.name, self.namespace)
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise
            if ref.key not in (secret.data or {}):
                return None
            env[e.name] = base64.b64decode(secret.data[ref.key]).decode()
        return env

    def _start(self, sts: Any) -> subprocess.Popen | None:
        name = sts.metadata.name
        pod = self.workdir / "pods" / name
        pod.mkdir(parents=True, exist_ok=True)
        (pod / "port").unlink(missing_ok=True)
        template = sts.spec.template.spec
        container = template.containers[0]
        volumes = {v.name: v for v in template.volumes}
        cm = self.core.read_namespaced_config_map(volumes["config"].config_map.name, self.namespace)
        claim = volumes["storage"].persistent_volume_claim.claim_name
        storage = self.workdir / "volumes" / claim
        storage.mkdir(parents=True, exist_ok=True)
        env = self._env(container)
        if env is None:
            return None
        argv = mounted_command(list(container.command), cm.data, pod, storage, self.pod_ips[name])
        return self.runtime.start(argv, env, [pod, storage], pod / "log", cwd=pod)

    def _sync_claim(self, pvc: Any) -> None:
        name = pvc.metadata.name
        if pvc.metadata.deletion_timestamp:
            in_use = any(p.poll() is None for s, p in self.processes.items() if name.startswith(s))
            if not in_use and "kubernetes.io/pvc-protection" in (pvc.metadata.finalizers or []):
                finalizers = [f for f in pvc.metadata.finalizers if f != "kubernetes.io/pvc-protection"]
                try:
                    self.core.patch_namespaced_persistent_volume_claim(
                        name, self.namespace, {"metadata": {"finalizers": finalizers or None}})
                except ApiException as exc:
                    if exc.status != 404:
                        raise
                shutil.rmtree(self.workdir / "volumes" / name, ignore_errors=True)
            return
        if (pvc.status is None or pvc.status.phase != "Bound") and pvc.spec.storage_class_name != "unavailable":
            self.core.patch_namespaced_persistent_volume_claim_status(
                name, self.namespace, {"status": {"phase": "Bound", "accessModes": pvc.spec.access_modes,
                                                  "capacity": pvc.spec.resources.requests}})


class FleetKubelet(FakeKubelet):
    """The same stand-in, for many pipelines served by one fleet process (``bench/fleet_process.py``):
    a pod's container is a registration with the fleet, killing it is unregistering it, and the
    pod's IP is the loopback address the fleet serves its pipeline at (``http://127.a.b.c:8080``).

    It writes what :class:`FakeKubelet` writes (the pod, its status, ``readyReplicas``, the claim's
    binding, the pvc-protection finalizer's removal), and scales to a thousand StatefulSets: a round is
    two list calls and one request to the fleet whatever their number, objects are read as JSON (no
    client models), and a pipeline's own reads (its ConfigMap and token Secret) happen only when its
    container starts. ``pause()`` stops the rounds, so that the API server sees only the operator.
    ``max_workloads`` keeps, per Pipeline uid, the most StatefulSets a round saw at once, and
    ``max_registrations`` the most times one pipeline was registered with no kill in between (a
    second workload while the first runs), both of which must stay 1.
    """

    def __init__(self, kubeconfig: Path, namespace: str, workdir: Path, fleet_url: str,
                 interval: float = 0.5, workers: int = 8) -> None:
        super().__init__(kubeconfig, namespace, workdir)
        self.name = f"fleet-kubelet-{namespace}"
        self.fleet_url = fleet_url.rstrip("/")
        self.interval = interval
        self.workers = workers
        self.running = threading.Event()  # cleared: paused
        self.running.set()
        self.idle = threading.Event()  # set while paused and no round is under way
        self.registered: dict[str, str] = {}  # StatefulSet name -> "namespace/pipeline"
        self.max_workloads: dict[str, int] = {}
        self.max_registrations: dict[str, int] = {}
        self._live: dict[str, int] = {}  # "namespace/pipeline" -> registrations not killed

    def run(self) -> None:
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(self.workers, thread_name_prefix=self.name) as pool:
            while not self.stop_flag.is_set():
                if not self.running.is_set():
                    self.idle.set()
                    self.stop_flag.wait(0.05)
                    continue
                self.idle.clear()
                try:
                    self.sync_fleet(pool)
                except ApiException as exc:
                    if exc.status not in (404, 409):
                        self.errors.append(repr(exc))
                except Exception as exc:  # noqa: BLE001 - reported by whoever runs it
                    self.errors.append(repr(exc))
                self.stop_flag.wait(self.interval)

    def pause(self, timeout: float = 60.0) -> None:
        """Stop the rounds; returns once the round under way, if any, has ended."""
        self.running.clear()
        if not self.idle.wait(timeout):
            raise TimeoutError(f"the fleet kubelet's round did not end within {timeout:.0f}s")

    def resume(self) -> None:
        self.running.set()

    def stop(self) -> None:
        self.stop_flag.set()
        self.join(30)
        for name in list(self.registered):
            try:
                self.kill_pod(name)
            except OSError:  # the fleet is gone already: so are its pipelines
                break

    def kill_pod(self, sts_name: str) -> None:
        key = self.registered.get(sts_name)
        if key is not None:
            self._fleet("DELETE", f"/fleet/pipelines/{key}")
            self._live[key] = max(0, self._live.get(key, 0) - 1)

    # -- one round ----------------------------------------------------------------------------

    def _fleet(self, method: str, path: str, body: Any = None) -> Any:
        import urllib.error
        import urllib.request
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.fleet_url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 404 and method == "DELETE":
                return None
            raise
        return json.loads(raw) if raw else None

    def _list(self, kind: str) -> list[dict[str, Any]]:
        """Every object of ``kind`` in the namespace, from the API server's watch cache (``resourceVersion=0``:
        no read of etcd, as the informers of the real controllers)."""
        if kind == "statefulsets":
            response = self.apps.list_namespaced_stateful_set(self.namespace, resource_version="0",
                                                              _preload_content=False)
        else:
            response = self.core.list_namespaced_persistent_volume_claim(self.namespace, resource_version="0",
                                                                         _preload_content=False)
        return json.loads(response.data)["items"]

    def sync_fleet(self, pool: Any) -> None:
        ns = self.namespace
        statefulsets = {s["metadata"]["name"]: s for s in self._list("statefulsets")}
        claims = {c["metadata"]["name"]: c for c in self._list("persistentvolumeclaims")}
        served: dict[str, dict[str, Any]] = self._fleet("GET", "/fleet/pipelines")
        per_uid: dict[str, int] = {}
        for sts in statefulsets.values():
            uid = (sts["metadata"].get("labels") or {}).get("dataflow.dev/pipeline-uid", "")
            per_uid[uid] = per_uid.get(uid, 0) + 1
        for uid, count in per_uid.items():
            self.max_workloads[uid] = max(self.max_workloads.get(uid, 0), count)
        to_start, to_report = [], []
        for name, sts in statefulsets.items():
            key = f"{ns}/{sts['metadata']['ownerReferences'][0]['name']}"
            if name not in self.registered:
                claim = claims.get(self._claim_of(sts), {})
                if (claim.get("status") or {}).get("phase") == "Bound":
                    to_start.append((name, sts, key))
                continue
            state = served.get(key)
            if state is not None and state["listening"] and name not in self.ready:
                to_report.append((name, sts, key, state["address"], None))
            elif state is None or state["exit_code"] is not None:
                to_report.append((name, sts, key, None, state["exit_code"] if state else None))
        for name, key, started in pool.map(lambda item: (item[0], item[2], self._start_fleet(*item)), to_start):
            if started:
                self._registered(name, key)
        for name, _, _, address, _ in to_report:
            if address is not None:  # the pod's IP: the loopback address the fleet serves the pipeline at
                self.pod_ips[name] = pod_ip_of(address)
        for name, ready, restart in pool.map(lambda item: self._report(*item), to_report):
            if ready:
                self.ready.add(name)
            elif name in self.ready:
                self.ready.discard(name)
            if restart:
                self._live[self.registered[name]] = max(0, self._live.get(self.registered[name], 0) - 1)
                self._registered(name, self.registered[name])
        for name in [n for n in self.registered if n not in statefulsets]:  # deleted: the pod goes
            self._remove_pod(name)
            del self.registered[name]
        in_use = {self._claim_of(statefulsets[n]) for n in self.registered if n in statefulsets}
        for claim in claims.values():
            self._sync_claim_json(claim, in_use)

    def _registered(self, name: str, key: str) -> None:
        self.registered[name] = key
        self._live[key] = self._live.get(key, 0) + 1
        self.max_registrations[key] = max(self.max_registrations.get(key, 0), self._live[key])

    @staticmethod
    def _claim_of(sts: dict[str, Any]) -> str:
        volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
        return str(volumes["storage"]["persistentVolumeClaim"]["claimName"])

    def _report(self, name: str, sts: dict[str, Any], key: str, address: str | None,
                exit_code: int | None) -> tuple[str, bool, bool]:
        """Write a pipeline's readiness (it listens at ``address``); a container that exited is restarted
        (registered again): (its name, whether it is ready, whether it was restarted)."""
        if address is not None:
            self._set_ready_json(sts, 1)
            self._pod_status(name, ready=True)
            return name, True, False
        if name in self.ready:
            self._set_ready_json(sts, 0)
        self.restarts[name] = self.restarts.get(name, 0) + 1
        self._pod_status(name, ready=False, exit_code=exit_code)
        return name, False, self._start_fleet(name, sts, key)

    def _set_ready_json(self, sts: dict[str, Any], ready: int) -> None:
        status = {"replicas": 1, "readyReplicas": ready, "availableReplicas": ready, "currentReplicas": 1,
                  "updatedReplicas": 1, "observedGeneration": sts["metadata"]["generation"]}
        try:
            self.apps.patch_namespaced_stateful_set_status(sts["metadata"]["name"], self.namespace,
                                                           {"status": status})
        except ApiException as exc:
            if exc.status != 404:
                raise

    def _read_json(self, kind: str, name: str) -> dict[str, Any] | None:
        read = self.core.read_namespaced_secret if kind == "secret" else self.core.read_namespaced_config_map
        try:
            return json.loads(read(name, self.namespace, _preload_content=False).data)  # type: ignore[no-any-return]
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _env_json(self, container: dict[str, Any]) -> dict[str, str] | None:
        """:meth:`FakeKubelet._env` of a container as JSON."""
        env: dict[str, str] = {}
        for e in container.get("env") or []:
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref is None:
                env[e["name"]] = e.get("value") or ""
                continue
            secret = self._read_json("secret", ref["name"])
            if secret is None or ref["key"] not in (secret.get("data") or {}):
                return None
            env[e["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
        return env

    def _start_fleet(self, name: str, sts: dict[str, Any], key: str) -> bool:
        """Create the pod (once) and register its container with the fleet, with the arguments and
        environment of its command line; False while its ConfigMap or Secret is missing."""
        template = sts["spec"]["template"]
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": f"{name}-0", "namespace": self.namespace,
                            "labels": template["metadata"]["labels"],
                            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": name,
                                                 "uid": sts["metadata"]["uid"], "controller": True,
                                                 "blockOwnerDeletion": True}]},
               "spec": template["spec"]}
        try:
            self.core.create_namespaced_pod(self.namespace, pod, _preload_content=False)
        except ApiException as exc:
            if exc.status != 409:
                raise
        container = template["spec"]["containers"][0]
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        configmap = self._read_json("configmap", volumes["config"]["configMap"]["name"])
        env = self._env_json(container)
        if configmap is None or env is None:
            return False
        args = list(container["command"])
        assert args[:2] == ["pipeline-operator", "pipeline-process"], args
        flags: dict[str, str] = {}
        it = iter(args[2:])
        for flag in it:
            flags[flag] = "" if flag == "--silent-bootstrap" else next(it)  # the one flag without a value
        storage = self.workdir / "volumes" / self._claim_of(sts)
        from pipeline_operator.feldera.launch import reference_program
        self._fleet("PUT", f"/fleet/pipelines/{key}", {
            "storage": str(storage), "program": reference_program(json.loads(configmap["data"]["config.json"])),
            "initial": flags.get("--initial", "running"), "bootstrap_policy": flags.get("--bootstrap-policy", "allow"),
            "debug_routes": env.get("PIPELINE_DEBUG_ROUTES") == "1", "env": env})
        return True

    def _sync_claim_json(self, pvc: dict[str, Any], in_use: set[str]) -> None:
        name = pvc["metadata"]["name"]
        if pvc["metadata"].get("deletionTimestamp"):
            finalizers = pvc["metadata"].get("finalizers") or []
            if name not in in_use and "kubernetes.io/pvc-protection" in finalizers:
                rest = [f for f in finalizers if f != "kubernetes.io/pvc-protection"]
                try:
                    self.core.patch_namespaced_persistent_volume_claim(
                        name, self.namespace, {"metadata": {"finalizers": rest or None}})
                except ApiException as exc:
                    if exc.status != 404:
                        raise
                shutil.rmtree(self.workdir / "volumes" / name, ignore_errors=True)
            return
        spec = pvc["spec"]
        if (pvc.get("status") or {}).get("phase") != "Bound" and spec.get("storageClassName") != "unavailable":
            self.core.patch_namespaced_persistent_volume_claim_status(
                name, self.namespace, {"status": {"phase": "Bound", "accessModes": spec["accessModes"],
                                                  "capacity": spec["resources"]["requests"]}})
