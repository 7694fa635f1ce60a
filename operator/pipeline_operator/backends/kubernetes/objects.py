"""The objects of a pipeline's compute and storage as the operator builds them: their names and labels,
the options the backend takes from the settings, and the StatefulSet, Service, ConfigMap, token Secret,
NetworkPolicy and PersistentVolumeClaim manifests."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import math
import secrets
import urllib.parse
from typing import Any

from kubernetes.utils import parse_quantity

from ...feldera.launch import CONFIG_YAML, config_files, launch_args, pipeline_config, tokio_worker_threads
from ...feldera.launcher import BINARY_ROUTE
from ...identity import PipelineKey
from ...models import API_GROUP, API_VERSION, KIND, BootstrapPolicy, PipelineSpec, RuntimeDesiredStatus
from ...settings import OperatorSettings
from .. import pipeline_env

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
KIND_NAMES = {"statefulset": "StatefulSet", "service": "Service", "configmap": "ConfigMap", "secret": "Secret",
              "networkpolicy": "NetworkPolicy", "pvc": "PersistentVolumeClaim"}
