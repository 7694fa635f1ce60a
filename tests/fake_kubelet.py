"""Standing in for what the test API server lacks: the StatefulSet controller and kubelet, the
PersistentVolume controller and the PVC-protection controller, for one namespace.

It does what those write through the real API, nothing more: for each StatefulSet of a pipeline
it creates the pod ``<name>-0`` (as the StatefulSet controller does), runs the container's command
as a local process (the reference pipeline process, reading the ConfigMap's program and a local
directory standing for the volume), reports the pod's status and ``readyReplicas`` once the
process listens, and restarts a process that exits, counting restarts and reporting
CrashLoopBackOff, as the kubelet does; it binds PersistentVolumeClaims (except those of a StorageClass named
``unavailable``, which stay Pending, as with no provisioner); it removes the pvc-protection
finalizer of a deleted claim no process uses. The operator reaches the processes through its
``--dev-endpoint-overrides`` file, which this writes.

By default a container's command runs as a process of this test environment's Python; with a
``runtime`` (tests/oci.py) it runs in a container of the operator's image instead.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

_ENDPOINTS_LOCK = threading.Lock()


class ContainerRuntime:
    """How the kubelet starts and kills a container: ``start(argv, env, paths, log)`` runs the
    container's command ``argv`` (``pipeline-operator pipeline-process ...``) with ``env``, the host
    ``paths`` it uses (program, port file's folder, volume) made available at the same paths;
    ``kill(process)`` ends it at once."""

    def start(self, argv: list[str], env: dict[str, str], paths: list[Path], log: Path) -> subprocess.Popen:
        rewritten = [sys.executable, "-m", "pipeline_operator.cli", *argv[1:]]
        with open(log, "ab") as out:
            return subprocess.Popen(rewritten, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)

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
        self.overrides = workdir / "endpoints.json"
        self.overrides.parent.mkdir(parents=True, exist_ok=True)
        self.overrides.write_text("{}")
        self.processes: dict[str, subprocess.Popen] = {}  # StatefulSet name -> process
        self.restarts: dict[str, int] = {}
        self.ready: set[str] = set()
        self.endpoints: dict[str, str] = {}
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
                pipeline = sts.metadata.owner_references[0].name
                self.endpoints[f"{ns}/{pipeline}"] = f"http://127.0.0.1:{port_file.read_text().strip()}"
                self._write_endpoints()
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
                self.kill_pod(name)
                del self.processes[name]
                self.ready.discard(name)
                self.restarts.pop(name, None)
                try:
                    self.core.delete_namespaced_pod(f"{name}-0", ns, grace_period_seconds=0)
                except ApiException as exc:
                    if exc.status != 404:
                        raise
        for pvc in self.core.list_namespaced_persistent_volume_claim(ns).items:
            self._sync_claim(pvc)

    def _create_pod(self, sts: Any) -> None:
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
        status = {"phase": "Running" if ready else "Pending",
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

    def _write_endpoints(self) -> None:
        with _ENDPOINTS_LOCK:  # kubelets of several namespaces may share one file
            self._merge_endpoints()

    def _merge_endpoints(self) -> None:
        try:
            merged = json.loads(self.overrides.read_text())
        except (OSError, ValueError):
            merged = {}
        merged.update(self.endpoints)
        tmp = self.overrides.with_suffix(f".{self.namespace}.tmp")
        tmp.write_text(json.dumps(merged))
        tmp.replace(self.overrides)

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
        (pod / "program.json").write_text(cm.data["program.json"])
        claim = volumes["storage"].persistent_volume_claim.claim_name
        storage = self.workdir / "volumes" / claim
        storage.mkdir(parents=True, exist_ok=True)
        args = list(container.command)
        assert args[:2] == ["pipeline-operator", "pipeline-process"], args
        rewritten = args[:2]
        it = iter(args[2:])
        for flag in it:
            if flag == "--debug-routes":  # the one flag without a value
                rewritten.append(flag)
                continue
            value = next(it)
            if flag == "--host":
                value = "127.0.0.1"
            elif flag == "--port":
                value = "0"
            elif flag == "--storage":
                value = str(storage)
            elif flag == "--program":
                value = str(pod / "program.json")
            rewritten += [flag, value]
        rewritten += ["--port-file", str(pod / "port")]
        env = self._env(container)
        if env is None:
            return None
        return self.runtime.start(rewritten, env, [pod, storage], pod / "log")

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
