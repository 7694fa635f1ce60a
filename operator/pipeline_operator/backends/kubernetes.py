"""The Kubernetes backend: compute is a StatefulSet (one replica), a Service, a ConfigMap, the
Secret holding the pipeline's control token and (with ``--network-policies``) a NetworkPolicy;
storage is a PersistentVolumeClaim. This is what Feldera's enterprise edition does.

Every child carries an owner reference to its Pipeline (the controller reference), the
``app.kubernetes.io/*`` labels and ``dataflow.dev/pipeline-uid``, never a copy of the Pipeline's
labels or annotations. An object is the operator's own only with both the label and the controller
reference: a label alone is easy to put on anything, and the operator must never adopt or delete an
object someone else made. Creation is idempotent (an existing object that is ours is adopted), and
deletion is explicit: the operator deletes what it created and waits until it is gone, without
relying on garbage collection.

The control token lives exactly as long as the compute: provisioning creates the Secret (or adopts
the one left by an interrupted provisioning), the pod reads it through ``secretKeyRef``, and
deprovisioning deletes it with the StatefulSet. A stopped pipeline leaves no credential behind, and
every start gets a fresh token; the operator reads the token back from the Secret (after a restart
too), so the token it sends is always the one the pod was started with.

A pipeline is reached through its Service (``http://<service>.<namespace>.svc:8080``). For tests
and local development only, ``--dev-endpoint-overrides FILE`` maps ``namespace/name`` to another
address; it is off by default, because letting anyone choose where the operator sends requests
would be a request-forgery hole.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
import logging
import secrets
from pathlib import Path
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException
from kubernetes.utils import parse_quantity

from ..core.lifecycle import ComputeObservation, ComputeState
from ..identity import PipelineKey
from ..kube import Forbidden, Kube
from ..models import API_GROUP, API_VERSION, KIND, BootstrapPolicy, PipelineSpec, RuntimeDesiredStatus
from ..settings import OperatorSettings

log = logging.getLogger(__name__)


def _reason(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except (ValueError, AttributeError):
        return str(exc.reason)

PORT = 8080
UID_LABEL = "dataflow.dev/pipeline-uid"
DEFAULT_STORAGE_SIZE = "1Gi"
CRASH_LOOP_RESTARTS = 3  # a pod that restarted this often and is waiting again is failing repeatedly
TOKEN_ENV = "PIPELINE_CONTROL_TOKEN"
DEBUG_ENV = "PIPELINE_DEBUG_ROUTES"
TOKEN_KEY = "token"
# The StatefulSet controller labels each pod with ``controller-revision-hash: <statefulset>-<hash>``,
# a label value of at most 63 characters: a longer StatefulSet name gets no pod at all.
MAX_CHILD_NAME = 52


def child_name(key: PipelineKey) -> str:
    """A DNS-1035 label of at most 52 characters, starting with a letter, unique in the namespace.

    Today's name (``<name>-<uid[:8]>``) is kept whenever it fits, so that existing installations keep
    their objects; a longer one is a truncated base and a hash of namespace, name and uid. The two
    forms never meet: a hashed name is 52 characters with a hex digit where a 52-character name of
    the first form has its last dash."""
    base = key.name.replace(".", "-")[:54].strip("-")
    name = f"{base}-{key.uid[:8]}"
    name = name if name[0].isalpha() else f"p-{name}"[:63]
    if len(name) <= MAX_CHILD_NAME:
        return name
    digest = hashlib.sha256(f"{key.namespace}/{key.name}/{key.uid}".encode()).hexdigest()[:10]
    base = key.name.replace(".", "-")
    base = (base if base[0].isalpha() else f"p-{base}")[:MAX_CHILD_NAME - 11].rstrip("-")
    return f"{base}-{digest}"


def token_secret_name(key: PipelineKey) -> str:
    return f"{child_name(key)}-token"


def image_allowed(image: str, prefixes: list[str] | tuple[str, ...]) -> bool:
    """Whether ``image`` is one of ``prefixes`` or below one, matched on a boundary: ``ghcr.io/x/op``
    allows ``ghcr.io/x/op``, ``ghcr.io/x/op:1`` and ``ghcr.io/x/op@sha256:...`` but not
    ``ghcr.io/x/op-evil``; a prefix ending with ``/`` allows everything below it; ``*`` allows any."""
    for prefix in prefixes:
        if prefix == "*":
            return True
        if prefix.endswith("/"):
            if image.startswith(prefix) and len(image) > len(prefix):
                return True
        elif image == prefix or image.startswith((prefix + ":", prefix + "@")):
            return True
    return False


def parse_labels(text: str) -> dict[str, str]:
    """``k=v,k=v`` as a dict (the form of ``--operator-pod-labels``)."""
    out: dict[str, str] = {}
    for part in text.split(","):
        if part.strip():
            k, _, v = part.partition("=")
            out[k.strip()] = v.strip()
    return out


@dataclasses.dataclass(frozen=True)
class KubernetesOptions:
    """What the backend takes from the operator's settings."""
    default_image: str
    image_prefixes: tuple[str, ...] = ("*",)
    image_pull_policy: str = "IfNotPresent"
    default_requests: dict[str, str] = dataclasses.field(default_factory=dict)
    default_limits: dict[str, str] = dataclasses.field(default_factory=dict)
    network_policies: bool = False
    operator_namespace: str = ""
    operator_pod_labels: dict[str, str] = dataclasses.field(default_factory=dict)
    debug_routes: bool = False
    endpoint_overrides: Path | None = None

    @classmethod
    def from_settings(cls, settings: OperatorSettings) -> KubernetesOptions:
        def present(**values: str) -> dict[str, str]:
            return {k: v for k, v in values.items() if v}
        return cls(default_image=settings.pipeline_image, image_prefixes=tuple(settings.image_prefixes()),
                   image_pull_policy=settings.pipeline_image_pull_policy,
                   default_requests=present(cpu=settings.pipeline_cpu_request,
                                            memory=settings.pipeline_memory_request),
                   default_limits=present(cpu=settings.pipeline_cpu_limit, memory=settings.pipeline_memory_limit),
                   network_policies=settings.network_policies, operator_namespace=settings.operator_namespace,
                   operator_pod_labels=parse_labels(settings.operator_pod_labels),
                   debug_routes=settings.pipeline_debug_routes, endpoint_overrides=settings.dev_endpoint_overrides)


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


def _less(a: str, b: str) -> bool:
    try:
        return bool(parse_quantity(a) < parse_quantity(b))
    except ValueError:
        return False


def container_resources(spec: PipelineSpec, options: KubernetesOptions) -> dict[str, dict[str, str]]:
    """The spec's requests and limits, each key the spec leaves out filled from the operator's
    defaults. A default never contradicts the spec: a default request above the spec's limit becomes
    the limit, and a default limit below the spec's request becomes the request (Kubernetes refuses a
    request above its limit)."""
    given = spec.deployment.resources
    requests = _quantities(given.requests) if given is not None else {}
    limits = _quantities(given.limits) if given is not None else {}
    out_requests, out_limits = dict(requests), dict(limits)
    for k, default in options.default_requests.items():
        if k not in requests:
            out_requests[k] = limits[k] if k in limits and _less(limits[k], default) else default
    for k, default in options.default_limits.items():
        if k not in limits:
            out_limits[k] = out_requests[k] if k in out_requests and _less(default, out_requests[k]) else default
    return {part: values for part, values in (("requests", out_requests), ("limits", out_limits)) if values}


def network_policy(key: PipelineKey, spec: PipelineSpec, options: KubernetesOptions) -> dict[str, Any]:
    """Ingress to the pipeline's port only from the operator's pods and the peers the spec lists."""
    name = child_name(key)
    operator_peer: dict[str, Any] = {"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": options.operator_namespace or key.namespace}}}
    operator_peer["podSelector"] = {"matchLabels": dict(options.operator_pod_labels)}
    peers = [operator_peer, *(p.to_resource() for p in spec.deployment.allow_ingress_from or [])]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": _meta(key, name),
            "spec": {"podSelector": {"matchLabels": {"app.kubernetes.io/instance": name, UID_LABEL: key.uid}},
                     "policyTypes": ["Ingress"],
                     "ingress": [{"from": peers, "ports": [{"port": PORT, "protocol": "TCP"}]}]}}


def build_objects(key: PipelineKey, spec: PipelineSpec, artifact: dict[str, Any], initial: RuntimeDesiredStatus,
                  options: KubernetesOptions,
                  bootstrap_policy: BootstrapPolicy = BootstrapPolicy.AWAIT_APPROVAL) -> dict[str, dict[str, Any]]:
    """The ConfigMap, Service, StatefulSet, PersistentVolumeClaim and NetworkPolicy of one pipeline
    (the token Secret is made apart: its content is created once and never rebuilt)."""
    name = child_name(key)
    selector = {"app.kubernetes.io/instance": name, UID_LABEL: key.uid}
    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(key, name),
                 "data": {"program.json": json.dumps(artifact),
                          "runtime.json": json.dumps({"pipeline": key.name, "initial": initial.value})}}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": _meta(key, name),
               "spec": {"type": "ClusterIP", "selector": selector,
                        "ports": [{"name": "http", "port": PORT, "targetPort": PORT, "protocol": "TCP"}]}}
    command = ["pipeline-operator", "pipeline-process", "--host", "0.0.0.0", "--port", str(PORT),
               "--storage", "/storage", "--program", "/config/program.json",
               "--initial", initial.value.lower(), "--bootstrap-policy", bootstrap_policy.feldera,
               "--marker", key.uid]
    if options.debug_routes:
        command.append("--debug-routes")
    # The token comes last and from the Secret only, and debug routes only from the operator: a
    # spec's variables of those names are dropped.
    env: list[dict[str, Any]] = [{"name": e.name, "value": e.value} for e in spec.deployment.env
                                 if e.name not in (TOKEN_ENV, DEBUG_ENV)]
    env.append({"name": TOKEN_ENV, "valueFrom": {"secretKeyRef": {"name": f"{name}-token", "key": TOKEN_KEY}}})
    container = {
        "name": "pipeline",
        "image": spec.deployment.image or options.default_image,
        "imagePullPolicy": options.image_pull_policy,
        "command": command,
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        "env": env,
        "resources": container_resources(spec, options),
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
    objects = {"configmap": configmap, "service": service, "statefulset": statefulset, "pvc": pvc}
    if options.network_policies:
        objects["networkpolicy"] = network_policy(key, spec, options)
    return objects


def token_secret(key: PipelineKey) -> dict[str, Any]:
    """A new control token (the pod gets it as ``$PIPELINE_CONTROL_TOKEN``, the operator sends it)."""
    token = base64.b64encode(secrets.token_urlsafe(32).encode()).decode()
    return {"apiVersion": "v1", "kind": "Secret", "metadata": _meta(key, token_secret_name(key)),
            "type": "Opaque", "immutable": True, "data": {TOKEN_KEY: token}}


class Invalid(Exception):
    """The API server refused an object the operator built from a spec (422)."""


class KubernetesBackend:
    def __init__(self, kube: Kube, options: KubernetesOptions) -> None:
        self.kube = kube
        self.options = options
        self.endpoint_overrides = options.endpoint_overrides
        self._clients = {"apps": kube.apps, "core": kube.core,
                         "networking": kubernetes.client.NetworkingV1Api(kube.api_client)}
        self._problems: dict[str, str] = {}  # pipeline uid -> why a child could not be adopted or created
        self._tokens: dict[str, str] = {}  # pipeline uid -> its control token (the Secret's)
        self._endpoint_uids: dict[str, str] = {}  # what endpoint() returned -> pipeline uid

    @classmethod
    def from_settings(cls, kube: Kube, settings: OperatorSettings) -> KubernetesBackend:
        return cls(kube, KubernetesOptions.from_settings(settings))

    # -- API calls ---------------------------------------------------------------------------

    # kind -> (client, method suffix, resource name in RBAC)
    _KINDS = {"statefulset": ("apps", "stateful_set", "statefulsets"),
              "service": ("core", "service", "services"),
              "configmap": ("core", "config_map", "configmaps"),
              "pvc": ("core", "persistent_volume_claim", "persistentvolumeclaims"),
              "pod": ("core", "pod", "pods"),
              "secret": ("core", "secret", "secrets"),
              "networkpolicy": ("networking", "network_policy", "networkpolicies")}

    def _method(self, verb: str, kind: str) -> tuple[Any, str]:
        client, suffix, resource = self._KINDS[kind]
        return getattr(self._clients[client], f"{verb}_namespaced_{suffix}"), resource

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
            if exc.status == 422:
                raise Invalid(_reason(exc)) from exc
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
        """Labelled with the Pipeline's uid AND controlled by it (a label alone proves nothing)."""
        if obj is None or (obj.metadata.labels or {}).get(UID_LABEL) != key.uid:
            return False
        return any(ref.controller and ref.uid == key.uid for ref in obj.metadata.owner_references or [])

    async def _remember_token(self, key: PipelineKey, secret: Any | None = None) -> None:
        """Learn the pipeline's control token from its Secret (read it unless given)."""
        if secret is None:
            secret = await self._read("secret", key.namespace, token_secret_name(key))
        if secret is None or not self._ours(secret, key):
            return
        encoded = (secret.data or {}).get(TOKEN_KEY)
        try:
            token = base64.b64decode(encoded).decode() if encoded else ""
        except (ValueError, UnicodeDecodeError):
            token = ""
        if token:
            self._tokens[key.uid] = token

    # -- the Backend protocol ------------------------------------------------------------------

    async def observe_compute(self, key: PipelineKey) -> ComputeObservation:
        name = child_name(key)
        ns = key.namespace
        sts, svc, cm = await asyncio.gather(self._read("statefulset", ns, name), self._read("service", ns, name),
                                            self._read("configmap", ns, name))
        problem = self._problems.get(key.uid)
        if problem:
            return ComputeObservation(state=ComputeState.FAILED, message=problem)
        if sts is not None and key.uid not in self._tokens:
            await self._remember_token(key)  # after an operator restart
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

    def _fail(self, key: PipelineKey, message: str) -> None:
        self._problems[key.uid] = message
        log.warning("%s: %s", key, message)

    async def provision(self, key: PipelineKey, spec: PipelineSpec, artifact: dict[str, Any],
                        initial: RuntimeDesiredStatus, bootstrap_policy: BootstrapPolicy) -> None:
        image = spec.deployment.image
        if image is not None and not image_allowed(image, self.options.image_prefixes):
            self._fail(key, (f"spec.deployment.image {image!r} is not allowed: the operator runs only images "
                             f"starting with {', '.join(self.options.image_prefixes)}; use such an image, or "
                             "have the operator's administrator allow it (flag --pipeline-image-prefix, "
                             "chart value pipelines.imagePrefixes)"))
            return
        objects = build_objects(key, spec, artifact, initial, self.options, bootstrap_policy)
        objects["secret"] = token_secret(key)
        ns = key.namespace
        # Storage first (it outlives compute), then the token, the program, the Service, the
        # NetworkPolicy (before the pod can serve) and the StatefulSet.
        for kind in ("pvc", "secret", "configmap", "service", "networkpolicy", "statefulset"):
            body = objects.get(kind)
            if body is None:
                continue
            name = body["metadata"]["name"]
            existing = await self._read(kind, ns, name)
            if existing is None:
                try:
                    await self._create(kind, body)
                except Invalid as exc:
                    what = ("spec.deployment.allowIngressFrom" if kind == "networkpolicy" else "spec.deployment")
                    self._fail(key, f"the API server refused {body['kind']} {ns}/{name}: {exc}; correct {what}")
                    return
                existing = await self._read(kind, ns, name)
            if existing is not None and not self._ours(existing, key):
                self._fail(key, f"{body['kind']} {ns}/{name} exists and does not belong to this pipeline "
                                "(no controller reference to it); delete or rename it")
                return
            if kind == "secret":
                await self._remember_token(key, existing)
        self._problems.pop(key.uid, None)

    async def deprovision(self, key: PipelineKey) -> None:
        name = child_name(key)
        self._problems.pop(key.uid, None)
        self._tokens.pop(key.uid, None)
        for kind, child in (("statefulset", name), ("service", name), ("configmap", name),
                            ("networkpolicy", name), ("secret", token_secret_name(key))):
            existing = await self._read(kind, key.namespace, child)
            if existing is not None and self._ours(existing, key) and not existing.metadata.deletion_timestamp:
                await self._delete(kind, key.namespace, child)

    async def storage_exists(self, key: PipelineKey) -> bool:
        return await self._read("pvc", key.namespace, f"{child_name(key)}-storage") is not None

    async def clear_storage(self, key: PipelineKey) -> None:
        name = f"{child_name(key)}-storage"
        existing = await self._read("pvc", key.namespace, name)
        if existing is not None and self._ours(existing, key) and not existing.metadata.deletion_timestamp:
            await self._delete("pvc", key.namespace, name)

    def describe_compute(self, key: PipelineKey) -> str:
        return f"StatefulSet {key.namespace}/{child_name(key)}"

    def describe_storage(self, key: PipelineKey) -> str:
        return f"PersistentVolumeClaim {key.namespace}/{child_name(key)}-storage"

    def endpoint(self, key: PipelineKey) -> str | None:
        if self.endpoint_overrides is not None:
            try:
                mapping = json.loads(self.endpoint_overrides.read_text())
            except (OSError, ValueError):
                mapping = {}
            found = mapping.get(f"{key.namespace}/{key.name}")
            if found:
                self._endpoint_uids[str(found)] = key.uid
                return str(found)
        endpoint = f"http://{child_name(key)}.{key.namespace}.svc:{PORT}"
        self._endpoint_uids[endpoint] = key.uid
        return endpoint

    def control_token(self, endpoint: str) -> str | None:
        """The control token of the pipeline ``endpoint()`` last answered ``endpoint`` for."""
        uid = self._endpoint_uids.get(endpoint)
        return self._tokens.get(uid) if uid is not None else None

    async def forget(self, key: PipelineKey) -> None:
        """Nothing to remove: the pipeline's objects are deleted with its compute and storage."""
        self._problems.pop(key.uid, None)
        self._tokens.pop(key.uid, None)
        for endpoint in [e for e, uid in self._endpoint_uids.items() if uid == key.uid]:
            del self._endpoint_uids[endpoint]

    async def close(self) -> None:
        return None
