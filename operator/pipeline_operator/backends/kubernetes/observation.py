"""The observation of a pipeline's compute: its StatefulSet, pod and claim in the caches as a
``ComputeObservation``, and why a pod is not ready in Kubernetes' own words."""

from __future__ import annotations

from typing import Any

from ...core.lifecycle import ComputeObservation, ComputeState
from ...identity import PipelineKey
from .children import COMPUTE_KINDS
from .objects import CRASH_LOOP_RESTARTS, IMAGE_PULL_REASONS, child_name
from .owned import _deleting
from .putback import PutBack


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


class ComputeObserver(PutBack):
    """Observes a pipeline's compute from the caches (and guards its children while it stands)."""

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
