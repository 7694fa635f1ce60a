"""The Pipeline resource's status from the core's state, and back; and its conditions.

Conditions follow the Kubernetes conventions that GitOps tools read (kstatus, Argo CD):
``Ready`` (True when the desired state is reached without error), ``Reconciling`` (True
while moving) and ``Stalled`` (True while an error is latched or the program failed).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence

from ..models import (
    Condition,
    ConditionStatus,
    ErrorResponse,
    ErrorStatus,
    HandledActions,
    HistoryEntry,
    MAX_ERROR_MESSAGE,
    OperatorState,
    PipelineStatus,
    ProgramStatus,
    ResourcesDesiredStatus,
    ResourcesStatus,
    RuntimeDesiredStatus,
    RuntimeStatus,
    StorageStatus,
    combined_desired_status,
    combined_status,
)
from .lifecycle import Desired, PipelineState, effective_desired

READY, RECONCILING, STALLED = "Ready", "Reconciling", "Stalled"
# Runtime statuses in which a Provisioned pipeline has arrived (the others are on the way).
SETTLED_RUNTIME = frozenset({RuntimeStatus.RUNNING, RuntimeStatus.PAUSED, RuntimeStatus.STANDBY,
                             RuntimeStatus.AWAITING_APPROVAL})
_REASON_BAD = re.compile(r"[^A-Za-z0-9_,:]")


def condition_reason(text: str) -> str:
    """A string made valid as a condition reason (CamelCase-ish, ``^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$``)."""
    cleaned = _REASON_BAD.sub("", text).rstrip(",:")
    if not cleaned or not cleaned[0].isalpha():
        cleaned = "Error" + cleaned
    return cleaned[:1024]


def progress(desired: Desired, state: PipelineState) -> tuple[str, str] | None:
    """Why the pipeline is not at its desired state yet (reason, message), or None if it is."""
    target = effective_desired(desired, state)
    if state.program_change_held:
        return ("ProgramChangeHeld", "The program changed while the pipeline was not Stopped; "
                "stop the pipeline to compile and use it")
    if state.storage_status is StorageStatus.CLEARING:
        return "ClearingStorage", "Storage is being cleared"
    if state.program_status.is_compiling:
        return "Compiling", f"The program is being compiled ({state.program_status.value})"
    if state.resources_status.value != target.value or state.resources_desired_status is not target:
        if state.resources_status in (ResourcesStatus.PROVISIONING, ResourcesStatus.STOPPING):
            reason = state.resources_status.value
        else:
            reason = "Starting" if target is ResourcesDesiredStatus.PROVISIONED else "Stopping"
        return reason, f"Resources are {state.resources_status.value}; desired {target.value}"
    if state.resources_status is ResourcesStatus.PROVISIONED:
        if state.runtime_status not in SETTLED_RUNTIME:
            shown = state.runtime_status.value if state.runtime_status else "unknown"
            return "RuntimeNotReady", f"The pipeline is {shown}"
        wanted = desired.runtime_desired_status
        observed = state.runtime_desired_status
        if wanted is not None and observed in (RuntimeDesiredStatus.RUNNING, RuntimeDesiredStatus.PAUSED) \
                and observed.value != wanted.value:
            return "RuntimeDesiredStatusPending", f"Asking the pipeline to be {wanted.value}"
    return None


def conditions(desired: Desired, state: PipelineState, previous: Sequence[Condition],
               now: dt.datetime, blocked: str | None = None) -> list[Condition]:
    """Ready, Reconciling and Stalled for this state; lastTransitionTime moves only on a flip.

    ``blocked`` says why the operator cannot act at all (a permission it lacks)."""
    stalled: tuple[str, str] | None = None
    if blocked is not None:
        stalled = ("PermissionDenied", blocked)
    elif state.deployment_error is not None:
        stalled = (condition_reason(state.deployment_error.error_code), state.deployment_error.message)
    elif state.program_status.is_failed:
        stalled = (state.program_status.value, "The program failed to compile; fix spec.program.sql")
    elif (state.system_stop_generation is not None and state.resources_status is ResourcesStatus.STOPPED
          and desired.resources_desired_status is ResourcesDesiredStatus.PROVISIONED):
        stalled = ("StoppedBySystem", "The pipeline stopped by itself and stays Stopped until it is started "
                   "again: set the dataflow.dev/start annotation to a new value, change the spec, or POST /start")
    moving = None if stalled else progress(desired, state)
    if stalled:
        ready = (ConditionStatus.FALSE, stalled[0], stalled[1])
    elif moving:
        ready = (ConditionStatus.FALSE, moving[0], moving[1])
    else:
        shown = combined_status(state.resources_status, state.runtime_status).value
        ready = (ConditionStatus.TRUE, shown, f"The pipeline is {shown}, as desired")
    wanted = {
        READY: ready,
        RECONCILING: (ConditionStatus.TRUE, moving[0], moving[1]) if moving
        else (ConditionStatus.FALSE, "Settled", "Nothing to do"),
        STALLED: (ConditionStatus.TRUE, stalled[0], stalled[1]) if stalled
        else (ConditionStatus.FALSE, "NoError", "No error"),
    }
    before = {c.type: c for c in previous}
    out = []
    for ctype, (status, reason, message) in wanted.items():
        old = before.get(ctype)
        since = old.last_transition_time if old is not None and old.status is status else now
        out.append(Condition(type=ctype, status=status, reason=condition_reason(reason),
                             message=message[:1024], last_transition_time=since,
                             observed_generation=desired.generation))
    return out


def _error_status(error: ErrorResponse | None) -> ErrorStatus | None:
    if error is None:
        return None
    return ErrorStatus(message=error.message[:MAX_ERROR_MESSAGE], error_code=error.error_code[:256],
                       details=error.details)


def to_status(desired: Desired, state: PipelineState, previous_conditions: Sequence[Condition],
              history: Sequence[HistoryEntry], now: dt.datetime, blocked: str | None = None) -> PipelineStatus:
    """The whole ``status`` the operator writes for this state."""
    return PipelineStatus(
        observed_generation=state.observed_generation,
        conditions=conditions(desired, state, previous_conditions, now, blocked),
        deployment_status=combined_status(state.resources_status, state.runtime_status),
        deployment_desired_status=combined_desired_status(
            state.resources_desired_status, state.runtime_desired_status, state.deployment_initial),
        deployment_resources_status=state.resources_status,
        deployment_resources_status_since=state.resources_status_since,
        deployment_resources_status_details=state.resources_status_details,
        deployment_resources_desired_status=state.resources_desired_status,
        deployment_resources_desired_status_since=state.resources_desired_status_since,
        deployment_initial=state.deployment_initial,
        bootstrap_policy=state.bootstrap_policy,
        deployment_runtime_status=state.runtime_status,
        deployment_runtime_status_since=state.runtime_status_since,
        deployment_runtime_status_details=state.runtime_status_details,
        deployment_runtime_desired_status=state.runtime_desired_status,
        deployment_runtime_desired_status_since=state.runtime_desired_status_since,
        deployment_error=_error_status(state.deployment_error),
        program_status=state.program_status,
        program_status_since=state.program_status_since,
        program_error=state.program_error,
        program_digest=state.program_digest,
        program_version=state.program_version or None,
        program_change_held=state.program_change_held or None,
        storage_status=state.storage_status,
        storage_status_details=state.storage_status_details,
        handled_actions=HandledActions(start=state.handled_start, clear_storage=state.handled_clear_storage,
                                       dismiss_error=state.handled_dismiss_error,
                                       approve=state.handled_approve)
        if (state.handled_start or state.handled_clear_storage or state.handled_dismiss_error
            or state.handled_approve) else None,
        operator_state=OperatorState(error_generation=state.error_generation,
                                     system_stop_generation=state.system_stop_generation,
                                     stop_spec_digest=state.stop_spec_digest,
                                     runtime_desired_adopted=state.runtime_desired_adopted,
                                     runtime_desired_pending=state.runtime_desired_pending,
                                     suspend_requested_at=state.suspend_requested_at),
        history=list(history),
    )


def from_status(status: PipelineStatus) -> PipelineState:
    """The core's state from a Pipeline's status (a new Pipeline has the initial state)."""
    err = status.deployment_error
    ops = status.operator_state or OperatorState()
    handled = status.handled_actions or HandledActions()
    return PipelineState(
        resources_status=status.deployment_resources_status or ResourcesStatus.STOPPED,
        resources_status_since=status.deployment_resources_status_since,
        resources_status_details=status.deployment_resources_status_details,
        resources_desired_status=status.deployment_resources_desired_status or ResourcesDesiredStatus.STOPPED,
        resources_desired_status_since=status.deployment_resources_desired_status_since,
        deployment_initial=status.deployment_initial,
        bootstrap_policy=status.bootstrap_policy,
        runtime_status=status.deployment_runtime_status,
        runtime_status_since=status.deployment_runtime_status_since,
        runtime_status_details=status.deployment_runtime_status_details,
        runtime_desired_status=status.deployment_runtime_desired_status,
        runtime_desired_status_since=status.deployment_runtime_desired_status_since,
        deployment_error=None if err is None else ErrorResponse(message=err.message, error_code=err.error_code,
                                                               details=err.details),
        program_status=status.program_status or ProgramStatus.PENDING,
        program_status_since=status.program_status_since,
        program_digest=status.program_digest,
        program_version=status.program_version or 0,
        program_error=status.program_error,
        program_change_held=bool(status.program_change_held),
        storage_status=status.storage_status or StorageStatus.CLEARED,
        storage_status_details=status.storage_status_details,
        error_generation=ops.error_generation,
        system_stop_generation=ops.system_stop_generation,
        stop_spec_digest=ops.stop_spec_digest,
        runtime_desired_adopted=ops.runtime_desired_adopted,
        runtime_desired_pending=ops.runtime_desired_pending,
        suspend_requested_at=ops.suspend_requested_at,
        handled_start=handled.start,
        handled_clear_storage=handled.clear_storage,
        handled_dismiss_error=handled.dismiss_error,
        handled_approve=handled.approve,
        observed_generation=status.observed_generation,
    )
