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

The children are not read on every pass: the backend watches them (one list+watch cache per kind,
``kube/informer.py``, of the objects labelled ``app.kubernetes.io/managed-by=pipeline-operator`` in the
operator's namespaces), so a monitoring pass makes no API call, and a change of a child wakes its
pipeline at once. What the operator creates is written through to the cache, so the next pass sees a
complete set of children; while a watch is down, nothing is concluded from the cache (the pass is
tried again, as when the API server does not answer a GET).

The control token lives exactly as long as the compute: provisioning creates the Secret (or adopts
the one left by an interrupted provisioning), the pod reads it through ``secretKeyRef``, and
deprovisioning deletes it with the StatefulSet. A stopped pipeline leaves no credential behind, and
every start gets a fresh token; the operator reads the token back from the Secret (after a restart
too), so the token it sends is always the one the pod was started with.

A pipeline is reached at its pod's IP (``http://<pod IP>:8080``), never through its Service or any
name: the address comes only from objects the operator owns and has checked. The pod, in the pod cache,
must be ``<child>-0``, labelled with the Pipeline's uid, controlled by the StatefulSet the operator owns
(its controller reference names that StatefulSet's uid), not on the host's network, Running and Ready,
and its ``status.podIP`` (written by the kubelet, which a tenant cannot write) a valid address that no
other pipeline's pod claims in the cache. A Service can be changed by anyone who may edit Services in
the namespace (an ``ExternalName``, another selector, other ports) and a DNS name resolves to whatever
it says, so the operator's polls, its forwarded actions and the HTTP API's passed-through requests
(with the pipeline's control token) would go wherever a tenant chose; a pod IP needs no DNS and no
object the tenant can redirect. The Service stays, for the StatefulSet's pod DNS and for the peers a
spec lets in (``spec.deployment.allowIngressFrom``), and is put back like every other child.

**Owned objects are put back** (controller-runtime's ``Owns()``): provisioning remembers, per pipeline,
a digest of the part of each child the operator sets (:data:`OWNED_FIELDS`: labels, a Service's type,
selector and ports, a StatefulSet's replicas and pod template, a ConfigMap's data, a Secret's type and
data, a NetworkPolicy's spec, a claim's labels) and what rebuilds it (the spec's ``deployment``, the
program as written, the start parameters, compressed). Each cache keeps that digest of its objects
(computed in the watch's thread), not their specs; a child whose digest differs is written back (read,
then replaced, guarded by its resourceVersion) and the put-back is a Kubernetes Event ``ChildRestored``
on the Pipeline naming the fields; a child deleted while the compute runs is created again (the token
Secret with the token the pod was started with). Only fields the operator sets are compared, normalised
as the API server stores them (quantities in canonical form, empty values dropped), so the API server's
defaults (a Service's clusterIP and sessionAffinity, a pod template's dnsPolicy...) never differ. What
is remembered is in memory: after an operator restart or a takeover, the Service and the claim's labels
(which depend only on the Pipeline) are guarded at once, the StatefulSet, ConfigMap, Secret and
NetworkPolicy (which depend on the spec and start parameters of the start that made them) from the
pipeline's next start.

**Deletes are fenced**: every delete carries a uid precondition, the uid of the object the operator
verified as its own, so a same-named object someone made in its place is never deleted.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import dataclasses
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import secrets
import sys
import threading
import urllib.parse
import zlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import kubernetes
import urllib3
from kubernetes.client.exceptions import ApiException
from kubernetes.utils import parse_quantity

from ..core.lifecycle import ComputeObservation, ComputeState
from ..feldera.launch import (
    CONFIG_JSON,
    CONFIG_YAML,
    config_files,
    deployment_id_of,
    launch_args,
    pipeline_config,
    tokio_worker_threads,
)
from ..feldera.launcher import BINARY_ROUTE
from ..feldera_config import RuntimeConfig
from ..identity import PipelineKey
from ..kube.client import Forbidden, KubeClient, Unavailable
from ..kube.informer import Informer
from ..kube.projection import SHARED, FieldProjection, project
from ..models import API_GROUP, API_VERSION, KIND, BootstrapPolicy, DeploymentSpec, PipelineSpec, RuntimeDesiredStatus
from ..settings import OperatorSettings
from . import RUNTIME_CONFIG_USED, LogsUnavailable, pipeline_env

log = logging.getLogger(__name__)


def _reason(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except (ValueError, AttributeError):
        return str(exc.reason)

PORT = 8080
UID_LABEL = "dataflow.dev/pipeline-uid"
# On a PersistentVolumeClaim retained when its Pipeline was deleted (spec.storage.deletionPolicy: Retain):
# the Pipeline's name (its hash when too long for a label value), which the next Pipeline of that name adopts.
RETAINED_LABEL = "dataflow.dev/retained-from"
IMAGE_PULL_REASONS = ("ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull")
DEFAULT_STORAGE_SIZE = "1Gi"
CRASH_LOOP_RESTARTS = 3  # a pod that restarted this often and is waiting again is failing repeatedly
TOKEN_ENV = "PIPELINE_CONTROL_TOKEN"
DEBUG_ENV = "PIPELINE_DEBUG_ROUTES"
TOKEN_KEY = "token"
TOKIO_ENV = "TOKIO_WORKER_THREADS"
CONFIG_PATH = "/config"  # the ConfigMap's mount: config.json and config.yaml
STORAGE_PATH = "/storage"  # the claim's mount: Feldera's storage_config.path
WORK_PATH = "/work"  # the working directory (an emptyDir: the port file)
NO_DEPLOYMENT = "00000000-0000-0000-0000-000000000000"  # a start's objects not built yet
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
    # The operator's HTTP API as pipeline pods reach it (its Service): where the launcher of a pod running a
    # program binary downloads it (``--operator-url``).
    operator_url: str = ""

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
                   debug_routes=settings.pipeline_debug_routes, operator_url=settings.pipeline_binaries_url())


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


def _cpu(cores: float) -> str | None:
    """Feldera's CPU cores as a Kubernetes quantity (``2``, ``500m``); None for what is not a number."""
    if not math.isfinite(cores):
        return None
    millis = round(cores * 1000)
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def feldera_resources(spec: PipelineSpec) -> tuple[dict[str, str], dict[str, str]]:
    """Feldera's ``runtime_config.resources`` as a container's requests and limits: ``cpu_cores_min`` and
    ``memory_mb_min`` are requested, ``cpu_cores_max`` and ``memory_mb_max`` the limits (memory in MB)."""
    config = spec.runtime_config.resources if spec.runtime_config is not None else None
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if config is None:
        return requests, limits
    for out, cpu, memory in ((requests, config.cpu_cores_min, config.memory_mb_min),
                             (limits, config.cpu_cores_max, config.memory_mb_max)):
        cores = _cpu(cpu) if cpu is not None else None
        if cores is not None:
            out["cpu"] = cores
        if memory is not None:
            out["memory"] = f"{memory}M"
    return requests, limits


def container_resources(spec: PipelineSpec, options: KubernetesOptions) -> dict[str, dict[str, str]]:
    """The spec's requests and limits (``deployment.resources``, then what Feldera's
    ``runtime_config.resources`` says of the keys it leaves out), each key both leave out filled from the
    operator's defaults. A default never contradicts the spec: a default request above the spec's limit
    becomes the limit, and a default limit below the spec's request becomes the request (Kubernetes refuses
    a request above its limit)."""
    given = spec.deployment.resources
    feldera_requests, feldera_limits = feldera_resources(spec)
    requests = {**feldera_requests, **(_quantities(given.requests) if given is not None else {})}
    limits = {**feldera_limits, **(_quantities(given.limits) if given is not None else {})}
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


def retained_from(name: str) -> str:
    """The :data:`RETAINED_LABEL` value of a Pipeline's name: the name itself, or a hash of a name longer
    than a label value may be."""
    return name if len(name) <= 63 else f"h{hashlib.sha256(name.encode()).hexdigest()[:40]}"


def service_object(key: PipelineKey) -> dict[str, Any]:
    """The pipeline's Service (for its pod's DNS name and for peers; the operator itself never uses it)."""
    name = child_name(key)
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(key, name),
            "spec": {"type": "ClusterIP", "selector": {"app.kubernetes.io/instance": name, UID_LABEL: key.uid},
                     "ports": [{"name": "http", "port": PORT, "targetPort": PORT, "protocol": "TCP"}]}}


def binary_url(key: PipelineKey, options: KubernetesOptions) -> str:
    """Where the pod of ``key`` downloads its program binary (the operator's ``/pipeline-binaries`` route)."""
    path = BINARY_ROUTE.format(namespace=urllib.parse.quote(key.namespace, safe=""),
                               name=urllib.parse.quote(key.name, safe=""))
    return options.operator_url.rstrip("/") + path


def build_objects(key: PipelineKey, spec: PipelineSpec, artifact: dict[str, Any], initial: RuntimeDesiredStatus,
                  options: KubernetesOptions,
                  bootstrap_policy: BootstrapPolicy = BootstrapPolicy.AWAIT_APPROVAL,
                  claim: str | None = None, silent_bootstrap: bool = False,
                  deployment_id: str = NO_DEPLOYMENT) -> dict[str, dict[str, Any]]:
    """The ConfigMap, Service, StatefulSet, PersistentVolumeClaim and NetworkPolicy of one pipeline
    (the token Secret is made apart: its content is created once and never rebuilt). ``claim`` names
    the PersistentVolumeClaim when it is not ``<child name>-storage``: one retained from a deleted
    Pipeline of the same name, adopted. ``deployment_id`` is the start's, as its status records it.

    The ConfigMap holds the pipeline's ``PipelineConfig`` (``config.json``, ``config.yaml``) as Feldera's runner
    writes it, storage at ``/storage``; the container runs the program with Feldera's arguments, listening on
    the container's port (8080), in the working directory ``/work`` (where it writes its ``port`` file)."""
    name = child_name(key)
    claim = claim or f"{name}-storage"
    selector = {"app.kubernetes.io/instance": name, UID_LABEL: key.uid}
    config = pipeline_config(key.uid, key.name, spec.runtime_config, STORAGE_PATH, artifact)
    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(key, name), "data": config_files(config)}
    service = service_object(key)
    # Feldera's launch contract (feldera/launch.py): the program binary's arguments, in the working directory /work. A
    # program binary (--compiler feldera) is downloaded from the operator by the image's launcher (feldera/launcher.py),
    # which checks its sha256 and execs it with them; otherwise the image's reference process takes them.
    args = launch_args(f"{CONFIG_PATH}/{CONFIG_YAML}", "0.0.0.0", initial, deployment_id, bootstrap_policy,
                       silent_bootstrap, default_port=PORT)
    binary = artifact.get("binary")
    if isinstance(binary, dict):
        command = ["pipeline-operator", "launch-pipeline", "--binary-url", binary_url(key, options),
                   "--sha256", str(binary.get("sha256", "")), "--", *args]
    else:
        command = ["pipeline-operator", "pipeline-process", *args]
    # The token comes last and from the Secret only, and debug routes only from the operator: a
    # spec's variables of those names are dropped.
    env: list[dict[str, Any]] = [{"name": name, "value": value} for name, value in pipeline_env(spec).items()
                                 if name not in (TOKEN_ENV, DEBUG_ENV, TOKIO_ENV)]
    env.append({"name": TOKIO_ENV, "value": tokio_worker_threads(spec.runtime_config)})
    if options.debug_routes:
        env.append({"name": DEBUG_ENV, "value": "1"})
    env.append({"name": TOKEN_ENV, "valueFrom": {"secretKeyRef": {"name": f"{name}-token", "key": TOKEN_KEY}}})
    container = {
        "name": "pipeline",
        "image": spec.deployment.image or options.default_image,
        "imagePullPolicy": options.image_pull_policy,
        "command": command,
        "workingDir": WORK_PATH,
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        "env": env,
        "resources": container_resources(spec, options),
        "readinessProbe": {"tcpSocket": {"port": PORT}, "periodSeconds": 2},
        "securityContext": {"runAsNonRoot": True, "readOnlyRootFilesystem": True,
                            "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "volumeMounts": [{"name": "config", "mountPath": CONFIG_PATH, "readOnly": True},
                         {"name": "storage", "mountPath": STORAGE_PATH},
                         {"name": "tmp", "mountPath": "/tmp"},
                         {"name": "work", "mountPath": WORK_PATH}],
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
                                {"name": "storage", "persistentVolumeClaim": {"claimName": claim}},
                                {"name": "tmp", "emptyDir": {}},
                                {"name": "work", "emptyDir": {}}],
                },
            },
        },
    }
    # The storage: spec.storage, else Feldera's runtime_config.resources (storage_mb_max, storage_class).
    feldera = spec.runtime_config.resources if spec.runtime_config is not None else None
    size = spec.storage.size or (f"{feldera.storage_mb_max}M" if feldera and feldera.storage_mb_max else None)
    pvc_spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"],
                                "resources": {"requests": {"storage": str(size or DEFAULT_STORAGE_SIZE)}}}
    storage_class = spec.storage.storage_class_name or (feldera.storage_class if feldera else None)
    if storage_class:
        pvc_spec["storageClassName"] = storage_class
    pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": _meta(key, claim),
           "spec": pvc_spec}
    objects = {"configmap": configmap, "service": service, "statefulset": statefulset, "pvc": pvc}
    if options.network_policies:
        objects["networkpolicy"] = network_policy(key, spec, options)
    return objects


def token_secret(key: PipelineKey, token: str | None = None) -> dict[str, Any]:
    """A new control token (the pod gets it as ``$PIPELINE_CONTROL_TOKEN``, the operator sends it), or the
    Secret of ``token`` (put back as it was)."""
    token = base64.b64encode((token or secrets.token_urlsafe(32)).encode()).decode()
    return {"apiVersion": "v1", "kind": "Secret", "metadata": _meta(key, token_secret_name(key)),
            "type": "Opaque", "immutable": True, "data": {TOKEN_KEY: token}}


def _memory_limit(pod: dict[str, Any], container: str) -> str:
    for spec in (pod.get("spec") or {}).get("containers") or []:
        if spec.get("name") == container:
            return str(((spec.get("resources") or {}).get("limits") or {}).get("memory") or "none set")
    return "none set"


def _image(pod: dict[str, Any], status: dict[str, Any]) -> str:
    """The image the container asks for (the status may show a resolved digest, or nothing yet)."""
    for spec in (pod.get("spec") or {}).get("containers") or []:
        if spec.get("name") == status.get("name") and spec.get("image"):
            return str(spec["image"])
    return str(status.get("image") or "?")


def pod_problem(pod: dict[str, Any]) -> ComputeObservation | None:
    """What keeps a pipeline's pod from being ready, as the kubelet, the scheduler and the eviction manager
    wrote it in the pod's status; None when the status names nothing wrong (starting, or not probed yet).

    An evicted or otherwise Failed pod, and a container failing repeatedly, are FAILED: the process and
    what it held in memory are gone, as when it crashes. Everything else is PENDING (it may still resolve:
    a node is added, an image is pushed), and the provisioning timeout bounds how long that is waited for."""
    name = (pod.get("metadata") or {}).get("name")
    status = pod.get("status") or {}
    if status.get("phase") == "Failed":
        reason = status.get("reason") or "Failed"
        what = "was evicted" if reason == "Evicted" else f"failed ({reason})"
        message = f": {status['message']}" if status.get("message") else ""
        return ComputeObservation(state=ComputeState.FAILED, message=f"pod {name} {what}{message}")
    for container in status.get("containerStatuses") or []:
        cname = container.get("name")
        state, last = container.get("state") or {}, (container.get("lastState") or {}).get("terminated") or {}
        waiting = state.get("waiting")
        terminated = state.get("terminated") or last
        restarts = container.get("restartCount") or 0
        oom = ""
        if terminated.get("reason") == "OOMKilled":
            oom = (f"container {cname} was OOMKilled (exit code {terminated.get('exitCode', 137)}, memory limit "
                   f"{_memory_limit(pod, cname)})")
        if waiting is not None and restarts >= CRASH_LOOP_RESTARTS:
            return ComputeObservation(state=ComputeState.FAILED, message=(
                f"pod {name} is failing repeatedly ({restarts} restarts): "
                f"{waiting.get('reason')}: {waiting.get('message') or ''}".strip().rstrip(":")
                + (f"; last termination: {oom}" if oom else "")))
        if waiting is not None and waiting.get("reason") in IMAGE_PULL_REASONS:
            return ComputeObservation(state=ComputeState.PENDING, message=(
                f"pod {name} container {cname} cannot pull image {_image(pod, container)}: {waiting['reason']}"
                + (f": {waiting['message']}" if waiting.get("message") else "")))
        if waiting is not None and waiting.get("reason"):
            return ComputeObservation(state=ComputeState.PENDING, message=(
                f"pod {name} container {cname} is waiting: {waiting['reason']}"
                + (f": {waiting['message']}" if waiting.get("message") else "")
                + (f"; last termination: {oom}" if oom else "")))
        if oom:
            return ComputeObservation(state=ComputeState.PENDING, message=f"pod {name} {oom}")
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return ComputeObservation(state=ComputeState.PENDING, message=(
                f"pod {name} cannot be scheduled ({condition.get('reason') or 'Unschedulable'}): "
                f"{condition.get('message') or 'no reason given'}"))
        if condition.get("status") != "True" and condition.get("message"):
            return ComputeObservation(state=ComputeState.PENDING, message=(
                f"pod {name} {condition.get('type')} is {condition.get('status')}: {condition['message']}"))
    return None


class Invalid(Exception):
    """The API server refused an object the operator built from a spec (422)."""


MANAGED_BY_SELECTOR = "app.kubernetes.io/managed-by=pipeline-operator"
SYNC_TIMEOUT = 30.0  # seconds start() waits for the first lists; later passes wait for them no more than that
# The children the backend watches instead of reading them: kind -> (API path, resource).
WATCHED = {"statefulset": ("/apis/apps/v1", "statefulsets"),
           "service": ("/api/v1", "services"),
           "configmap": ("/api/v1", "configmaps"),
           "pvc": ("/api/v1", "persistentvolumeclaims"),
           "secret": ("/api/v1", "secrets"),
           "networkpolicy": ("/apis/networking.k8s.io/v1", "networkpolicies"),
           "pod": ("/api/v1", "pods")}
COMPUTE_KINDS = ("statefulset", "service", "configmap", "secret", "networkpolicy", "pod", "pvc")
KIND_NAMES = {"statefulset": "StatefulSet", "service": "Service", "configmap": "ConfigMap", "secret": "Secret",
              "networkpolicy": "NetworkPolicy", "pvc": "PersistentVolumeClaim"}
REASON_RESTORED = "ChildRestored"

# -- what the operator owns in each child ------------------------------------------------------------------
#
# The fields the operator sets in each kind of child, as informer shapes: what a put-back compares (by digest)
# and writes back. Every field listed is compared whether or not the operator sets it, so a few fields it
# leaves empty are listed too, to notice them being set (a pod template's hostNetwork, an added container or
# volume, a Service's externalName). Fields the API server fills in (a Service's clusterIP, a template's
# dnsPolicy, a probe's timeoutSeconds...) are not listed: they would differ from what the operator writes.
_OWNED_LABELS: FieldProjection = {"labels": dict.fromkeys(labels(PipelineKey("ns", "p", "00000000")), True)}
_CONTAINER_OWNED: FieldProjection = {
    **dict.fromkeys(("name", "image", "imagePullPolicy", "command", "args", "workingDir", "ports", "env", "envFrom",
                     "volumeMounts", "volumeDevices", "securityContext", "lifecycle", "livenessProbe",
                     "startupProbe"), True),
    "resources": {"requests": True, "limits": True},
    "readinessProbe": dict.fromkeys(("tcpSocket", "httpGet", "exec", "grpc", "periodSeconds"), True)}
_POD_OWNED: FieldProjection = {
    **dict.fromkeys(("automountServiceAccountToken", "enableServiceLinks", "securityContext", "initContainers",
                     "hostNetwork", "hostPID", "hostIPC", "shareProcessNamespace", "serviceAccountName", "nodeName",
                     "runtimeClassName", "hostAliases"), True),
    "containers": _CONTAINER_OWNED,
    "volumes": {"name": True, "configMap": {"name": True, "items": True}, "persistentVolumeClaim": True,
                **dict.fromkeys(("emptyDir", "hostPath", "secret", "projected", "csi", "nfs", "ephemeral"), True)}}
OWNED_FIELDS: dict[str, Mapping[str, FieldProjection]] = {
    "statefulset": {"metadata": _OWNED_LABELS, "spec": {
        **dict.fromkeys(("replicas", "serviceName", "selector", "podManagementPolicy", "minReadySeconds", "ordinals"),
                        True),
        "template": {"metadata": {"labels": True}, "spec": _POD_OWNED}}},
    "service": {"metadata": _OWNED_LABELS, "spec": {
        "type": True, "selector": True, "externalName": True, "externalIPs": True,
        "ports": dict.fromkeys(("name", "port", "targetPort", "protocol", "nodePort"), True)}},
    "configmap": {"metadata": _OWNED_LABELS, "data": True, "binaryData": True, "immutable": True},
    "secret": {"metadata": _OWNED_LABELS, "type": True, "data": True},
    "networkpolicy": {"metadata": _OWNED_LABELS, "spec": True},
    "pvc": {"metadata": _OWNED_LABELS},
}
OWNED_KEY = "owned"  # in a cached child: owned_digest() of it


def _canonical(value: Any) -> Any:
    """``value`` without empty strings, maps, lists and nulls (the API server leaves them out), recursively."""
    if isinstance(value, dict):
        kept = {k: _canonical(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v is not None and v != "" and v != {} and v != []}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def _quantity(value: Any) -> Any:
    try:
        return format(parse_quantity(value).normalize(), "f")
    except (ValueError, TypeError, ArithmeticError):
        return value


def owned_part(kind: str, obj: Mapping[str, Any]) -> dict[str, Any]:
    """What the operator sets in ``obj`` (a child of ``kind``), as the API server stores it: the fields of
    :data:`OWNED_FIELDS`, empty values dropped, resource quantities in canonical form ("0.5" and "500m",
    "1024Mi" and "1Gi" are the same)."""
    part: dict[str, Any] = _canonical(project(dict(obj), OWNED_FIELDS[kind]))
    if kind == "statefulset":
        for container in (((part.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or []:
            for values in (container.get("resources") or {}).values():
                if isinstance(values, dict):
                    values.update({k: _quantity(v) for k, v in values.items()})
    return part


def owned_digest(kind: str, obj: Mapping[str, Any]) -> int:
    """A digest of :func:`owned_part` (what the caches keep instead of the fields themselves): 64 bits."""
    text = json.dumps(owned_part(kind, obj), sort_keys=True, separators=(",", ":"), default=str)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


_MAPS = ("labels", "data", "binaryData", "selector", "matchLabels")  # maps named as a whole, not by their keys


def _differences(a: Any, b: Any, path: str = "", depth: int = 4) -> list[str]:
    """The fields (``spec.type``, ``metadata.labels``, ``spec.template.spec.containers``) in which ``a`` and
    ``b`` differ."""
    if a == b:
        return []
    if depth == 0 or not isinstance(a, dict) or not isinstance(b, dict) or path.rpartition(".")[2] in _MAPS:
        return [path or "(all)"]
    out: list[str] = []
    for k in sorted(set(a) | set(b)):
        out += _differences(a.get(k), b.get(k), f"{path}.{k}" if path else k, depth - 1)
    return out


# What the caches keep of each child: the fields the backend reads and the digest of the owned part, nothing
# else (client-go's transform). A StatefulSet's pod template, a ConfigMap's program, a Secret's token, a pod's
# spec, labels, annotations, owner references and managedFields are most of what the API server sends, and
# none of it is kept: of the labels and owner references, only whose the object says it is (see cached()).
_METADATA: dict[str, FieldProjection] = {"name": True, "namespace": SHARED, "uid": True, "resourceVersion": True,
                               "deletionTimestamp": True}
PIPELINE_KEY, CONTROLLER_KEY = "pipeline", "controller"  # in a cached child: its uid label, its controller's uid
RETAINED_KEY, OWNERS_KEY = "retained", "owners"  # in a cached claim: its RETAINED_LABEL, its owner references' number
_CONDITIONS: FieldProjection = {"type": SHARED, "status": SHARED, "reason": SHARED, "message": True}
CACHED_FIELDS: dict[str, Mapping[str, FieldProjection]] = {
    "statefulset": {"metadata": _METADATA, "status": {"readyReplicas": True}},
    "service": {"metadata": _METADATA},
    "configmap": {"metadata": _METADATA},
    "secret": {"metadata": _METADATA},
    "networkpolicy": {"metadata": _METADATA},
    "pvc": {"metadata": {**_METADATA, "creationTimestamp": True},
            "status": {"phase": SHARED, "conditions": _CONDITIONS}},
    # pod_problem(): the kubelet's and scheduler's words, and the container's image and memory limit;
    # endpoint(): where the pod answers, and whether it is on the host's network.
    "pod": {"metadata": _METADATA,
            "spec": {"hostNetwork": True,
                     "containers": {"name": True, "image": True, "resources": {"limits": {"memory": True}}}},
            "status": {"phase": SHARED, "reason": True, "message": True, "conditions": _CONDITIONS, "podIP": True,
                       "containerStatuses": {key: True for key in ("name", "image", "state", "lastState",
                                                                   "restartCount")}}},
}


def cached(kind: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The transform of the cache of ``kind``: :data:`CACHED_FIELDS`; whose the object says it is (its
    :data:`UID_LABEL` and its controller's uid, interned: a pipeline's children share one string); and the owned
    part's digest. A claim also keeps its :data:`RETAINED_LABEL` and how many owner references it has."""
    shape = CACHED_FIELDS[kind]

    def transform(obj: dict[str, Any]) -> dict[str, Any]:
        kept: dict[str, Any] = project(obj, shape)
        meta = obj.get("metadata") or {}
        pipeline, controller = _pipeline_of(obj), _controller_of(obj)
        if pipeline is not None:
            kept[PIPELINE_KEY] = sys.intern(pipeline)
        if controller is not None:
            kept[CONTROLLER_KEY] = sys.intern(controller)
        if kind == "pvc":
            retained = (meta.get("labels") or {}).get(RETAINED_LABEL)
            if retained is not None:
                kept[RETAINED_KEY] = sys.intern(str(retained))
            kept[OWNERS_KEY] = len(meta.get("ownerReferences") or [])
        if kind in OWNED_FIELDS:
            kept[OWNED_KEY] = owned_digest(kind, obj)
        return kept
    return transform


def _pipeline_of(obj: Mapping[str, Any]) -> str | None:
    """The :data:`UID_LABEL` of a child, from the API server's object or the cache's."""
    if PIPELINE_KEY in obj:
        return str(obj[PIPELINE_KEY])
    value = ((obj.get("metadata") or {}).get("labels") or {}).get(UID_LABEL)
    return str(value) if value is not None else None


def _controller_of(obj: Mapping[str, Any]) -> str | None:
    """The uid its controller reference names, from the API server's object or the cache's."""
    if CONTROLLER_KEY in obj:
        return str(obj[CONTROLLER_KEY])
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller") and ref.get("uid"):
            return str(ref["uid"])
    return None


@dataclasses.dataclass(slots=True)
class _Owned:
    """What the operator wrote for one pipeline's compute, to put it back: the owned part's digest of each
    child, and what rebuilds them (:meth:`of`). Made by provisioning; after an operator restart, from the
    Pipeline alone (no ``recipe``: only the Service and the claim's labels)."""
    digests: dict[str, int]
    claim: str
    # The spec's deployment, the program as written and the start parameters, as compressed JSON: a few
    # hundred bytes a pipeline (the spec it came from is parsed again by every pass that writes status).
    recipe: bytes = b""

    @classmethod
    def of(cls, digests: dict[str, int], claim: str, spec: PipelineSpec, program: str,
           initial: RuntimeDesiredStatus, policy: BootstrapPolicy, silent: bool = False,
           deployment_id: str = NO_DEPLOYMENT, binary: dict[str, Any] | None = None) -> _Owned:
        runtime = (spec.runtime_config.model_dump(mode="json", include=RUNTIME_CONFIG_USED, exclude_defaults=True)
                   if spec.runtime_config is not None else None)
        recipe = {"deployment": spec.deployment.model_dump(mode="json", by_alias=True, exclude_none=True),
                  "runtime": runtime, "program": program, "initial": initial.value, "policy": policy.value,
                  "silent": silent, "deployment_id": deployment_id, "binary": binary}
        return cls(digests, claim, zlib.compress(json.dumps(recipe, separators=(",", ":")).encode()))

    def rebuild(self, key: PipelineKey, options: KubernetesOptions) -> dict[str, dict[str, Any]] | None:
        """The children as provisioning built them (:func:`build_objects`), or None without a recipe."""
        if not self.recipe:
            return None
        recipe = json.loads(zlib.decompress(self.recipe))
        runtime = recipe.get("runtime")
        spec = PipelineSpec.model_construct(deployment=DeploymentSpec.model_validate(recipe["deployment"]),
                                            runtime_config=None if runtime is None
                                            else RuntimeConfig.model_validate(runtime))
        binary = recipe.get("binary")
        objects = build_objects(key, spec, {"binary": binary} if binary else {},
                                RuntimeDesiredStatus(recipe["initial"]), options,
                                BootstrapPolicy(recipe["policy"]), self.claim, bool(recipe.get("silent")),
                                recipe.get("deployment_id", NO_DEPLOYMENT))
        objects["configmap"]["data"] = config_files(json.loads(recipe["program"]))
        return objects


def _binary_of(artifact: dict[str, Any]) -> dict[str, Any] | None:
    """The program binary of a compiled artifact (``--compiler feldera``): its path and sha256."""
    binary = artifact.get("binary")
    return {"path": str(binary.get("path", "")), "sha256": str(binary.get("sha256", ""))} \
        if isinstance(binary, dict) else None


def _deleting(obj: dict[str, Any]) -> bool:
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


class KubernetesBackend:
    """A monitoring pass reads the pipeline's children from caches (one :class:`Informer` per kind,
    over the operator's namespaces, of the objects labelled as the operator's), so it makes no API
    call; the API server pushes what changes, and ``on_child_change(uid)`` says whose child it was.

    The Secrets' cache keeps no token (only who owns each Secret and a digest of its owned part): the
    token is read from the Secret when provisioning or after a restart, and kept in memory for as long as
    the compute lives. ``on_restored(key, message)`` is told of each child put back.
    """

    def __init__(self, kube: KubeClient, options: KubernetesOptions, namespaces: Sequence[str] | None = None,
                 on_child_change: Callable[[str], None] | None = None,
                 on_restored: Callable[[PipelineKey, str], None] | None = None) -> None:
        self.kube = kube
        self.options = options
        self.on_child_change = on_child_change
        self.on_restored = on_restored
        self._clients = {"apps": kube.apps, "core": kube.core,
                         "networking": kubernetes.client.NetworkingV1Api(kube.api_client)}
        # The watches get a client of their own (the same Configuration), not KubeClient's threads: a watch
        # holds its connection and thread for minutes. One connection per watch, and one to spare.
        configuration = copy.deepcopy(kube.api_client.configuration)
        streams = len(WATCHED) * (len(namespaces) if namespaces is not None else 1)
        configuration.connection_pool_maxsize = streams + 1
        self._watch_client = kubernetes.client.ApiClient(configuration)
        self._informers = {kind: Informer(self._watch_client, path=path, resource=resource, namespaces=namespaces,
                                          label_selector=MANAGED_BY_SELECTOR, on_change=self._child_changed,
                                          name=resource, transform=cached(kind))
                           for kind, (path, resource) in WATCHED.items()}
        self._starting: asyncio.Future[None] | None = None
        self._calls = {"reads": 0, "creates": 0, "deletes": 0, "patches": 0, "replaces": 0, "restored": 0}
        self._problems: dict[str, str] = {}  # pipeline uid -> why a child could not be adopted or created
        self._tokens: dict[str, str] = {}  # pipeline uid -> its control token (the Secret's)
        self._token_read: set[str] = set()  # pipeline uids whose Secret was read since their last provisioning
        # What endpoint() answered: pipeline uid -> endpoint, and endpoint -> the pipeline it was answered for.
        self._endpoints: dict[str, str] = {}
        self._endpoint_keys: dict[str, PipelineKey] = {}
        # Pipelines whose provisioning began here and has not got as far as its StatefulSet (a create was
        # refused, the API server went away): their other children are not a StatefulSet deleted by someone.
        self._unfinished: set[str] = set()
        # pipeline uid -> watched kinds whose deletion the backend asked for: the cache shows such a child
        # until the watch delivers its deletion, and it is terminating, not "deleted outside the operator".
        self._deleted: dict[str, set[str]] = {}
        self._owned: dict[str, _Owned] = {}  # pipeline uid -> what its children must be (see _Owned)
        # pipeline uid -> the program binary its pod runs ({"path", "sha256"}), served to that pod only.
        self._binaries: dict[str, dict[str, Any]] = {}

    @classmethod
    def from_settings(cls, kube: KubeClient, settings: OperatorSettings,
                      on_child_change: Callable[[str], None] | None = None,
                      on_restored: Callable[[PipelineKey, str], None] | None = None) -> KubernetesBackend:
        namespaces = None if settings.all_namespaces else settings.namespaces
        return cls(kube, KubernetesOptions.from_settings(settings), namespaces, on_child_change, on_restored)

    # -- the caches ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start watching the pipelines' children and wait until they are listed (up to
        :data:`SYNC_TIMEOUT`; a pass that needs a cache not listed yet fails as the API server's
        unavailability does, and is tried again). Every caller waits for the same start."""
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
        await asyncio.shield(self._starting)

    async def _start(self) -> None:
        for informer in self._informers.values():
            await informer.start()
        synced = await asyncio.gather(*(i.wait_synced(SYNC_TIMEOUT) for i in self._informers.values()))
        if not all(synced):
            late = [i.name for i, ok in zip(self._informers.values(), synced, strict=True) if not ok]
            log.warning("the pipelines' %s are not listed after %.0fs; their pipelines are looked at once they are",
                        ", ".join(late), SYNC_TIMEOUT)

    async def _cached(self, namespace: str, *kinds: str) -> None:
        """The caches of ``kinds`` may be relied on in ``namespace``: else nothing may be concluded."""
        await self.start()
        for kind in kinds:
            problem = self._informers[kind].problem(namespace)
            if problem is None:
                continue
            if problem.forbidden:
                raise Forbidden(problem.message)
            raise Unavailable(f"the Kubernetes API server is unreachable or has not answered yet, so the "
                              f"operator's view of the pipelines' {WATCHED[kind][1]} may be stale ({problem.message})")

    def _child_changed(self, kind: str, obj: dict[str, Any]) -> None:
        uid = _pipeline_of(obj)
        if uid and self.on_child_change is not None:
            self.on_child_change(uid)

    def _cache(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self._informers[kind].get(namespace, name)

    def stats(self) -> dict[str, Any]:
        """The API calls the backend made itself (``reads`` are GETs: a monitoring pass makes none),
        and each cache's figures."""
        return {**self._calls, "informers": {i.name: i.stats() for i in self._informers.values()}}

    # -- API calls ---------------------------------------------------------------------------

    # kind -> (client, method suffix, resource name in RBAC)
    _KINDS = {"statefulset": ("apps", "stateful_set", "statefulsets"),
              "service": ("core", "service", "services"),
              "configmap": ("core", "config_map", "configmaps"),
              "pvc": ("core", "persistent_volume_claim", "persistentvolumeclaims"),
              "secret": ("core", "secret", "secrets"),
              "networkpolicy": ("networking", "network_policy", "networkpolicies")}

    def _method(self, verb: str, kind: str) -> tuple[Any, str]:
        client, suffix, resource = self._KINDS[kind]
        return getattr(self._clients[client], f"{verb}_namespaced_{suffix}"), resource

    def _json(self, obj: Any) -> dict[str, Any]:
        """A client model object as the API server's JSON (what the caches hold)."""
        return dict(self.kube.api_client.sanitize_for_serialization(obj))

    async def _read(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        read, resource = self._method("read", kind)
        self._calls["reads"] += 1
        try:
            return self._json(await self.kube.call(read, name, namespace))
        except ApiException as exc:
            if exc.status == 404:
                return None
            if exc.status == 403:
                raise Forbidden(f"the operator may not get {resource} in {namespace}") from exc
            raise

    async def _write(self, verb: str, kind: str, body: dict[str, Any], gone: tuple[int, ...]) -> dict[str, Any] | None:
        """``<verb>_namespaced_<kind>`` of ``body``: the object the API server answers, or None for a status in
        ``gone``; :class:`Forbidden` (403), :class:`Invalid` (422)."""
        call, resource = self._method(verb, kind)
        meta = body["metadata"]
        namespace = meta["namespace"]
        args = (namespace, body) if verb == "create" else (meta["name"], namespace, body)
        self._calls[f"{verb}s"] += 1
        try:
            return self._json(await self.kube.call(call, *args, field_manager=self.kube.field_manager))
        except ApiException as exc:
            if exc.status in gone:
                return None
            if exc.status == 403:
                raise Forbidden(f"the operator may not {'update' if verb == 'replace' else verb} {resource} "
                                f"in {namespace}") from exc
            if exc.status == 422:
                raise Invalid(_reason(exc)) from exc
            raise

    async def _create(self, kind: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """The created object; None if one of that name exists already (the caller checks that it is ours)."""
        return await self._write("create", kind, body, gone=(409,))

    async def _delete(self, kind: str, namespace: str, name: str, uid: str) -> bool:
        """Delete ``name`` if it is still the object ``uid`` (the one the operator verified as its own): the
        API server refuses the delete of a same-named object someone made in its place (409). Whether it is
        deleted or gone."""
        delete, resource = self._method("delete", kind)
        self._calls["deletes"] += 1
        options = kubernetes.client.V1DeleteOptions(propagation_policy="Background",
                                                    preconditions=kubernetes.client.V1Preconditions(uid=uid))
        try:
            await self.kube.call(delete, name, namespace, body=options)
        except ApiException as exc:
            if exc.status == 404:
                return True
            if exc.status == 409:
                log.warning("%s %s/%s was not deleted: it is no longer the object the operator verified as its own "
                            "(uid %s): %s", KIND_NAMES.get(kind, kind), namespace, name, uid, _reason(exc))
                return False
            if exc.status == 403:
                raise Forbidden(f"the operator may not delete {resource} in {namespace}") from exc
            raise
        return True

    async def _replace(self, kind: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """A PUT of ``body`` (guarded by its ``resourceVersion``); the object after it, or None when it is gone or
        changed meanwhile (the next pass looks again). :class:`Invalid` if the API server refuses it (422: an
        immutable field)."""
        return await self._write("replace", kind, body, gone=(404, 409))

    async def _patch(self, kind: str, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """A JSON merge patch (guarded by the ``resourceVersion`` the body names, if any); the object after
        it, or None when it is gone or changed meanwhile (the next pass looks again)."""
        patch, resource = self._method("patch", kind)
        self._calls["patches"] += 1
        try:
            return self._json(await self.kube.call(patch, name, namespace, body, field_manager=self.kube.field_manager,
                                                   _content_type="application/merge-patch+json"))
        except ApiException as exc:
            if exc.status in (404, 409):
                return None
            if exc.status == 403:
                raise Forbidden(f"the operator may not patch {resource} in {namespace}") from exc
            raise

    @staticmethod
    def _ours(obj: dict[str, Any] | None, key: PipelineKey) -> bool:
        """Labelled with the Pipeline's uid AND controlled by it (a label alone proves nothing)."""
        return obj is not None and _pipeline_of(obj) == key.uid and _controller_of(obj) == key.uid

    async def _remember_token(self, key: PipelineKey, secret: dict[str, Any] | None = None) -> bool:
        """Learn the pipeline's control token from its Secret (read it unless given); whether it was."""
        if secret is None:
            secret = await self._read("secret", key.namespace, token_secret_name(key))
            self._token_read.add(key.uid)
        if secret is None or not self._ours(secret, key):
            return False
        encoded = (secret.get("data") or {}).get(TOKEN_KEY)
        try:
            token = base64.b64decode(encoded).decode() if encoded else ""
        except (ValueError, UnicodeDecodeError):
            token = ""
        if token:
            self._tokens[key.uid] = token
        return bool(token)

    # -- storage retained from a deleted Pipeline ------------------------------------------------

    def _claim(self, key: PipelineKey) -> dict[str, Any] | None:
        """The pipeline's PersistentVolumeClaim from the cache: ``<child name>-storage``, or the claim it
        adopted (another name, labelled with its uid)."""
        claim = self._cache("pvc", key.namespace, f"{child_name(key)}-storage")
        if claim is not None:
            return claim
        for candidate in self._informers["pvc"].list(key.namespace):
            if _pipeline_of(candidate) == key.uid:
                return candidate
        return None

    def _claim_name(self, key: PipelineKey) -> str:
        claim = self._claim(key)
        return str(claim["metadata"]["name"]) if claim is not None else f"{child_name(key)}-storage"

    def _retained(self, key: PipelineKey) -> dict[str, Any] | None:
        """A claim retained from a deleted Pipeline of this name in this namespace, owned by nobody; the newest
        if several were (a name re-created and deleted more than once with Retain)."""
        value = retained_from(key.name)
        found = [c for c in self._informers["pvc"].list(key.namespace)
                 if c.get(RETAINED_KEY) == value and not c.get(OWNERS_KEY) and not _deleting(c)]
        return max(found, key=lambda c: c["metadata"].get("creationTimestamp") or "", default=None)

    async def _adopt_retained(self, key: PipelineKey) -> str | None:
        """The name of the retained claim this pipeline now owns (its controller reference and uid label set,
        the retained label removed), or None when there is none to adopt."""
        retained = self._retained(key)
        if retained is None:
            return None
        meta = retained["metadata"]
        adopted = await self._patch("pvc", key.namespace, meta["name"], {"metadata": {
            "resourceVersion": meta["resourceVersion"], "ownerReferences": [owner(key)],
            "labels": {**labels(key), RETAINED_LABEL: None}, "annotations": {RETAINED_LABEL: None}}})
        if adopted is None:  # changed or deleted meanwhile: never a fresh claim beside it, look again
            raise Unavailable(f"PersistentVolumeClaim {key.namespace}/{meta['name']} changed while it was being "
                              "adopted; trying again")
        self._informers["pvc"].remember(adopted)
        log.info("%s: adopted PersistentVolumeClaim %s/%s retained from a deleted Pipeline of the same name",
                 key, key.namespace, meta["name"])
        return str(meta["name"])

    async def retain_storage(self, key: PipelineKey) -> None:
        """Release the claim: its owner reference removed (so garbage collection leaves it), the uid label
        replaced by :data:`RETAINED_LABEL` (the Pipeline's name, in full in an annotation of the same key).
        The other labels stay, so the claim stays in the operator's cache, where the next Pipeline looks."""
        await self._cached(key.namespace, "pvc")
        claim = self._claim(key)
        if claim is None or not self._ours(claim, key) or _deleting(claim):
            return
        # Read: the cache keeps no owner references, and those of others stay.
        claim = await self._read("pvc", key.namespace, claim["metadata"]["name"])
        if claim is None or not self._ours(claim, key) or _deleting(claim):
            return
        meta = claim["metadata"]
        released = await self._patch("pvc", key.namespace, meta["name"], {"metadata": {
            "resourceVersion": meta["resourceVersion"],
            "ownerReferences": [r for r in meta.get("ownerReferences") or [] if r.get("uid") != key.uid] or None,
            "labels": {UID_LABEL: None, RETAINED_LABEL: retained_from(key.name)},
            "annotations": {RETAINED_LABEL: key.name}}})
        if released is None:
            raise Unavailable(f"PersistentVolumeClaim {key.namespace}/{meta['name']} changed while it was being "
                              "released; trying again")
        self._informers["pvc"].remember(released)
        log.info("%s: PersistentVolumeClaim %s/%s retained (label %s=%s) for the next Pipeline of this name", key,
                 key.namespace, meta["name"], RETAINED_LABEL, retained_from(key.name))

    # -- the Backend protocol ------------------------------------------------------------------

    async def observe_compute(self, key: PipelineKey) -> ComputeObservation:
        name = child_name(key)
        ns = key.namespace
        await self._cached(ns, *COMPUTE_KINDS)
        problem = self._problems.get(key.uid)
        if problem:
            return ComputeObservation(state=ComputeState.FAILED, message=problem)
        sts, svc, cm = (self._cache(kind, ns, name) for kind in ("statefulset", "service", "configmap"))
        if sts is not None and key.uid not in self._tokens and key.uid not in self._token_read:
            await self._remember_token(key)  # after an operator restart
        deleted = self._deleted.get(key.uid, set())
        if sts is None:
            pod = self._cache("pod", ns, f"{name}-0")
            leftovers = [(kind, o) for kind, o in (("service", svc), ("configmap", cm), ("pod", pod)) if o is not None]
            if not leftovers:
                return ComputeObservation(state=ComputeState.ABSENT)
            # What is left is terminating if the operator deleted the StatefulSet or is deleting the rest; a pod
            # left alone by a StatefulSet that vanished otherwise is the kubelet's to remove, not a deletion.
            if "statefulset" in deleted or any(_deleting(o) or kind in deleted for kind, o in leftovers):
                return ComputeObservation(state=ComputeState.TERMINATING, message="deleting the pipeline's objects")
            if key.uid in self._unfinished:
                return ComputeObservation(state=ComputeState.PENDING,
                                          message=f"StatefulSet {name} is not created yet")
            return ComputeObservation(state=ComputeState.FAILED,
                                      message=f"StatefulSet {ns}/{name} is gone (deleted outside the operator)")
        if _deleting(sts) or "statefulset" in deleted:
            return ComputeObservation(state=ComputeState.TERMINATING, message=f"StatefulSet {name} is being deleted")
        if self._ours(sts, key) and key.uid not in self._unfinished:
            await self._guard(key)
        if ((sts.get("status") or {}).get("readyReplicas") or 0) >= 1:
            return ComputeObservation(state=ComputeState.READY)
        return self._why_not_ready(key, name)

    def _why_not_ready(self, key: PipelineKey, name: str) -> ComputeObservation:
        """Why the StatefulSet has no ready replica, in Kubernetes' own words (the kubelet's, the scheduler's,
        the eviction manager's), naming what a person needs to act on: the image, the memory limit."""
        ns = key.namespace
        pvc, pod = self._claim(key), self._cache("pod", ns, f"{name}-0")
        if pod is not None and pod.get("status") is not None:
            found = pod_problem(pod)
            if found is not None:
                return found
        claim = (pvc or {}).get("status") or {}
        if pvc is not None and claim.get("phase") != "Bound":
            why = ""
            for condition in claim.get("conditions") or []:
                if condition.get("message"):
                    why = f": {condition['message']}"
            phase = claim.get("phase") or "Pending"
            return ComputeObservation(state=ComputeState.PENDING,
                                      message=f"PersistentVolumeClaim {pvc['metadata']['name']} is {phase}{why}")
        if pod is None:
            return ComputeObservation(state=ComputeState.PENDING,
                                      message=f"StatefulSet {name} has no pod yet (0/1 replicas ready)")
        return ComputeObservation(state=ComputeState.PENDING, message=f"StatefulSet {name}: 0/1 replicas ready")

    def _fail(self, key: PipelineKey, message: str) -> None:
        self._problems[key.uid] = message
        log.warning("%s: %s", key, message)

    async def provision(self, key: PipelineKey, spec: PipelineSpec, artifact: dict[str, Any],
                        initial: RuntimeDesiredStatus, bootstrap_policy: BootstrapPolicy,
                        silent_bootstrap: bool = False, deployment_id: str | None = None) -> None:
        self._deleted.pop(key.uid, None)
        self._token_read.discard(key.uid)
        image = spec.deployment.image
        if image is not None and not image_allowed(image, self.options.image_prefixes):
            self._fail(key, (f"spec.deployment.image {image!r} is not allowed: the operator runs only images "
                             f"starting with {', '.join(self.options.image_prefixes)}; use such an image, or "
                             "have the operator's administrator allow it (flag --pipeline-image-prefix, "
                             "chart value pipelines.imagePrefixes)"))
            return
        ns = key.namespace
        await self._cached(ns, "pvc", "secret", "configmap", "service", "networkpolicy", "statefulset")
        self._unfinished.add(key.uid)
        claim = self._claim(key)
        claim_name = claim["metadata"]["name"] if claim is not None else await self._adopt_retained(key)
        def built(deployment_id: str) -> dict[str, dict[str, Any]]:
            return build_objects(key, spec, artifact, initial, self.options, bootstrap_policy, claim_name,
                                 silent_bootstrap, deployment_id)

        recorded = deployment_id  # the start's, as its status records it; else derived from its token below
        deployment_id = recorded or NO_DEPLOYMENT
        objects = built(deployment_id)
        objects["secret"] = token_secret(key, self._tokens.get(key.uid))
        digests: dict[str, int] = {}
        # Storage first (it outlives compute), then the token, the program, the Service, the
        # NetworkPolicy (before the pod can serve) and the StatefulSet.
        for kind in ("pvc", "secret", "configmap", "service", "networkpolicy", "statefulset"):
            body = objects.get(kind)
            if body is None:
                continue
            name = body["metadata"]["name"]
            existing = self._cache(kind, ns, name)
            if kind == "secret" and existing is not None and key.uid not in self._tokens:
                existing = await self._read(kind, ns, name)  # the cache keeps no token: learn it
            fetched = existing is None
            if existing is None:
                try:
                    existing = await self._create(kind, body)
                except Invalid as exc:
                    what = ("spec.deployment.allowIngressFrom" if kind == "networkpolicy"
                            else "spec.deployment or spec.runtimeConfig.resources")
                    self._fail(key, f"the API server refused {body['kind']} {ns}/{name}: {exc}; correct {what}")
                    return
                if existing is None:  # it exists, but the cache has not seen it yet: whose is it?
                    existing = await self._read(kind, ns, name)
            if existing is None:
                return  # deleted right after: the next pass creates it
            if not self._ours(existing, key):
                self._fail(key, f"{body['kind']} {ns}/{name} exists and does not belong to this pipeline "
                                "(no controller reference to it); delete or rename it")
                return
            if fetched:  # seen before the watch delivers it: the next pass sees a complete set of children
                self._informers[kind].remember(existing)
            if kind == "secret":
                if key.uid not in self._tokens and not await self._remember_token(key, existing):
                    return
                # The token is the Secret's (adopted, or made now): what is put back is that Secret.
                digests[kind] = existing[OWNED_KEY] if OWNED_KEY in existing else owned_digest(kind, existing)
                if recorded is None:
                    deployment_id = deployment_id_of(self._tokens[key.uid])
                    objects = {**built(deployment_id), "secret": objects["secret"]}
            else:
                digests[kind] = owned_digest(kind, body)
        self._owned[key.uid] = _Owned.of(digests, claim_name or f"{child_name(key)}-storage", spec,
                                         objects["configmap"]["data"][CONFIG_JSON], initial, bootstrap_policy,
                                         silent_bootstrap, deployment_id, _binary_of(artifact))
        binary = _binary_of(artifact)
        if binary is not None:
            self._binaries[key.uid] = binary
        else:
            self._binaries.pop(key.uid, None)
        self._unfinished.discard(key.uid)
        self._problems.pop(key.uid, None)

    async def deprovision(self, key: PipelineKey) -> None:
        name = child_name(key)
        self._problems.pop(key.uid, None)
        self._tokens.pop(key.uid, None)
        self._token_read.discard(key.uid)
        self._unfinished.discard(key.uid)
        self._owned.pop(key.uid, None)
        self._binaries.pop(key.uid, None)
        await self._cached(key.namespace, "statefulset", "service", "configmap", "networkpolicy", "secret")
        deleted = self._deleted.setdefault(key.uid, set())
        for kind, child in (("statefulset", name), ("service", name), ("configmap", name),
                            ("networkpolicy", name), ("secret", token_secret_name(key))):
            if kind in deleted:
                continue
            existing = self._cache(kind, key.namespace, child)
            if existing is not None and self._ours(existing, key) and not _deleting(existing) \
                    and await self._delete(kind, key.namespace, child, existing["metadata"]["uid"]):
                deleted.add(kind)

    async def storage_exists(self, key: PipelineKey) -> bool:
        await self._cached(key.namespace, "pvc")
        return self._claim(key) is not None

    async def clear_storage(self, key: PipelineKey) -> None:
        """Delete the claim, under either deletion policy: clearing is an explicit request to drop the data."""
        await self._cached(key.namespace, "pvc")
        existing = self._claim(key)
        deleted = self._deleted.setdefault(key.uid, set())
        if existing is not None and "pvc" not in deleted and self._ours(existing, key) and not _deleting(existing) \
                and await self._delete("pvc", key.namespace, existing["metadata"]["name"], existing["metadata"]["uid"]):
            deleted.add("pvc")

    # -- putting back what the operator owns --------------------------------------------------------

    def _child_names(self, key: PipelineKey, owned: _Owned) -> dict[str, str]:
        name = child_name(key)
        return {"statefulset": name, "service": name, "configmap": name, "networkpolicy": name,
                "secret": token_secret_name(key), "pvc": owned.claim}

    async def _guard(self, key: PipelineKey) -> None:
        """Put back each of the pipeline's children whose owned part is not what the operator wrote (its
        digest in the cache differs), and create again one deleted while the compute stands. After an operator
        restart, what is known without the start's parameters is guarded: the Service and the claim's labels."""
        owned = self._owned.get(key.uid)
        if owned is None:
            owned = self._owned[key.uid] = _Owned(
                digests={"service": owned_digest("service", service_object(key)),
                         "pvc": owned_digest("pvc", {"metadata": {"labels": labels(key)}})},
                claim=self._claim_name(key))
        for kind, name in self._child_names(key, owned).items():
            expected = owned.digests.get(kind)
            if expected is None:
                continue
            live = self._claim(key) if kind == "pvc" else self._cache(kind, key.namespace, name)
            if live is not None and (live.get(OWNED_KEY) == expected or _deleting(live)
                                     or not self._ours(live, key)):
                continue  # as written; or going; or someone else's object, which is never touched
            if live is None and kind in ("statefulset", "pvc"):
                continue  # a StatefulSet deleted is a failure (observe_compute); a claim is never made again here
            await self._put_back(key, kind, name, owned, expected)

    def _rebuild(self, key: PipelineKey, kind: str, owned: _Owned) -> dict[str, Any] | None:
        """The child as the operator wrote it; None when it cannot be known (see :meth:`_guard`)."""
        if kind == "service":
            return service_object(key)
        if kind == "pvc":
            return {"metadata": _meta(key, owned.claim)}
        if kind == "secret":
            token = self._tokens.get(key.uid)
            return token_secret(key, token) if token else None
        objects = owned.rebuild(key, self.options)
        return objects.get(kind) if objects is not None else None

    async def _put_back(self, key: PipelineKey, kind: str, name: str, owned: _Owned, expected: int) -> None:
        ns = key.namespace
        body = self._rebuild(key, kind, owned)
        if body is None:
            return
        fresh = await self._read(kind, ns, name)
        what = f"{KIND_NAMES[kind]} {name}"
        if fresh is None:
            if kind == "pvc":
                return
            try:
                created = await self._create(kind, body)
            except Invalid as exc:
                owned.digests.pop(kind, None)  # not tried on every pass
                log.warning("%s: %s was deleted and cannot be created again: %s", key, what, exc)
                return
            if created is None:
                return  # made meanwhile: the next pass looks at it
            self._informers[kind].remember(created)
            self._restored(key, f"{what} was deleted; created again")
            return
        if _deleting(fresh):
            return
        if not self._ours(fresh, key):  # someone else's by that name (never touched): not read on every pass
            owned.digests.pop(kind, None)
            log.warning("%s: %s is not the pipeline's (no controller reference to it, or no %s label); it is left "
                        "as it is and not put back", key, what, UID_LABEL)
            return
        changed = _differences(owned_part(kind, fresh), owned_part(kind, body))
        result: dict[str, Any] | None = fresh
        if changed:  # written back (the cache may only have been behind: then it is remembered as it is)
            meta = fresh["metadata"]
            if kind == "pvc":
                result = await self._patch(kind, ns, name, {"metadata": {"resourceVersion": meta["resourceVersion"],
                                                                         "labels": labels(key)}})
            else:
                replacement = {k: v for k, v in fresh.items() if k != "status"}
                replacement["metadata"] = {**{k: v for k, v in meta.items() if k != "managedFields"},
                                           "labels": {**(meta.get("labels") or {}), **labels(key)}}
                for field in ("spec", "data", "binaryData", "type"):
                    replacement.pop(field, None)
                    if field in body:
                        replacement[field] = body[field]
                try:
                    result = await self._replace(kind, replacement)
                except Invalid:  # an immutable field (a Secret's token, a ConfigMap made immutable): made anew
                    if not await self._delete(kind, ns, name, meta["uid"]):
                        return
                    result = await self._create(kind, body)
        if result is None:
            return  # changed or gone meanwhile: the next pass looks again
        self._informers[kind].remember(result)
        if changed:
            fields = ", ".join(changed[:4]) + (", ..." if len(changed) > 4 else "")
            self._restored(key, f"{what} {fields} {'was' if len(changed) == 1 else 'were'} changed; put back")
        if owned_digest(kind, result) != expected:  # never a put-back on every pass: what was written differs
            owned.digests.pop(kind, None)
            log.error("%s: %s as the API server stores it differs from what the operator writes (%s); it is no "
                      "longer put back", key, what, ", ".join(_differences(owned_part(kind, result),
                                                                           owned_part(kind, body))) or "?")

    def _restored(self, key: PipelineKey, message: str) -> None:
        self._calls["restored"] += 1
        log.warning("%s: %s", key, message)
        if self.on_restored is not None:
            self.on_restored(key, message)

    def describe_compute(self, key: PipelineKey) -> str:
        return f"StatefulSet {key.namespace}/{child_name(key)}"

    def describe_storage(self, key: PipelineKey) -> str:
        return f"PersistentVolumeClaim {key.namespace}/{self._claim_name(key)}"

    def _pod(self, key: PipelineKey) -> dict[str, Any] | None:
        """The pipeline's pod from the cache, if it is the one its StatefulSet (the operator's own, by uid)
        controls: a pod of that name made by anyone else is not it."""
        name = child_name(key)
        sts, pod = self._cache("statefulset", key.namespace, name), self._cache("pod", key.namespace, f"{name}-0")
        if sts is None or pod is None or not self._ours(sts, key):
            return None
        if _pipeline_of(pod) != key.uid or _controller_of(pod) != sts["metadata"].get("uid"):
            return None
        return pod

    def _address(self, key: PipelineKey) -> str | None:
        """Where the pipeline's pod answers (``status.podIP``, written by its kubelet), if it is the operator's
        (:meth:`_pod`), not on the host's network, Running and Ready."""
        pod = self._pod(key)
        if pod is None or (pod.get("spec") or {}).get("hostNetwork"):
            return None
        status = pod.get("status") or {}
        if status.get("phase") != "Running" or not any(
                c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []):
            return None
        try:
            ip = ipaddress.ip_address(str(status.get("podIP") or ""))
        except ValueError:
            return None
        if ip.is_unspecified or ip.is_multicast:
            return None
        return f"[{ip}]" if ip.version == 6 else str(ip)

    def endpoint(self, key: PipelineKey) -> str | None:
        """``http://<pod IP>:8080`` of the pipeline's own pod (see the module's docstring), or None while there
        is none, or while another pipeline's pod has the same address in the cache (one of them is gone, and
        the watch has not said which yet: a token is never sent to the wrong one)."""
        address = self._address(key)
        endpoint = f"http://{address}:{PORT}" if address is not None else None
        previous = self._endpoints.get(key.uid)
        if previous is not None and previous != endpoint:
            del self._endpoints[key.uid]
            if self._endpoint_keys.get(previous) == key:
                del self._endpoint_keys[previous]
        if endpoint is None:
            return None
        other = self._endpoint_keys.get(endpoint)
        if other is not None and other.uid != key.uid:
            if self._address(other) == address:
                log.warning("%s: its pod and that of %s both have the address %s in the operator's cache; neither "
                            "is reached until the cache says which is gone", key, other, address)
                return None
            self._endpoints.pop(other.uid, None)
        self._endpoints[key.uid] = endpoint
        self._endpoint_keys[endpoint] = key
        return endpoint

    def control_token(self, endpoint: str) -> str | None:
        """The control token of the pipeline ``endpoint()`` last answered ``endpoint`` for."""
        key = self._endpoint_keys.get(endpoint)
        return self.token(key) if key is not None else None

    def token(self, key: PipelineKey) -> str | None:
        """The control token the operator knows for the pipeline (the one its pod was started with)."""
        return self._tokens.get(key.uid)

    async def learn_token(self, key: PipelineKey) -> None:
        """Read the pipeline's control token from its Secret unless it is known (a replica that took over,
        or a standby forwarding an action, has not provisioned the pipeline)."""
        if key.uid not in self._tokens:
            await self._remember_token(key)

    async def program_binary(self, key: PipelineKey, token: str) -> tuple[bool, dict[str, Any] | None]:
        """Whether ``token`` is the control token of the pipeline's current start (compared in constant time; a
        token is read from the Secret only if the cache shows one, so a request cannot make the operator read
        Secrets of stopped pipelines), and the program binary its pod runs if this replica provisioned it (None
        after a restart or a takeover: the caller takes the program's compiled artifact instead)."""
        if key.uid not in self._tokens and self._cache("secret", key.namespace, token_secret_name(key)) is not None:
            await self._remember_token(key)
        known = self._tokens.get(key.uid)
        if not known or not token or not hmac.compare_digest(known.encode(), token.encode("utf-8", "surrogateescape")):
            return False, None
        return True, self._binaries.get(key.uid)

    async def forget(self, key: PipelineKey) -> None:
        """Nothing to remove: the pipeline's objects are deleted with its compute and storage."""
        self._problems.pop(key.uid, None)
        self._tokens.pop(key.uid, None)
        self._token_read.discard(key.uid)
        self._deleted.pop(key.uid, None)
        self._owned.pop(key.uid, None)
        self._binaries.pop(key.uid, None)
        self._unfinished.discard(key.uid)
        endpoint = self._endpoints.pop(key.uid, None)
        if endpoint is not None and self._endpoint_keys.get(endpoint) == key:
            del self._endpoint_keys[endpoint]

    async def close(self) -> None:
        """Stop the watches (their threads end at once) and close their client."""
        if self._starting is not None:
            self._starting.cancel()
        await asyncio.gather(*(i.stop() for i in self._informers.values()))
        await asyncio.to_thread(self._watch_client.close)

    @contextlib.asynccontextmanager
    async def logs(self, key: PipelineKey, follow: bool, tail_lines: int = 50_000, open_timeout: float = 30.0,
                   next_pod_poll: float = 1.0) -> AsyncIterator[AsyncIterator[bytes]]:
        """The log of the pipeline's pod (:meth:`_pod_log`); with ``follow``, across the pipeline's runs, as
        Feldera's runner follows a pipeline's log across stops and starts: once a pod's log ends (the pipeline
        stopped, or it had no pod), the log of the next pod the pipeline's StatefulSet runs (another uid, once
        its container started, looked for every ``next_pod_poll`` seconds in the cache), from its first line, and
        so on for as long as it is read (the API ends the stream when the pipeline is deleted). A stream that
        ends while its pod still runs (quiet for an hour) ends here too: the reader asks again. The first log
        that cannot be read is :class:`LogsUnavailable`, raised on opening; a later one ends the stream."""
        async with self._pod_log(key, follow, tail_lines, open_timeout) as first:
            if not follow:
                yield first
                return
            followed = self._pod_uid(key)

            async def runs() -> AsyncIterator[bytes]:
                nonlocal followed
                async for chunk in first:
                    yield chunk
                while True:
                    for _ in range(5):  # the container's end reaches the cache a moment after its log's
                        if followed is None or followed != self._pod_uid(key) or self._ended(key):
                            break
                        await asyncio.sleep(next_pod_poll)
                    else:
                        return  # the pod runs on: its stream ended by its own bound
                    while True:  # the cache changes on its own thread: looked at, not waited on
                        uid = self._pod_uid(key)
                        if uid is not None and uid != followed and self._started(key):
                            break
                        await asyncio.sleep(next_pod_poll)
                    followed = uid
                    try:
                        async with self._pod_log(key, True, tail_lines, open_timeout) as chunks:
                            async for chunk in chunks:
                                yield chunk
                    except LogsUnavailable as exc:
                        log.info("%s: the log of its next pod cannot be read: %s", key, exc)
                        return

            yield runs()

    def _pod_uid(self, key: PipelineKey) -> str | None:
        pod = self._pod(key)
        return None if pod is None else pod["metadata"].get("uid")

    def _container_states(self, key: PipelineKey) -> list[dict[str, Any]]:
        pod = self._pod(key) or {}
        return [c.get("state") or {} for c in (pod.get("status") or {}).get("containerStatuses") or []
                if c.get("name") == "pipeline"]

    def _started(self, key: PipelineKey) -> bool:
        """The pipeline's pod's container has started (it has a log)."""
        return any("running" in s or "terminated" in s for s in self._container_states(key))

    def _ended(self, key: PipelineKey) -> bool:
        """The pipeline's pod's container is no longer running (or the pod is gone)."""
        return not any("running" in s for s in self._container_states(key))

    @contextlib.asynccontextmanager
    async def _pod_log(self, key: PipelineKey, follow: bool, tail_lines: int = 50_000,
                       open_timeout: float = 30.0) -> AsyncIterator[AsyncIterator[bytes]]:
        """The logs of the pipeline's pod through the API server (``pods/log``, which the API server reads from
        the pod's kubelet): its last ``tail_lines`` lines (as many as Feldera's runner keeps), then, with
        ``follow``, what the container writes until it ends.

        Only the pipeline's own pod is read: the one in the cache that its StatefulSet controls (a pod of that
        name made by someone else is refused). The blocking client reads the stream in a thread of its own,
        with an API client of its own (a log stream holds its connection for as long as it is read, which must
        starve neither the monitoring loops' pool nor the watches), and hands the chunks to the event loop
        through a queue of a few chunks: a reader that does not keep up slows the stream down, nothing piles
        up. Leaving the ``async with`` shuts the connection down, which ends a read blocked in the thread. No
        pod is an empty log, a container that has not started one line saying why; a stream the API server
        does not open within ``open_timeout`` seconds, or refuses otherwise, is :class:`LogsUnavailable`."""
        namespace, pod = key.namespace, f"{child_name(key)}-0"
        try:
            await self._cached(namespace, "statefulset", "pod")
        except (Unavailable, Forbidden) as exc:
            raise LogsUnavailable(str(exc)) from exc
        if self._cache("pod", namespace, pod) is None:
            yield self._empty()  # no pod (not yet, or no more): nothing to read
            return
        if self._pod(key) is None:
            raise LogsUnavailable(f"pod {namespace}/{pod} is not the one the pipeline's StatefulSet controls; the "
                                  "operator does not read its log")
        loop = asyncio.get_running_loop()
        client = kubernetes.client.ApiClient(copy.deepcopy(self.kube.api_client.configuration))
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        room = threading.Semaphore(8)  # chunks handed over and not read yet
        stop = threading.Event()
        opened: asyncio.Future[Any] = loop.create_future()  # the response, or why there is none
        # Following, a quiet container sends nothing for as long as it likes: a stream quiet for an hour
        # ends (the reader asks again), the least bound that never cuts a live pipeline's log in practice.
        request_timeout = (5.0, 3600.0) if follow else (5.0, 30.0)

        def settle(value: Any) -> None:  # on the event loop
            if opened.done():  # given up on (open_timeout): nobody reads this stream
                if not isinstance(value, BaseException):
                    value.close()
            elif isinstance(value, BaseException):
                opened.set_exception(value)
            else:
                opened.set_result(value)

        def hand(chunk: bytes | None) -> bool:  # in the thread; False once the reader is gone
            while not room.acquire(timeout=1.0):
                if stop.is_set():
                    return False
            if stop.is_set():
                return False
            try:
                loop.call_soon_threadsafe(queue.put_nowait, chunk)
            except RuntimeError:  # the event loop is closed
                return False
            return True

        def read() -> None:  # the thread
            try:
                stream: Any = kubernetes.client.CoreV1Api(client).read_namespaced_pod_log(
                    pod, namespace, container="pipeline", follow=follow, tail_lines=tail_lines,
                    _preload_content=False, _request_timeout=request_timeout)
            except Exception as exc:  # noqa: BLE001 - handed to the reader, which says what it means
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(settle, exc)
                return
            try:
                loop.call_soon_threadsafe(settle, stream)
                while not stop.is_set() and (chunk := stream.read1(64 * 1024)):
                    if not hand(chunk):
                        return
            except Exception as exc:  # noqa: BLE001 - the connection was cut, or shut down by the reader
                if not stop.is_set():
                    log.info("%s: the log stream of pod %s/%s ended: %s", key, namespace, pod, exc)
            finally:
                stream.close()
            hand(None)

        async def streamed() -> AsyncIterator[bytes]:
            while (chunk := await queue.get()) is not None:
                room.release()
                yield chunk

        async def once(line: bytes) -> AsyncIterator[bytes]:
            if line:
                yield line

        response: Any = None
        chunks = streamed()
        try:
            threading.Thread(target=read, name=f"pod-log-{namespace}/{pod}", daemon=True).start()
            try:
                async with asyncio.timeout(open_timeout):
                    response = await opened
            except TimeoutError:
                raise LogsUnavailable(f"the Kubernetes API server did not start sending the logs of pod "
                                      f"{namespace}/{pod} within {open_timeout:g}s; try again") from None
            except ApiException as exc:
                if exc.status == 404:  # no pod (not yet, or no more): nothing to read
                    chunks = once(b"")
                elif exc.status == 400:  # the container has not started (yet): the API server says why
                    chunks = once(f"No logs from pod {namespace}/{pod} yet: {_reason(exc)}\n".encode())
                elif exc.status == 403:
                    raise LogsUnavailable(f"the operator may not get pods/log in namespace {namespace}: give its "
                                          "Role the verb get on pods/log") from exc
                else:
                    raise LogsUnavailable(f"the Kubernetes API server could not read the logs of pod "
                                          f"{namespace}/{pod}: {exc.status} {_reason(exc)}") from exc
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise LogsUnavailable(f"the Kubernetes API server is unreachable ({exc})") from exc
            yield chunks
        finally:
            stop.set()
            if response is not None:
                with contextlib.suppress(Exception):
                    response.shutdown()  # ends a read blocked in the thread
            await asyncio.to_thread(client.close)

    @staticmethod
    async def _empty() -> AsyncIterator[bytes]:
        return
        yield b""  # an async generator that yields nothing
