"""The Pipeline resource's status from the core's state, and back; and its conditions.

Conditions follow the Kubernetes conventions that GitOps tools read (kstatus, Argo CD):
``Ready`` (True when the desired state is reached without error), ``Reconciling`` (True
while moving) and ``Stalled`` (True while an error is latched or the program failed).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Sequence
from typing import Any

from ..models import (
    MAX_ERROR_MESSAGE,
    Condition,
    ConditionStatus,
    ErrorResponse,
    ErrorStatus,
    HandledActions,
    HistoryEntry,
    OperatorState,
    PipelineDeployment,
    PipelineStatus,
    ResourcesDesiredStatus,
    ResourcesStatus,
    RuntimeDesiredStatus,
    RuntimeStatus,
    StorageStatus,
    combined_desired_status,
    combined_status,
)
from .lifecycle import ENTERPRISE_GRACEFUL_STOP, Desired, PipelineState, effective_desired, graceful_stop_refused

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
    if state.deployment_resources_status.value != target.value \
            or state.deployment_resources_desired_status is not target:
        if state.deployment_resources_status in (ResourcesStatus.PROVISIONING, ResourcesStatus.STOPPING):
            reason = state.deployment_resources_status.value
        else:
            reason = "Starting" if target is ResourcesDesiredStatus.PROVISIONED else "Stopping"
        return reason, f"Resources are {state.deployment_resources_status.value}; desired {target.value}"
    if state.deployment_resources_status is ResourcesStatus.PROVISIONED:
        if state.deployment_runtime_status not in SETTLED_RUNTIME:
            shown = state.deployment_runtime_status.value if state.deployment_runtime_status else "unknown"
            return "RuntimeNotReady", f"The pipeline is {shown}"
        wanted = desired.runtime_desired_status
        observed = state.deployment_runtime_desired_status
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
    elif graceful_stop_refused(desired, state):
        stalled = (ENTERPRISE_GRACEFUL_STOP.error_code, ENTERPRISE_GRACEFUL_STOP.message + (
            " The pipeline goes on: it writes no checkpoint, so a graceful stop would lose its state. Set "
            "spec.stopMode to Force to stop it (its state is lost), or POST /stop?force=true."))
    elif (state.system_stop_generation is not None and state.deployment_resources_status is ResourcesStatus.STOPPED
          and desired.resources_desired_status is ResourcesDesiredStatus.PROVISIONED):
        stalled = ("StoppedBySystem", "The pipeline stopped by itself and stays Stopped until it is started "
                   "again: set the dataflow.dev/start annotation to a new value, change the spec, or POST /start")
    moving = None if stalled else progress(desired, state)
    if stalled:
        ready = (ConditionStatus.FALSE, stalled[0], stalled[1])
    elif moving:
        ready = (ConditionStatus.FALSE, moving[0], moving[1])
    else:
        shown = combined_status(state.deployment_resources_status, state.deployment_runtime_status).value
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


# A checkpoint's fingerprint is a u64 (Feldera's CheckpointMetadata): the API server keeps a JSON number that
# does not fit an int64 as a float64, so that half of all fingerprints would come back changed. The status keeps
# them as decimal strings; the state (and so the API, the events and the store) has the number.
_FINGERPRINT = re.compile(r"[0-9]{1,20}")
_U64_MAX = 2**64 - 1


# CheckpointMetadata's fields that may be null: the API server drops a null it keeps in a free-form field.
_NULLABLE = ("identifier", "size", "steps", "processed_records")


def _with_fingerprints(details: Any, convert: Callable[[Any], Any], nulls: bool = False) -> Any:
    """``details`` with ``convert`` applied to each ``checkpoints[].fingerprint``, and with ``nulls`` the nullable
    fields such a checkpoint lacks as null (anything else as it is)."""
    if not isinstance(details, dict) or not isinstance(details.get("checkpoints"), list):
        return details
    return {**details, "checkpoints": [
        {**(dict.fromkeys(_NULLABLE) if nulls else {}), **c, "fingerprint": convert(c["fingerprint"])}
        if isinstance(c, dict) and "fingerprint" in c else c for c in details["checkpoints"]]}


def _fingerprint_text(value: Any) -> Any:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _fingerprint_number(value: Any) -> Any:
    if isinstance(value, str) and _FINGERPRINT.fullmatch(value) and int(value) <= _U64_MAX:
        return int(value)
    return value


def storage_details_to_status(details: Any) -> Any:
    """``storage_status_details`` as the Pipeline's status keeps it (fingerprints as decimal strings)."""
    return _with_fingerprints(details, _fingerprint_text)


def storage_details_from_status(details: Any) -> Any:
    """``storage_status_details`` from the Pipeline's status (fingerprints as numbers again, nulls back)."""
    return _with_fingerprints(details, _fingerprint_number, nulls=True)


# The state's fields that the status keeps under the same name (Feldera's names), derived: a new
# field of both is mapped without an edit here. Bookkeeping goes to ``operatorState`` (same names)
# and the one-shot actions to ``handledActions`` (``handled_<action>`` in the state).
_OPERATOR_STATE = tuple(OperatorState.model_fields)
_HANDLED = tuple(HandledActions.model_fields)
_SAME = tuple(f for f in PipelineDeployment.model_fields if f not in ("deployment_error", "program_version"))
assert set(PipelineDeployment.model_fields) <= set(PipelineStatus.model_fields)
assert set(_OPERATOR_STATE) <= set(PipelineState.model_fields)
assert {f"handled_{a}" for a in _HANDLED} <= set(PipelineState.model_fields)


def to_status(desired: Desired, state: PipelineState, previous_conditions: Sequence[Condition],
              history: Sequence[HistoryEntry], now: dt.datetime, blocked: str | None = None) -> PipelineStatus:
    """The whole ``status`` the operator writes for this state."""
    handled = {a: getattr(state, f"handled_{a}") for a in _HANDLED}
    same = {f: getattr(state, f) for f in _SAME}
    same["storage_status_details"] = storage_details_to_status(state.storage_status_details)
    return PipelineStatus(
        **same,
        observed_generation=state.observed_generation,
        conditions=conditions(desired, state, previous_conditions, now, blocked),
        deployment_status=combined_status(state.deployment_resources_status, state.deployment_runtime_status),
        deployment_desired_status=combined_desired_status(
            state.deployment_resources_desired_status, state.deployment_runtime_desired_status,
            state.deployment_initial),
        deployment_error=_error_status(state.deployment_error),
        program_change_held=state.program_change_held or None,
        program_version=state.program_version or None,
        handled_actions=HandledActions(**handled) if any(handled.values()) else None,
        operator_state=OperatorState(**{f: getattr(state, f) for f in _OPERATOR_STATE}),
        history=list(history),
    )


def from_status(status: PipelineStatus) -> PipelineState:
    """The core's state from a Pipeline's status (a new Pipeline has the initial state)."""
    err = status.deployment_error
    ops = status.operator_state or OperatorState()
    handled = status.handled_actions or HandledActions()
    same = {f: getattr(status, f) for f in _SAME if getattr(status, f) is not None}  # None: the state's default
    if "storage_status_details" in same:
        same["storage_status_details"] = storage_details_from_status(same["storage_status_details"])
    return PipelineState(
        **same,
        deployment_error=None if err is None else ErrorResponse(message=err.message, error_code=err.error_code,
                                                               details=err.details),
        program_change_held=bool(status.program_change_held),
        program_version=status.program_version or 0,
        observed_generation=status.observed_generation,
        **{f: getattr(ops, f) for f in _OPERATOR_STATE},
        **{f"handled_{a}": getattr(handled, a) for a in _HANDLED},
    )
