"""The kstatus rules (kubernetes-sigs/cli-utils ``pkg/kstatus``), which Flux uses for health.

``compute`` judges any object by its generic status fields, exactly as kstatus does for a
custom resource it has no special rules for. ``expected_from_lifecycle`` says what the
verdict must be from the Pipeline's Feldera status fields alone, so a tracker can check
that the conditions the operator writes tell GitOps tools the truth.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline_operator.models import program_digest

CURRENT, IN_PROGRESS, FAILED, TERMINATING = "Current", "InProgress", "Failed", "Terminating"


def _conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c.get("type"): c for c in (obj.get("status") or {}).get("conditions") or []}


def compute(obj: dict[str, Any]) -> tuple[str, str]:
    """The kstatus verdict and its reason, for a resource without kind-specific rules."""
    meta = obj.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return TERMINATING, "Resource scheduled for deletion"
    status = obj.get("status") or {}
    observed = status.get("observedGeneration")
    if observed is not None and observed != meta.get("generation"):
        return IN_PROGRESS, "LatestGenerationNotObserved"
    conds = _conditions(obj)
    reconciling = conds.get("Reconciling")
    if reconciling and reconciling.get("status") == "True":
        return IN_PROGRESS, reconciling.get("reason", "Reconciling")
    stalled = conds.get("Stalled")
    if stalled and stalled.get("status") == "True":
        return FAILED, stalled.get("reason", "Stalled")
    ready = conds.get("Ready")
    if ready is not None:
        if ready.get("status") == "True":
            return CURRENT, "Ready"
        return IN_PROGRESS, ready.get("reason", "NotReady")
    return CURRENT, "Resource is current"


def expected_from_lifecycle(obj: dict[str, Any]) -> str:
    """What the verdict must be, judged from the Pipeline's lifecycle fields only."""
    meta = obj.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return TERMINATING
    status = obj.get("status") or {}
    if status.get("observedGeneration") != meta.get("generation"):
        return IN_PROGRESS
    if status.get("deploymentError") or status.get("programStatus") in ("SqlError", "RustError", "SystemError"):
        return FAILED
    spec = obj.get("spec") or {}
    resources = status.get("deploymentResourcesStatus")
    desired = status.get("deploymentResourcesDesiredStatus")
    if resources == "Stopped" and desired == "Stopped" and spec.get("desiredStatus") == "Provisioned" and \
            (status.get("operatorState") or {}).get("systemStopGeneration") is not None:
        return FAILED  # held Stopped by the system until a start: a person must act
    if resources != desired or desired != spec.get("desiredStatus", "Stopped"):
        return IN_PROGRESS
    if status.get("programStatus") != "Success" or status.get("storageStatus") == "Clearing":
        return IN_PROGRESS
    if status.get("programDigest") != program_digest((spec.get("program") or {}).get("sql", "")):
        return IN_PROGRESS  # a program change is held until the pipeline is Stopped
    if resources == "Provisioned" and status.get("deploymentRuntimeStatus") not in (
            "Running", "Paused", "Standby", "AwaitingApproval"):
        return IN_PROGRESS
    wanted = spec.get("runtimeDesiredStatus")
    observed = status.get("deploymentRuntimeDesiredStatus")
    if resources == "Provisioned" and wanted and observed in ("Running", "Paused") and observed != wanted:
        return IN_PROGRESS
    return CURRENT


@dataclass
class KStatusTracker:
    """Collects the Pipelines a test touched; at teardown each must be judged correctly."""
    get: Callable[[str, str, str], dict[str, Any]]
    tracked: dict[tuple[str, str], str | None] = field(default_factory=dict)

    def track(self, namespace: str, name: str, expect: str | None = None) -> None:
        self.tracked[(namespace, name)] = expect

    def verify(self) -> None:
        problems = []
        for (namespace, name), expect in self.tracked.items():
            obj = self.get("pipeline", name, namespace)
            verdict, reason = compute(obj)
            truth = expected_from_lifecycle(obj)
            if verdict != truth:
                problems.append(f"{namespace}/{name}: kstatus says {verdict} ({reason}), "
                                f"the lifecycle fields say {truth}")
            if expect is not None and verdict != expect:
                problems.append(f"{namespace}/{name}: kstatus says {verdict} ({reason}), expected {expect}")
            from .argocd_health import EXPECTED, health
            argo, message = health(obj)
            if argo not in EXPECTED[verdict]:
                problems.append(f"{namespace}/{name}: Argo CD health {argo} ({message}) disagrees with kstatus {verdict}")
        assert not problems, "\n".join(problems)
