"""The Kubernetes backend: compute is a StatefulSet (one replica), a Service and a ConfigMap;
storage is a PersistentVolumeClaim. This is what Feldera's enterprise edition does.

Every child carries an owner reference to its Pipeline, the ``app.kubernetes.io/*`` labels and
``dataflow.dev/pipeline-uid`` (how the operator recognises what is its own), never a copy of the
Pipeline's labels or annotations. Creation is idempotent (an existing object that is ours is
adopted), and deletion is explicit: the operator deletes what it created and waits until it is
gone, without relying on garbage collection.

A pipeline is reached through its Service (``http://<service>.<namespace>.svc:8080``). For tests
and local development only, ``--dev-endpoint-overrides FILE`` maps ``namespace/name`` to another
address; it is off by default, because letting anyone choose where the operator sends requests
would be a request-forgery hole.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

from kubernetes.client.exceptions import ApiException

from ..core.lifecycle import ComputeObservation, ComputeState
from ..identity import PipelineKey
from ..kube import Forbidden, Kube
from ..models import API_GROUP, API_VERSION, KIND, BootstrapPolicy, PipelineSpec, RuntimeDesiredStatus

log = logging.getLogger(__name__)

PORT = 8080
UID_LABEL = "dataflow.dev/pipeline-uid"
DEFAULT_STORAGE_SIZE = "1Gi"
CRASH_LOOP_RESTARTS = 3  # a pod that restarted this often and is waiting again is failing repeatedly


def child_name(key: PipelineKey) -> str:
    """A DNS-1035 label (Service names): at most 63 characters, starting with a letter."""
    base = key.name.replace(".", "-")[:54].strip("-")
    name = f"{base}-{key.uid[:8]}"
    return name if name[0].isalpha() else f"p-{name}"[:63]


def labels(key: PipelineKey) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "pipeline",
        "app.kubernetes.io/instance": child_name(key),
        "app.kubernetes.io/component": "pipeline",
        "app.kubernetes.io/part-of": "pipeline-operator",
        "app.kubernetes.io/managed-by": "pipeline-operator",
        UID_LABEL: key.uid,
    }


def owner(key: PipelineKey) -> dict[str, Any]:
    return {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": KIND, "name": key.name, "uid": key.uid,
            "controller": True, "blockOwnerDeletion": True}


def _meta(key: PipelineKey, name: str) -> dict[str, Any]:
    return {"name": name, "namespace": key.namespace, "labels": labels(key), "ownerReferences": [owner(key)]}


def _quantities(values: Any) -> dict[str, str]:
    return {k: str(v) for k, v in (values.model_dump(exclude_none=True) if values else {}).items()}


def build_objects(key: PipelineKey, spec: PipelineSpec, artifact: dict[str, Any], initial: RuntimeDesiredStatus,
                  default_image: str,
                  bootstrap_policy: BootstrapPolicy = BootstrapPolicy.AWAIT_APPROVAL) -> dict[str, dict[str, Any]]:
    """The ConfigMap, Service, StatefulSet and PersistentVolumeClaim of one pipeline."""
    name = child_name(key)
    selector = {"app.kubernetes.io/instance": name, UID_LABEL: key.uid}
    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(key, name),
                 "data": {"program.json": json.dumps(artifact),
                          "runtime.json": json.dumps({"pipeline": key.name, "initial": initial.value})}}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": _meta(key, name),
               "spec": {"type": "ClusterIP", "selector": selector,
                        "ports": [{"name": "http", "port": PORT, "targetPort": PORT, "protocol": "TCP"}]}}
    resources: dict[str, Any] = {}
    if spec.deployment.resources is not None:
        for part in ("requests", "limits"):
            values = _quantities(getattr(spec.deployment.resources, part))
            if values:
                resources[part] = values
    container = {
        "name": "pipeline",
        "image": spec.deployment.image or default_image,
        "command": ["pipeline-operator", "pipeline-process", "--host", "0.0.0.0", "--port", str(PORT),
                    "--storage", "/storage", "--program", "/config/program.json",
                    "--initial", initial.value.lower(), "--bootstrap-policy", bootstrap_policy.feldera,
                    "--marker", key.uid],
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        "env": [{"name": e.name, "value": e.value} for e in spec.deployment.env],
        "resources": resources,
        "readinessProbe": {"tcpSocket": {"port": PORT}, "periodSeconds": 2},
        "securityContext": {"runAsNonRoot": True, "readOnlyRootFilesystem": True,
                            "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "volumeMounts": [{"name": "config", "mountPath": "/config", "readOnly": True},
                         {"name": "storage", "mountPath": "/storage"},
                         {"name": "tmp", "mountPath": "/tmp"}],
    }
    statefulset = {
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": _meta(key, name),
        "spec": {
            "replicas": 1, "serviceName": name, "selector": {"matchLabels": selector},
            "podManagementPolicy": "Parallel",
            "template": {
                "metadata": {"labels": labels(key)},
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                                        "fsGroup": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [container],
                    "volumes": [{"name": "config", "configMap": {"name": name}},
                                {"name": "storage", "persistentVolumeClaim": {"claimName": f"{name}-storage"}},
                                {"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }
    pvc_spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"],
                                "resources": {"requests": {"storage": str(spec.storage.size or DEFAULT_STORAGE_SIZE)}}}
    if spec.storage.storage_class_name:
        pvc_spec["storageClassName"] = spec.storage.storage_class_name
    pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": _meta(key, f"{name}-storage"),
           "spec": pvc_spec}
    return {"configmap": configmap, "service": service, "statefulset": statefulset, "pvc": pvc}


class KubernetesBackend:
    def __init__(self, kube: Kube, default_image: str, endpoint_overrides: Path | None = None) -> None:
        self.kube = kube
        self.default_image = default_image
        self.endpoint_overrides = endpoint_overrides
        self._problems: dict[str, str] = {}  # pipeline uid -> why a child could not be adopted

    # -- API calls ---------------------------------------------------------------------------

    # kind -> (client attribute, method suffix, resource name in RBAC)
    _KINDS = {"statefulset": ("apps", "stateful_set", "statefulsets"),
              "service": ("core", "service", "services"),
              "configmap": ("core", "config_map", "configmaps"),
              "pvc": ("core", "persistent_volume_claim", "persistentvolumeclaims"),
              "pod": ("core", "pod", "pods")}

    def _method(self, verb: str, kind: str) -> tuple[Any, str]:
        client, suffix, resource = self._KINDS[kind]
        return getattr(getattr(self.kube, client), f"{verb}_namespaced_{suffix}"), resource

    async def _read(self, kind: str, namespace: str, name: str) -> Any:
        read, resource = self._method("read", kind)
        try:
            return await self.kube.call(read, name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            if exc.status == 403:
                raise Forbidden(f"the operator may not get {resource} in {namespace}") from exc
            raise

    async def _create(self, kind: str, body: dict[str, Any]) -> None:
        create, resource = self._method("create", kind)
        namespace = body["metadata"]["namespace"]
        try:
            await self.kube.call(create, namespace, body, field_manager=self.kube.field_manager)
        except ApiException as exc:
            if exc.status == 409:
                return  # exists: the caller checks that it is ours
            if exc.status == 403:
                raise Forbidden(f"the operator may not create {resource} in {namespace}") from exc
            raise

    async def _delete(self, kind: str, namespace: str, name: str) -> None:
        delete, resource = self._method("delete", kind)
        try:
            await self.kube.call(delete, name, namespace, propagation_policy="Background")
        except ApiException as exc:
            if exc.status == 404:
                return
            if exc.status == 403:
                raise Forbidden(f"the operator may not delete {resource} in {namespace}") from exc
            raise

    @staticmethod
    def _ours(obj: Any, key: PipelineKey) -> bool:
        return ((obj.metadata.labels or {}).get(UID_LABEL) == key.uid) if obj is not None else False

    # -- the Backend protocol ------------------------------------------------------------------

    async def observe_compute(self, key: PipelineKey) -> ComputeObservation:
        name = child_name(key)
        ns = key.namespace
        sts, svc, cm = await asyncio.gather(self._read("statefulset", ns, name), self._read("service", ns, name),
                                            self._read("configmap", ns, name))
        problem = self._problems.get(key.uid)
        if problem:
            return ComputeObservation(state=ComputeState.FAILED, message=problem)
        if sts is None:
            pod = await self._read("pod", ns, f"{name}-0")
            leftovers = [o for o in (svc, cm, pod) if o is not None]
            if not leftovers:
                return ComputeObservation(state=ComputeState.ABSENT)
            if any(o.metadata.deletion_timestamp for o in leftovers) or pod is not None:
                return ComputeObservation(state=ComputeState.TERMINATING, message="deleting the pipeline's objects")
            return ComputeObservation(state=ComputeState.FAILED,
                                      message=f"StatefulSet {ns}/{name} is gone (deleted outside the operator)")
        if sts.metadata.deletion_timestamp:
            return ComputeObservation(state=ComputeState.TERMINATING, message=f"StatefulSet {name} is being deleted")
        if (sts.status.ready_replicas or 0) >= 1:
            return ComputeObservation(state=ComputeState.READY)
        return await self._why_not_ready(key, name)

    async def _why_not_ready(self, key: PipelineKey, name: str) -> ComputeObservation:
        ns = key.namespace
        pvc, pod = await asyncio.gather(self._read("pvc", ns, f"{name}-storage"), self._read("pod", ns, f"{name}-0"))
        if pod is not None and pod.status is not None:
            for status in pod.status.container_statuses or []:
                waiting = status.state.waiting if status.state else None
                if waiting is not None and (status.restart_count or 0) >= CRASH_LOOP_RESTARTS:
                    return ComputeObservation(state=ComputeState.FAILED, message=(
                        f"pod {name}-0 is failing repeatedly ({status.restart_count} restarts): "
                        f"{waiting.reason}: {waiting.message or ''}".strip()))
                if waiting is not None and waiting.reason:
                    return ComputeObservation(state=ComputeState.PENDING, message=(
                        f"pod {name}-0 container {status.name} is waiting: {waiting.reason}"
                        + (f": {waiting.message}" if waiting.message else "")))
            for condition in pod.status.conditions or []:
                if condition.status != "True" and condition.message:
                    return ComputeObservation(state=ComputeState.PENDING, message=(
                        f"pod {name}-0 {condition.type} is {condition.status}: {condition.message}"))
        if pvc is not None and (pvc.status is None or pvc.status.phase != "Bound"):
            phase = pvc.status.phase if pvc.status else "Pending"
            why = ""
            for condition in (pvc.status.conditions or []) if pvc.status else []:
                if condition.message:
                    why = f": {condition.message}"
            return ComputeObservation(state=ComputeState.PENDING,
                                      message=f"PersistentVolumeClaim {name}-storage is {phase}{why}")
        if pod is None:
            return ComputeObservation(state=ComputeState.PENDING,
                                      message=f"StatefulSet {name} has no pod yet (0/1 replicas ready)")
        return ComputeObservation(state=ComputeState.PENDING, message=f"StatefulSet {name}: 0/1 replicas ready")

    async def provision(self, key: PipelineKey, spec: PipelineSpec, artifact: dict[str, Any],
                        initial: RuntimeDesiredStatus, bootstrap_policy: BootstrapPolicy) -> None:
        objects = build_objects(key, spec, artifact, initial, self.default_image, bootstrap_policy)
        ns = key.namespace
        # Storage first (it outlives compute), then the program, the Service and the StatefulSet.
        for kind in ("pvc", "configmap", "service", "statefulset"):
            body = objects[kind]
            name = body["metadata"]["name"]
            existing = await self._read(kind, ns, name)
            if existing is None:
                await self._create(kind, body)
                existing = await self._read(kind, ns, name)
            if existing is not None and not self._ours(existing, key):
                self._problems[key.uid] = (f"{body['kind']} {ns}/{name} exists and does not belong to this "
                                           "pipeline; delete or rename it")
                log.warning("%s: %s", key, self._problems[key.uid])
                return
        self._problems.pop(key.uid, None)

    async def deprovision(self, key: PipelineKey) -> None:
        name = child_name(key)
        self._problems.pop(key.uid, None)
        for kind in ("statefulset", "service", "configmap"):
            existing = await self._read(kind, key.namespace, name)
            if existing is not None and self._ours(existing, key) and not existing.metadata.deletion_timestamp:
                await self._delete(kind, key.namespace, name)

    async def storage_exists(self, key: PipelineKey) -> bool:
        return await self._read("pvc", key.namespace, f"{child_name(key)}-storage") is not None

    async def clear_storage(self, key: PipelineKey) -> None:
        name = f"{child_name(key)}-storage"
        existing = await self._read("pvc", key.namespace, name)
        if existing is not None and self._ours(existing, key) and not existing.metadata.deletion_timestamp:
            await self._delete("pvc", key.namespace, name)

    def endpoint(self, key: PipelineKey) -> str | None:
        if self.endpoint_overrides is not None:
            try:
                mapping = json.loads(self.endpoint_overrides.read_text())
            except (OSError, ValueError):
                mapping = {}
            found = mapping.get(f"{key.namespace}/{key.name}")
            if found:
                return str(found)
        return f"http://{child_name(key)}.{key.namespace}.svc:{PORT}"

    async def forget(self, key: PipelineKey) -> None:
        """Nothing to remove: the pipeline's objects are deleted with its compute and storage."""
        self._problems.pop(key.uid, None)

    async def close(self) -> None:
        return None
