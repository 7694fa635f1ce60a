"""What the operator owns in each child and what the caches keep of it: the owned fields and their digest
(what a put-back compares), the cache's projection of each kind of child, whose child an object says it
is, and what rebuilds a pipeline's children (:class:`_Owned`)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import zlib
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes.utils import parse_quantity

from ...feldera.launch import config_files
from ...feldera_config import RuntimeConfig
from ...identity import PipelineKey
from ...kube.projection import SHARED, FieldProjection, project
from ...models import BootstrapPolicy, DeploymentSpec, PipelineSpec, RuntimeDesiredStatus
from .. import RUNTIME_CONFIG_USED
from .objects import NO_DEPLOYMENT, RETAINED_LABEL, UID_LABEL, KubernetesOptions, build_objects, labels

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
