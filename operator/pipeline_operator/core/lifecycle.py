"""Feldera's pipeline lifecycle as one pure function.

:func:`decide` takes what the user wants (:class:`Desired`, from the Pipeline's spec and
annotations), what the operator last recorded (:class:`PipelineState`, from the Pipeline's
status), what the edges just observed (:class:`Observation`: compute, storage, program,
runtime) and the time, and returns the status steps to commit, in order, and the actions
the edges must take. It encodes Feldera's three machines (resources, storage, program), the
runtime status contract, the latched error and the one-shot actions.

Everything here is deterministic: no clock, no I/O, no randomness.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from ..feldera_config import RuntimeConfig
from ..models import (
    EVENT_FIELDS,
    STATUS_FIELDS,
    ActionOutcome,
    BootstrapPolicy,
    ErrorResponse,
    EventStatus,
    HandledAction,
    InitialRuntimeStatus,
    PipelineDeployment,
    ProgramStatus,
    ResourcesDesiredStatus,
    ResourcesStatus,
    RuntimeDesiredStatus,
    RuntimeStatus,
    SpecRuntimeDesiredStatus,
    StopMode,
    StorageStatus,
)
from . import transitions
from .emission import UuidV7

R = ResourcesStatus
S = StorageStatus
P = ProgramStatus
RS = RuntimeStatus
RDS = RuntimeDesiredStatus


@dataclass(frozen=True)
class LifecycleConfig:
    """Timing rules of the lifecycle (Feldera's constants unless stated)."""
    # After Provisioned, an unreachable /status is Initializing for this long, then Unavailable.
    provisioned_grace_period: float = 20.0
    # Used when the spec gives no deployment.provisioningTimeoutSeconds.
    default_provisioning_timeout: float = 300.0


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------


class Desired(_Frozen):
    """What the user asked for: the spec, its generation and the one-shot annotations."""
    generation: int = 1
    resources_desired_status: ResourcesDesiredStatus = ResourcesDesiredStatus.STOPPED
    initial: InitialRuntimeStatus = InitialRuntimeStatus.RUNNING
    runtime_desired_status: SpecRuntimeDesiredStatus | None = None
    stop_mode: StopMode = StopMode.GRACEFUL
    program_digest: str = ""
    # The rest of Feldera's program (udf_rust, udf_toml, program_config): a change is a new program too.
    program_settings_digest: str = ""
    # Feldera's fields that its version counts (program, configurations, description, tags).
    edit_digest: str = ""
    provisioning_timeout: float | None = None
    hosts: int = 1  # Feldera's runtime_config.hosts: a multihost pipeline cannot be provisioned here
    bootstrap_policy: BootstrapPolicy = BootstrapPolicy.AWAIT_APPROVAL
    silent_bootstrap: bool = False
    # Feldera allows an initial Standby only with a file storage backend that has sync configured.
    standby_allowed: bool = False
    # The pipeline runs a binary of Feldera's community edition (built from its open source): it writes no
    # checkpoint, so a graceful stop cannot be done (Feldera's open-source manager refuses it).
    community_edition: bool = False
    # Identifies the spec without its client metadata (description, tags): a new generation that
    # changes only those starts nothing and dismisses nothing (Feldera's metadata PATCH).
    spec_digest: str = ""
    # The spec is exactly as the HTTP API last wrote it (its marker annotation names this spec): a change
    # made through the API starts nothing and dismisses nothing, as Feldera's edits and /stop; only a
    # change made otherwise (kubectl, a GitOps tool) releases the system's hold, as docs/gitops.md says.
    spec_by_api: bool = False
    # Values of the one-shot annotations (any new value asks again).
    start: str | None = None
    clear_storage: str | None = None
    dismiss_error: str | None = None
    approve: str | None = None


class ComputeState(str, enum.Enum):
    ABSENT = "Absent"            # nothing exists
    PENDING = "Pending"          # created, not ready yet
    READY = "Ready"              # running and ready
    FAILED = "Failed"            # exited, crash-looping, deleted behind our back...
    TERMINATING = "Terminating"  # being deleted


class ComputeObservation(_Frozen):
    state: ComputeState
    message: str = ""  # the cause, as the backend reported it (capped: a container may write it)

    @field_validator("message")
    @classmethod
    def _capped(cls, value: str) -> str:
        return _short(value)


class RuntimeProbe(str, enum.Enum):
    OK = "Ok"                    # 200 with a status (or a legacy string)
    UNAVAILABLE = "Unavailable"  # 503
    FATAL = "Fatal"              # any other HTTP status, or a legacy "Terminated"
    UNREACHABLE = "Unreachable"  # timeout, connection refused, not JSON


class RuntimeObservation(_Frozen):
    """One answer of the pipeline's ``GET /status`` (see :func:`parse_status_response`)."""
    probe: RuntimeProbe
    runtime_status: RuntimeStatus | None = None
    runtime_desired_status: RuntimeDesiredStatus | None = None
    runtime_status_details: Any = None
    storage_status_details: Any = None  # None: unchanged (Feldera's COALESCE)
    error: ErrorResponse | None = None  # FATAL only
    reason: str = ""                    # UNAVAILABLE / UNREACHABLE, and OK answers that did not parse

    # Everything here may come from the pipeline and goes into the Pipeline's status, its events and
    # the event store: capped however the observation was made.
    @field_validator("reason")
    @classmethod
    def _capped_reason(cls, value: str) -> str:
        return _short(value)

    @field_validator("runtime_status_details", "storage_status_details")
    @classmethod
    def _capped_details(cls, value: Any) -> Any:
        return cap_details(value)

    @field_validator("error")
    @classmethod
    def _capped_error(cls, value: ErrorResponse | None) -> ErrorResponse | None:
        return None if value is None else cap_error(value)


class ProgramObservation(_Frozen):
    """What the compiler knows of one program: its status and, when failed, the error."""
    program_digest: str
    status: ProgramStatus
    error: Any = None


class StorageObservation(_Frozen):
    exists: bool


class Observation(_Frozen):
    compute: ComputeObservation = ComputeObservation(state=ComputeState.ABSENT)
    runtime: RuntimeObservation | None = None
    program: ProgramObservation | None = None
    storage: StorageObservation | None = None


# --------------------------------------------------------------------------------------
# State (what the Pipeline's status records)
# --------------------------------------------------------------------------------------


class PipelineState(PipelineDeployment, _Frozen):
    """Feldera's fields of the pipeline (declared once, by :class:`models.PipelineDeployment`) and
    the operator's bookkeeping."""
    # Bookkeeping (kept in status so that a restarted operator carries on where it was).
    error_generation: int | None = None           # spec generation when the error latched
    # "Desired set to Stopped by the system" (every move to Stopping, and a start that failed while
    # Stopped): the spec generation then. Released by a start request or a newer generation.
    system_stop_generation: int | None = None
    stop_spec_digest: str | None = None  # the spec (Desired.spec_digest) when the error or the hold was set
    runtime_desired_adopted: SpecRuntimeDesiredStatus | None = None  # spec value in force
    runtime_desired_pending: SpecRuntimeDesiredStatus | None = None  # still to be forwarded
    suspend_requested_at: dt.datetime | None = None
    program_settings_digest: str | None = None  # Desired.program_settings_digest of the program status
    version: int | None = None         # Feldera's version (None: not counted yet)
    version_digest: str | None = None  # Desired.edit_digest when the version was counted
    program_change_held: bool = False
    handled_start: HandledAction | None = None
    handled_clear_storage: HandledAction | None = None
    handled_dismiss_error: HandledAction | None = None
    handled_approve: HandledAction | None = None
    observed_generation: int | None = None

    def event_status(self) -> EventStatus:
        """The monitor-event snapshot of this state (the event's fields are the state's, by name)."""
        return EventStatus(**{f: getattr(self, f) for f in EVENT_FIELDS})


# --------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------


class ActionKind(str, enum.Enum):
    COMPILE = "Compile"                  # make sure the program is being compiled
    PROVISION = "Provision"              # create compute (and storage), or wait for it
    DEPROVISION = "Deprovision"          # delete compute, or wait for it to be gone
    SUSPEND = "Suspend"                  # POST /suspend (graceful stop)
    SET_RUNTIME_DESIRED = "SetRuntimeDesired"  # GET /start or GET /pause, or POST /activate
    APPROVE = "Approve"                  # POST /approve
    CLEAR_STORAGE = "ClearStorage"       # delete storage, or wait for it to be gone


class Action(_Frozen):
    kind: ActionKind
    program_digest: str | None = None
    initial: RuntimeDesiredStatus | None = None
    bootstrap_policy: BootstrapPolicy | None = None
    silent_bootstrap: bool = False
    deployment_id: uuid.UUID | None = None  # PROVISION: the start's id, as recorded (Feldera's --deployment-id)
    target: SpecRuntimeDesiredStatus | None = None
    activate: bool = False  # SET_RUNTIME_DESIRED from Standby


class Step(_Frozen):
    """One committed status change and why it happened."""
    state: PipelineState
    reason: str


class Decision(_Frozen):
    steps: tuple[Step, ...]
    state: PipelineState
    actions: tuple[Action, ...]
    notes: tuple[str, ...]  # decisions worth a log line that changed no status


# --------------------------------------------------------------------------------------
# Parsing the pipeline's /status answer (Feldera's parse_status_result)
# --------------------------------------------------------------------------------------

# Feldera's parse_status_result: legacy answers map to (runtime status, runtime desired status).
_LEGACY_STRINGS = {"Paused": (RS.PAUSED, RDS.PAUSED), "Running": (RS.RUNNING, RDS.RUNNING),
                   "Initializing": (RS.INITIALIZING, RDS.PAUSED)}
_LEGACY_503 = {"Initializing": (RS.INITIALIZING, RDS.PAUSED), "Suspended": (RS.SUSPENDED, RDS.SUSPENDED)}
MAX_TEXT = 4096  # bytes of JSON of any one string taken from a pipeline (reason, message, error code)
MAX_ERROR_CODE = 128  # bytes of JSON of an error code
_WORST_ESCAPE = 12  # bytes of JSON one character may take ("\\ud83d\\ude00")


def _json_size(text: str) -> int:
    """Bytes the string takes as JSON (escaped, as the event store and the API write it)."""
    return len(json.dumps(text)) - 2


def _short(value: Any, limit: int = MAX_TEXT) -> str:
    """``value`` as text of at most ``limit`` bytes of JSON, saying how much was cut.

    Measured as JSON, not in characters: a control character or an emoji takes 6 or 12 bytes there."""
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, default=str)
        except (ValueError, TypeError, RecursionError):
            text = f"<a {type(value).__name__} that cannot be shown>"
    if len(text) * _WORST_ESCAPE <= limit or _json_size(text) <= limit:
        return text
    marker = f"... ({len(text)} characters in all)"
    room = max(limit - len(marker), 0)
    # The longest prefix that fits: at most ``room`` characters, found by halving (a few short dumps).
    low, high = 0, min(len(text), room)
    while low < high:
        mid = (low + high + 1) // 2
        if _json_size(text[:mid]) <= room:
            low = mid
        else:
            high = mid - 1
    return text[:low] + marker


def cap_error(error: ErrorResponse) -> ErrorResponse:
    """An error as the pipeline reported it, each string and the details within their caps."""
    message, code = _short(error.message), _short(error.error_code, MAX_ERROR_CODE)
    details = cap_details(error.details)
    if message is error.message and code is error.error_code and details is error.details:
        return error
    return ErrorResponse(message=message, error_code=code, details=details)


def _unavailable(reason: str) -> RuntimeObservation:
    """Feldera's answer for a pipeline that answered but whose status is unknown: runtime status and
    runtime desired status both Unavailable, the reason in the details."""
    return RuntimeObservation(probe=RuntimeProbe.UNAVAILABLE, runtime_status=RS.UNAVAILABLE,
                              runtime_desired_status=RDS.UNAVAILABLE, reason=_short(reason))


def _invalid_response(error: str) -> ErrorResponse:
    return ErrorResponse(message=_short(f"Pipeline interaction received an invalid response: {error}"),
                         error_code="PipelineInteractionInvalidResponse", details={"error": _short(error, 1024)})


def parse_status_response(http_status: int | None, body: Any, failure: str = "") -> RuntimeObservation:
    """Interpret one ``GET /status`` exchange exactly as Feldera's runner (``parse_status_result``).

    ``http_status`` is None when no HTTP answer came (timeout, refused); ``body`` is the
    decoded JSON body, or ``NOT_JSON`` when it did not decode; ``failure`` says why.
    """
    if http_status is None:
        return RuntimeObservation(probe=RuntimeProbe.UNREACHABLE, reason=_short(failure or "no answer"))
    if 300 <= http_status < 400:
        # Redirects are never followed (they could send the operator's token, or its requests, anywhere);
        # what the redirect answer itself says is not shown either.
        return RuntimeObservation(probe=RuntimeProbe.FATAL, error=_invalid_response(
            f"Pipeline status response is a redirect (HTTP {http_status}), which is not followed"))
    if body is NOT_JSON:
        return RuntimeObservation(probe=RuntimeProbe.UNREACHABLE,
                                  reason=_short(failure or f"HTTP {http_status} with a body that is not JSON"))
    if http_status == 200:
        if isinstance(body, str):
            if body in _LEGACY_STRINGS:
                status, desired = _LEGACY_STRINGS[body]
                return RuntimeObservation(probe=RuntimeProbe.OK, runtime_status=status,
                                          runtime_desired_status=desired, runtime_status_details={})
            if body == "Terminated":
                return RuntimeObservation(probe=RuntimeProbe.FATAL,
                                          error=_invalid_response("Pipeline responded that it is Terminated"))
            return _unavailable(f"Pipeline status response (200 OK) is an unexpected JSON string: '{body}'")
        if isinstance(body, dict):
            try:
                return RuntimeObservation(
                    probe=RuntimeProbe.OK,
                    runtime_status=RuntimeStatus(body["runtime_status"]),
                    runtime_desired_status=RuntimeDesiredStatus(body["runtime_desired_status"]),
                    runtime_status_details=body.get("runtime_status_details"),
                    storage_status_details=body.get("storage_status_details"))
            except (KeyError, ValueError, TypeError) as exc:
                return _unavailable(f"Pipeline status response (200 OK) cannot be deserialized due to: {exc!r}")
        return _unavailable(f"Pipeline status response (200 OK) is not a string or an object: {_short(body, 200)}")
    if http_status == 503:
        if isinstance(body, dict) and isinstance(body.get("message"), str) and isinstance(body.get("error_code"), str):
            legacy = _LEGACY_503.get(body["error_code"])
            if legacy is not None:
                return RuntimeObservation(probe=RuntimeProbe.UNAVAILABLE, runtime_status=legacy[0],
                                          runtime_desired_status=legacy[1], reason=_short(body["message"]))
            return _unavailable(f"Pipeline status response (503 Service Unavailable) is an error: "
                                f"{body['error_code']}: {body['message']}")
        return _unavailable(f"Pipeline status response (503 Service Unavailable) cannot be deserialized. "
                            f"Response was: {_short(body, 200)}")
    if isinstance(body, dict) and isinstance(body.get("message"), str) and isinstance(body.get("error_code"), str):
        error = ErrorResponse(message=body["message"], error_code=body["error_code"], details=body.get("details"))
    else:
        error = _invalid_response(f"Error response (HTTP {http_status}) cannot be deserialized. "
                                  f"Response was: {_short(body, 500)}")
    return RuntimeObservation(probe=RuntimeProbe.FATAL, error=error)


DETAILS_LIMIT = 16 * 1024  # bytes of JSON; larger details are replaced by a marker
DETAILS_DEPTH_LIMIT = 32  # levels of nesting; deeper details are replaced by a marker (Feldera's have fewer than 10)


def _depth_over(value: Any, limit: int) -> bool:
    """Whether ``value`` nests lists and objects deeper than ``limit`` levels (without recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def cap_details(value: Any, limit: int = DETAILS_LIMIT) -> Any:
    """Details as the pipeline reported them, unless their JSON is larger than ``limit`` bytes or nests
    deeper than :data:`DETAILS_DEPTH_LIMIT` levels: then a marker saying so, so that no pipeline can bloat
    the event store or the resource, nor make a Pipeline too deep for its readers to decode."""
    if value is None:
        return None
    if isinstance(value, (dict, list)) and _depth_over(value, DETAILS_DEPTH_LIMIT):
        return {"truncated": True, "depth_limit": DETAILS_DEPTH_LIMIT,
                "reason": f"details nested deeper than {DETAILS_DEPTH_LIMIT} levels are not recorded"}
    try:
        size = len(json.dumps(value, separators=(",", ":"), default=str))
    except (TypeError, ValueError, RecursionError):
        return {"truncated": True, "reason": "details are not JSON-serialisable"}
    if size <= limit:
        return value
    return {"truncated": True, "size_bytes": size, "limit_bytes": limit,
            "reason": f"details larger than {limit} bytes are not recorded"}


class _NotJson:
    def __repr__(self) -> str:
        return "NOT_JSON"


NOT_JSON: Any = _NotJson()

# --------------------------------------------------------------------------------------
# The decision
# --------------------------------------------------------------------------------------

# A graceful stop waits for Suspended from these runtime statuses; from the others there is
# no state worth a checkpoint yet (Initializing, Standby, AwaitingApproval) and it stops at once.
_SUSPENDABLE = frozenset({RS.RUNNING, RS.PAUSED, RS.REPLAYING, RS.BOOTSTRAPPING, RS.UNAVAILABLE,
                          RS.COORDINATION})
_DEPLOYMENT_IDS = UuidV7()  # deployment ids when the caller gives no generator of its own
_RUNTIME_CLEARED: dict[str, Any] = dict(deployment_runtime_status=None, deployment_runtime_status_since=None,
                                        deployment_runtime_status_details=None, deployment_runtime_desired_status=None,
                                        suspend_requested_at=None)


@dataclass
class _Pass:
    """One monitoring pass in the making: the state so far, its steps and actions."""
    cur: PipelineState
    now: dt.datetime
    new_id: Callable[[dt.datetime], uuid.UUID]
    steps: list[Step] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def set(self, reason: str, **changes: Any) -> None:
        """Apply changes; a change of any status field is a committed step (one event)."""
        old = self.cur
        unknown = set(changes) - set(PipelineState.model_fields)
        if unknown:
            raise TypeError(f"not fields of the pipeline state: {sorted(unknown)}")
        new = old.model_copy(update=changes)
        transitions.check_resources(old.deployment_resources_status, new.deployment_resources_status)
        transitions.check_storage(old.storage_status, new.storage_status, old.deployment_resources_status)
        transitions.check_program(old.program_status, new.program_status, old.deployment_resources_status)
        stamps: dict[str, Any] = {}
        if new.deployment_resources_status is not old.deployment_resources_status:
            stamps["deployment_resources_status_since"] = self.now
        if new.deployment_runtime_status is not old.deployment_runtime_status \
                and new.deployment_runtime_status is not None:
            stamps["deployment_runtime_status_since"] = self.now
        if new.deployment_resources_desired_status is not old.deployment_resources_desired_status \
                or old.deployment_resources_desired_status_since is None:
            stamps["deployment_resources_desired_status_since"] = self.now
        if new.deployment_runtime_desired_status is not old.deployment_runtime_desired_status:
            stamps["deployment_runtime_desired_status_since"] = (
                self.now if new.deployment_runtime_desired_status is not None else None)
        if new.program_status is not old.program_status:
            stamps["program_status_since"] = self.now
        if stamps:
            new = new.model_copy(update=stamps)
        self.cur = new
        if any(getattr(old, f) != getattr(new, f) for f in STATUS_FIELDS):
            self.steps.append(Step(state=new, reason=reason))

    def act(self, kind: ActionKind, **params: Any) -> None:
        self.actions.append(Action(kind=kind, **params))

    def note(self, message: str) -> None:
        self.notes.append(message)

    def elapsed(self, since: dt.datetime | None) -> float:
        return 0.0 if since is None else (self.now - since).total_seconds()


def effective_desired(desired: Desired, state: PipelineState) -> ResourcesDesiredStatus:
    """Stopped while the system holds the pipeline stopped (after any move to Stopping, or a start
    that failed) or an error is latched; otherwise what the spec asks."""
    if state.system_stop_generation is not None or state.deployment_error is not None:
        return ResourcesDesiredStatus.STOPPED
    return desired.resources_desired_status


def graceful_stop_refused(desired: Desired, state: PipelineState) -> bool:
    """A graceful stop the spec asks of a community-edition pipeline that runs (or is being provisioned): it is
    not done, as Feldera's open-source manager refuses ``/stop?force=false`` (a suspend there writes no
    checkpoint, so the stop would lose the state while looking graceful). The pipeline goes on as it is until
    the spec asks for a forced stop. A stop the system makes (an error, a hold) is forced and not concerned."""
    return desired.community_edition and desired.resources_desired_status is ResourcesDesiredStatus.STOPPED \
        and desired.stop_mode is StopMode.GRACEFUL \
        and state.deployment_resources_status in (R.PROVISIONING, R.PROVISIONED) \
        and state.deployment_resources_desired_status is ResourcesDesiredStatus.PROVISIONED \
        and state.system_stop_generation is None and state.deployment_error is None


def suspending(desired: Desired, state: PipelineState) -> bool:
    """Feldera's graceful stop (``/stop?force=false``) of a pipeline that can checkpoint: it is asked to suspend,
    and its desired status stays Provisioned (its runtime desired status Suspended) until it has suspended;
    then it stops. Once asked, it goes on whatever the spec says next (a ``/start`` meanwhile changes nothing,
    as in Feldera), unless a forced stop cancels it."""
    if state.deployment_resources_status is not R.PROVISIONED or state.system_stop_generation is not None \
            or state.deployment_error is not None:
        return False
    stop = desired.resources_desired_status is ResourcesDesiredStatus.STOPPED
    if stop and desired.stop_mode is StopMode.FORCE or desired.community_edition:
        return False
    if state.suspend_requested_at is not None or state.deployment_runtime_desired_status is RDS.SUSPENDED:
        return True
    return stop and state.deployment_runtime_status in _SUSPENDABLE


def current_desired(desired: Desired, state: PipelineState) -> ResourcesDesiredStatus:
    """Feldera's ``deployment_resources_desired_status`` for this spec and state: :func:`effective_desired`,
    except that a graceful stop keeps Provisioned while the pipeline suspends (:func:`suspending`) and a
    pipeline that is Stopping stays desired Stopped until it is Stopped (a start while Stopping is illegal), and a
    graceful stop of a community-edition pipeline is not done (:func:`graceful_stop_refused`)."""
    if suspending(desired, state) or graceful_stop_refused(desired, state):
        return ResourcesDesiredStatus.PROVISIONED
    if state.deployment_resources_status is R.STOPPING:
        return ResourcesDesiredStatus.STOPPED
    return effective_desired(desired, state)


def decide(desired: Desired, state: PipelineState, observation: Observation, now: dt.datetime,
           config: LifecycleConfig = LifecycleConfig(),
           new_id: Callable[[dt.datetime], uuid.UUID] | None = None) -> Decision:
    """One monitoring pass: the status steps to commit and the actions to take. ``new_id`` makes a deployment's
    id (Feldera's ``deployment_id``, a UUIDv7 of the pass's time) when the pass starts one."""
    p = _Pass(cur=state, now=now, new_id=new_id or _DEPLOYMENT_IDS)
    _dismiss_error(p, desired)
    _start_request(p, desired)
    _desired_status(p, desired)
    _program(p, desired, observation)
    _storage(p, desired, observation)
    {
        R.STOPPED: _stopped,
        R.PROVISIONING: _provisioning,
        R.PROVISIONED: _provisioned,
        R.STOPPING: _stopping,
    }[p.cur.deployment_resources_status](p, desired, observation, config)
    _approve(p, desired)
    if p.cur.observed_generation != desired.generation:
        p.cur = p.cur.model_copy(update={"observed_generation": desired.generation})
    if p.cur.version_digest != desired.edit_digest:
        # Feldera's version: one more for every edit of its fields (not for a start, a stop or a pause, which
        # change the generation too). Counted from the generation for a pipeline that had no count yet.
        version = desired.generation if p.cur.version is None else p.cur.version + 1
        p.cur = p.cur.model_copy(update={"version": version, "version_digest": desired.edit_digest})
    return Decision(steps=tuple(p.steps), state=p.cur, actions=tuple(p.actions), notes=tuple(p.notes))


# --------------------------------------------------------------------------------------
# May this happen now? (asked by the decision above and by the HTTP API, before it writes)
# --------------------------------------------------------------------------------------


class Refusal(_Frozen):
    """Why an action cannot happen now: Feldera's error, with its HTTP status."""
    http_status: int
    error_code: str
    message: str
    details: Any = None

    def error(self) -> ErrorResponse:
        return ErrorResponse(message=self.message, error_code=self.error_code, details=self.details)


# Feldera's open-source manager's answer to /stop?force=false (CommonError::EnterpriseFeature).
ENTERPRISE_GRACEFUL_STOP = Refusal(
    http_status=501, error_code="EnterpriseFeature",
    message="Cannot use enterprise-only feature (stop?force=false) in Feldera community edition.",
    details={"feature": "stop?force=false"})


_STOPPING_HINT = ("Cannot restart the pipeline while it is stopping. Wait until it is stopped before starting "
                  "the pipeline again.")


def start_refusal(state: PipelineState, current_desired: ResourcesDesiredStatus, *,
                  initial: RuntimeDesiredStatus, bootstrap_policy: BootstrapPolicy, error_after_dismissal: bool,
                  standby_allowed: bool, silent_bootstrap: bool = False) -> Refusal | None:
    """Feldera's checks of ``/start`` (``validate_resources_desired_status_transition``, then the start
    parameters), in Feldera's order: Illegal, Undismissed, Clearing, Compilation, Initial,
    BootstrapPolicy, Standby. ``current_desired`` is the effective desired status before the start;
    ``error_after_dismissal`` whether an error remains once the dismissals asked for are done."""
    if current_desired is ResourcesDesiredStatus.STOPPED and state.deployment_resources_status is not R.STOPPED:
        return Refusal(
            http_status=400, error_code="IllegalPipelineAction",
            message=f"Deployment resources status (current: '{state.deployment_resources_status.value}', desired: "
                    f"'{current_desired.value}') cannot have desired changed to 'Provisioned'. {_STOPPING_HINT}",
            details={"status": state.deployment_resources_status.value, "current_desired_status": current_desired.value,
                     "new_desired_status": "Provisioned", "hint": _STOPPING_HINT})
    if error_after_dismissal:
        return Refusal(http_status=400, error_code="CannotStartWithUndismissedError", message=(
            "Cannot process `/start?dismiss_error=false` if the `deployment_error` is set. You can dismiss the "
            "error by calling `/start?dismiss_error=true`, or alternatively first call `/dismiss_error`, after "
            "which `/start?dismiss_error=false` is again possible."))
    if state.storage_status is S.CLEARING:
        return Refusal(http_status=400, error_code="CannotStartWhileClearingStorage", message=(
            "Cannot process `/start` if the `storage_status` is `Clearing`. Wait for the storage to become "
            "cleared before trying again."))
    if state.program_status.is_failed:
        return Refusal(http_status=400, error_code="CannotStartWithCompilationError", message=(
            "Cannot process `/start` if the `program_status` is `SqlError`, `RustError` or `SystemError`. "
            "Make changes to fix the error, which will trigger recompilation."))
    if state.deployment_initial is not None and state.deployment_initial is not initial:
        return Refusal(http_status=400, error_code="InitialImmutableUnlessStopped", message=(
            "Initial desired runtime status cannot be changed unless the pipeline is desired to become Stopped."))
    if state.bootstrap_policy is not None and (state.bootstrap_policy, state.silent_bootstrap) != (
            bootstrap_policy, silent_bootstrap):  # Feldera's bootstrap configuration: the policy and the flag
        return Refusal(http_status=400, error_code="BootstrapPolicyImmutableUnlessStopped", message=(
            "Bootstrap policy cannot be changed unless the pipeline is desired to become Stopped."))
    if initial is RDS.STANDBY and not standby_allowed:
        return _STANDBY_NOT_ALLOWED
    return None


_STANDBY_NOT_ALLOWED = Refusal(http_status=400, error_code="InitialStandbyNotAllowed", message=(
    "Initial desired runtime status can only be set to Standby if: (1) `runtime_config.storage.backend.name` "
    "is set to `file`, and (2) `runtime_config.storage.backend.config.sync` is configured."))


def dismiss_refusal(state: PipelineState) -> Refusal | None:
    """Feldera's ``dismiss_deployment_error``: an error is dismissed only when fully Stopped."""
    if state.deployment_error is not None and (
            state.deployment_resources_status is not R.STOPPED
            or state.deployment_resources_desired_status is not ResourcesDesiredStatus.STOPPED):
        return Refusal(http_status=400, error_code="DismissErrorRestrictedToFullyStopped", message=(
            "The pipeline must have both status `Stopped` and desired status `Stopped` to dismiss the "
            "`deployment_error` if it is set."))
    return None


def clear_refusal(state: PipelineState) -> Refusal | None:
    """Feldera's ``transit_storage_status_to_clearing_if_not_cleared`` (Cleared is a no-op)."""
    if state.storage_status is S.CLEARED:
        return None
    if state.deployment_resources_status is not R.STOPPED \
            or state.deployment_resources_desired_status is not ResourcesDesiredStatus.STOPPED:
        current, new = state.storage_status.value, S.CLEARING.value
        return Refusal(
            http_status=400, error_code="StorageStatusImmutableUnlessStopped",
            message=f"Cannot transition storage status from '{current}' to '{new}' with resources status "
                    f"'{state.deployment_resources_status.value}' and desired status "
                    f"'{state.deployment_resources_desired_status.value}'. "
                    "Storage status cannot be changed unless the pipeline is fully stopped.",
            details={"resources_status": state.deployment_resources_status.value,
                     "resources_desired_status": state.deployment_resources_desired_status.value,
                     "current_status": current, "new_status": new})
    return None


def interaction_refusal(state: PipelineState, name: str) -> Refusal | None:
    """Whether a request may be forwarded to the pipeline (Feldera's ``deployment_location_based_on_status``)."""
    if state.deployment_resources_status is not R.PROVISIONED:
        return Refusal(
            http_status=503, error_code="PipelineInteractionNotDeployed",
            message=f"Unable to interact with pipeline because the deployment status "
                    f"({state.deployment_resources_status.value.lower()}) indicates it is not (yet) fully provisioned "
                    f"(pipeline: '{name}')",
            details={"pipeline_name": name, "status": state.deployment_resources_status.value,
                     "desired_status": state.deployment_resources_desired_status.value})
    if state.deployment_runtime_status is RS.UNAVAILABLE:
        return Refusal(http_status=503, error_code="PipelineUnavailable", details={"pipeline_name": name},
                       message=f"Unable to interact with pipeline because its status is currently "
                               f"'unavailable' (pipeline: '{name}')")
    return None


def delete_refusal(state: PipelineState) -> Refusal | None:
    """Feldera's ``delete_pipeline``: only fully Stopped, with storage Cleared."""
    if state.deployment_resources_status is not R.STOPPED \
            or state.deployment_resources_desired_status is not ResourcesDesiredStatus.STOPPED:
        return Refusal(http_status=400, error_code="DeleteRestrictedToFullyStopped", message=(
            "Cannot delete a pipeline which is not fully stopped. Stop the pipeline first fully by invoking the "
            "'/stop' endpoint."))
    if state.storage_status is not S.CLEARED:
        return Refusal(http_status=400, error_code="DeleteRestrictedToClearedStorage", message=(
            "Cannot delete pipeline unless its storage is cleared. Clear storage first using `/clear`."))
    return None


def update_refusal(state: PipelineState) -> Refusal | None:
    """Feldera's ``update_pipeline`` for changes of the program or configuration: only while Stopped."""
    if state.deployment_resources_status is not R.STOPPED \
            or state.deployment_resources_desired_status is not ResourcesDesiredStatus.STOPPED:
        return Refusal(http_status=400, error_code="UpdateRestrictedToStopped", message=(
            "Pipeline can only be updated while stopped. Stop it first by invoking '/stop'."))
    return None


def _storage_bound(config: RuntimeConfig) -> dict[str, Any]:
    """The settings of ``runtime_config`` that Feldera keeps while storage is in use (its
    ``update_pipeline``), by the names its error gives them."""
    return {"`runtime_config.workers`": config.workers, "`runtime_config.hosts`": config.hosts,
            "`runtime_config.fault_tolerance`": config.fault_tolerance,
            "`runtime_config.resources.storage_mb_max`": config.resources.storage_mb_max,
            "`runtime_config.resources.namespace`": config.resources.namespace,
            "`runtime_config.resources.storage_class`": config.resources.storage_class}


def edit_refusal(state: PipelineState, current: RuntimeConfig, new: RuntimeConfig) -> Refusal | None:
    """Feldera's ``update_pipeline`` for edits that the pipeline's storage depends on: refused unless its
    storage is Cleared (``EditRestrictedToClearedStorage``, naming each setting)."""
    if state.storage_status is S.CLEARED:
        return None
    before, after = _storage_bound(current), _storage_bound(new)
    not_allowed = [name for name in before if before[name] != after[name]]
    if not not_allowed:
        return None
    return Refusal(http_status=400, error_code="EditRestrictedToClearedStorage",
                   message="The following pipeline edits are not allowed while storage is not cleared: "
                           + ", ".join(not_allowed), details={"not_allowed": not_allowed})


def _handled(value: str, outcome: ActionOutcome, message: str = "", refusal: Refusal | None = None) -> HandledAction:
    if refusal is not None:
        return HandledAction(value=value, outcome=ActionOutcome.REFUSED, message=refusal.message[:1024],
                             error_code=refusal.error_code)
    return HandledAction(value=value, outcome=outcome, message=message)


def _is_new(request: str | None, handled: HandledAction | None) -> bool:
    return request is not None and (handled is None or handled.value != request)


def dismissal_pending(desired: Desired, state: PipelineState) -> bool:
    """A dismiss request the operator has not handled yet, that it will apply (fully Stopped)."""
    return _is_new(desired.dismiss_error, state.handled_dismiss_error) and dismiss_refusal(state) is None


def _dismiss_error(p: _Pass, desired: Desired) -> None:
    cur = p.cur
    if _is_new(desired.dismiss_error, cur.handled_dismiss_error):
        assert desired.dismiss_error is not None
        refusal = dismiss_refusal(cur)
        if cur.deployment_error is None:
            p.set("dismiss requested; there is no error",
                  handled_dismiss_error=_handled(desired.dismiss_error, ActionOutcome.APPLIED,
                                                 "There was no error to dismiss"))
        elif refusal is not None:
            p.set("dismiss refused", handled_dismiss_error=_handled(desired.dismiss_error, ActionOutcome.REFUSED,
                                                                   refusal=refusal))
        else:
            p.set("error dismissed by request", deployment_error=None, error_generation=None,
                  handled_dismiss_error=_handled(desired.dismiss_error, ActionOutcome.APPLIED,
                                                 "Error dismissed"))
        return
    if (cur.deployment_error is not None and cur.deployment_resources_status is R.STOPPED
            and _spec_changed_since(desired, cur, cur.error_generation)):
        p.set(f"error dismissed by a new spec (generation {desired.generation})",
              deployment_error=None, error_generation=None)


def _start_request(p: _Pass, desired: Desired) -> None:
    """A start request (Feldera's ``/start``): releases the system's hold on Stopped, if allowed now."""
    cur = p.cur
    if not _is_new(desired.start, cur.handled_start):
        return
    assert desired.start is not None
    initial = initial_runtime_desired(desired)
    refusal = start_refusal(cur, cur.deployment_resources_desired_status, initial=initial,
                            bootstrap_policy=desired.bootstrap_policy, silent_bootstrap=desired.silent_bootstrap,
                            error_after_dismissal=cur.deployment_error is not None,
                            standby_allowed=desired.standby_allowed)
    if refusal is not None:
        p.set(f"start refused ({refusal.error_code})",
              handled_start=_handled(desired.start, ActionOutcome.REFUSED, refusal=refusal))
        return
    p.set("start requested", system_stop_generation=None,
          handled_start=_handled(desired.start, ActionOutcome.APPLIED, f"Starting as {initial.value}"))


def _desired_status(p: _Pass, desired: Desired) -> None:
    cur = p.cur
    if _spec_changed_since(desired, cur, cur.system_stop_generation):
        p.set(f"a new spec (generation {desired.generation}) releases the stop set by the system",
              system_stop_generation=None)
    target = current_desired(desired, p.cur)
    if target is not p.cur.deployment_resources_desired_status:
        p.set(f"desired status is {target.value}", deployment_resources_desired_status=target)
    if p.cur.deployment_resources_status is R.STOPPED:
        # Feldera sets the start parameters with the desired status; while Stopped they follow the spec.
        provisioned = target is ResourcesDesiredStatus.PROVISIONED
        initial = initial_runtime_desired(desired) if provisioned else None
        policy = desired.bootstrap_policy if provisioned else None
        silent = desired.silent_bootstrap and provisioned
        if (initial, policy, silent) != (p.cur.deployment_initial, p.cur.bootstrap_policy, p.cur.silent_bootstrap):
            p.set("start parameters", deployment_initial=initial, bootstrap_policy=policy, silent_bootstrap=silent)


def _spec_changed_since(desired: Desired, state: PipelineState, generation: int | None) -> bool:
    """A newer spec generation that changed more than the client metadata, not through the HTTP API (an edit
    or a /stop through the API leaves Feldera's desired status and error as they are)."""
    return generation is not None and desired.generation > generation and not desired.spec_by_api and (
        not desired.spec_digest or desired.spec_digest != state.stop_spec_digest)


def _hold_stopped(p: _Pass, desired: Desired, reason: str) -> None:
    """Feldera's "desired status set to Stopped by the system"."""
    hold = desired.resources_desired_status is ResourcesDesiredStatus.PROVISIONED
    if p.cur.deployment_resources_desired_status is not ResourcesDesiredStatus.STOPPED or (
            hold and p.cur.system_stop_generation is None):
        p.set(f"{reason}: desired status set to Stopped by the system",
              deployment_resources_desired_status=ResourcesDesiredStatus.STOPPED,
              system_stop_generation=desired.generation if hold else p.cur.system_stop_generation,
              stop_spec_digest=desired.spec_digest)


def _latch_error(p: _Pass, desired: Desired, error: ErrorResponse, reason: str) -> None:
    """A start that fails while Stopped: desired Stopped by the system, then the error."""
    _hold_stopped(p, desired, reason)
    p.set(reason, deployment_error=error, error_generation=desired.generation, deployment_initial=None,
          bootstrap_policy=None, silent_bootstrap=False, stop_spec_digest=desired.spec_digest)


def _program(p: _Pass, desired: Desired, observation: Observation) -> None:
    cur = p.cur
    # A pipeline recorded before the settings were (None) takes them as they are: no new program.
    settings_changed = cur.program_settings_digest not in (None, desired.program_settings_digest)
    if cur.program_digest != desired.program_digest or settings_changed:
        if cur.deployment_resources_status is not R.STOPPED:
            if not cur.program_change_held:
                p.note("program changed while the pipeline is not Stopped: held until it is Stopped")
            p.set("program change held", program_change_held=True)
            return
        p.set("program changed", program_status=P.PENDING, program_digest=desired.program_digest,
              program_settings_digest=desired.program_settings_digest,
              program_version=cur.program_version + 1, program_error=None, program_change_held=False)
    elif cur.program_change_held:
        p.set("program change reverted", program_change_held=False)
    if p.cur.program_settings_digest is None:
        p.set("program settings recorded", program_settings_digest=desired.program_settings_digest)
    cur = p.cur
    seen = observation.program
    if seen is None or seen.program_digest != cur.program_digest:
        if cur.program_status.is_compiling:
            p.act(ActionKind.COMPILE, program_digest=cur.program_digest)
        return
    if cur.program_status is P.SUCCESS and seen.status is P.PENDING and cur.deployment_resources_status is R.STOPPED:
        # Feldera's runner: Success -> Pending when the compiled artifacts are missing.
        p.set("compiled program missing: compiling again", program_status=P.PENDING, program_error=None)
        cur = p.cur
    elif cur.program_status is P.RUST_ERROR and seen.status is not P.RUST_ERROR \
            and cur.deployment_resources_status is R.STOPPED:
        # The compiler started over by itself (the missing binary of the Rust stage appeared): RustError -> Pending.
        p.set("the compiler compiles the program again", program_status=P.PENDING, program_error=None)
        cur = p.cur
    if cur.program_status.is_compiling and seen.status is not cur.program_status:
        path = transitions.program_path(cur.program_status, seen.status)
        if path and path[0] not in transitions.PROGRAM_TRANSITIONS[cur.program_status]:
            # Not reachable directly (the compiler started over): via Pending.
            path = [P.PENDING, *transitions.program_path(P.PENDING, seen.status)]
        for status in path:
            failed = status.is_failed
            p.set(f"program {status.value}", program_status=status,
                  program_error=seen.error if failed else None)
    if p.cur.program_status.is_compiling:
        p.act(ActionKind.COMPILE, program_digest=p.cur.program_digest)


def _storage(p: _Pass, desired: Desired, observation: Observation) -> None:
    cur = p.cur
    if _is_new(desired.clear_storage, cur.handled_clear_storage):
        assert desired.clear_storage is not None
        if cur.storage_status is not S.IN_USE:
            p.set("clear storage requested; nothing to clear",
                  handled_clear_storage=_handled(desired.clear_storage, ActionOutcome.APPLIED,
                                                 f"Storage is already {cur.storage_status.value}"))
        elif cur.deployment_resources_status is R.STOPPED \
                and cur.deployment_resources_desired_status is ResourcesDesiredStatus.STOPPED:
            p.set("clear storage requested", storage_status=S.CLEARING, storage_status_details=None,
                  handled_clear_storage=_handled(desired.clear_storage, ActionOutcome.APPLIED,
                                                 "Clearing storage"))
        else:
            p.set("clear storage refused",
                  handled_clear_storage=_handled(
                      desired.clear_storage, ActionOutcome.REFUSED,
                      "StorageStatusImmutableUnlessStopped: storage can be cleared only while the "
                      f"pipeline is Stopped and desired Stopped (it is {cur.deployment_resources_status.value}, "
                      f"desired {cur.deployment_resources_desired_status.value}); stop it, then set the "
                      "annotation to a new value"))
    if p.cur.storage_status is S.CLEARING:
        if observation.storage is not None and not observation.storage.exists:
            p.set("storage cleared", storage_status=S.CLEARED, storage_status_details=None)
        else:
            p.act(ActionKind.CLEAR_STORAGE)


def _stopped(p: _Pass, desired: Desired, observation: Observation, config: LifecycleConfig) -> None:
    cur = p.cur
    compute = observation.compute.state
    if compute is not ComputeState.ABSENT:
        # Left over (a process that died while Stopped, or an interrupted stop): it goes first.
        p.note(f"compute found while Stopped ({compute.value}): deleting it")
        p.act(ActionKind.DEPROVISION)
        return
    if cur.deployment_resources_desired_status is not ResourcesDesiredStatus.PROVISIONED:
        return
    if cur.storage_status is S.CLEARING:
        p.note("waiting for storage to be cleared before starting")
        return
    if cur.program_status.is_failed:
        _latch_error(p, desired, ErrorResponse(
            message=f"Pipeline cannot start: its program failed to compile ({cur.program_status.value})",
            error_code="StartFailedDueToFailedCompilation",
            details={"program_status": cur.program_status.value}), "start failed: program failed to compile")
        return
    if cur.program_status is not P.SUCCESS or cur.program_digest != desired.program_digest:
        p.note(f"waiting for compilation ({cur.program_status.value}) before provisioning")
        return
    initial = cur.deployment_initial or initial_runtime_desired(desired)
    policy = cur.bootstrap_policy or desired.bootstrap_policy
    silent = cur.silent_bootstrap if cur.bootstrap_policy is not None else desired.silent_bootstrap
    if initial is RDS.STANDBY and not desired.standby_allowed:
        _latch_error(p, desired, _STANDBY_NOT_ALLOWED.error(),
                     "start failed: Standby needs a file storage backend with sync")
        return
    if cur.storage_status is S.CLEARED:
        p.set("storage will be used by the pipeline", storage_status=S.IN_USE)
    p.set("provisioning compute and storage", deployment_resources_status=R.PROVISIONING,
          deployment_resources_status_details=None,
          deployment_initial=initial, bootstrap_policy=policy, silent_bootstrap=silent, deployment_error=None,
          error_generation=None, deployment_id=p.new_id(p.now),
          runtime_desired_adopted=desired.runtime_desired_status, runtime_desired_pending=None,
          **_RUNTIME_CLEARED)
    if desired.hosts > 1:
        # Feldera's community edition (its local runner) fails the provisioning so: multihost pipelines need
        # the enterprise edition's coordinator, which this operator does not have.
        cause = f"multihost deployment is not supported (runtime_config.hosts is {desired.hosts}; set it to 1)"
        _stop(p, desired, "provisioning failed", ErrorResponse(
            message=f"Pipeline provision failed: {cause}", error_code="RunnerProvisionError",
            details={"error": cause}))
        return
    p.act(ActionKind.PROVISION, program_digest=desired.program_digest, initial=initial, bootstrap_policy=policy,
          silent_bootstrap=silent, deployment_id=p.cur.deployment_id)


def initial_runtime_desired(desired: Desired) -> RuntimeDesiredStatus:
    """The status a pipeline starts in: ``runtimeDesiredStatus`` when set, unless the spec
    asks for Standby (which only an activation leaves), else ``initialRuntimeStatus``."""
    if desired.runtime_desired_status is not None and desired.initial is not InitialRuntimeStatus.STANDBY:
        return RuntimeDesiredStatus(desired.runtime_desired_status.value)
    return RuntimeDesiredStatus(desired.initial.value)


def _stop(p: _Pass, desired: Desired, reason: str, error: ErrorResponse | None = None,
          details: Any = None) -> None:
    """Feldera's transition to Stopping: desired Stopped by the system first (for any cause), then
    Stopping with the error, if any; the start parameters are cleared."""
    _hold_stopped(p, desired, reason)
    errors: dict[str, Any] = dict(deployment_error=error, error_generation=desired.generation,
                                  stop_spec_digest=desired.spec_digest) if error else {}
    p.set(reason, deployment_resources_status=R.STOPPING, deployment_resources_status_details=details,
          deployment_initial=None,
          bootstrap_policy=None, silent_bootstrap=False, **errors, **_RUNTIME_CLEARED)
    p.act(ActionKind.DEPROVISION)


def _provisioning(p: _Pass, desired: Desired, observation: Observation, config: LifecycleConfig) -> None:
    cur = p.cur
    compute = observation.compute
    runtime = observation.runtime
    if cur.deployment_resources_desired_status is ResourcesDesiredStatus.STOPPED:
        _stop(p, desired, "desired status is Stopped")
        return
    if compute.state is ComputeState.FAILED:
        _stop(p, desired, "provisioning failed", ErrorResponse(
            message=f"Provisioning failed: {compute.message or 'compute failed'}",
            error_code="RunnerProvisionError", details={"cause": compute.message}))
        return
    if runtime is not None and runtime.probe is RuntimeProbe.FATAL:
        assert runtime.error is not None
        _stop(p, desired, "pipeline reported a fatal error while starting", runtime.error)
        return
    if compute.state is ComputeState.READY:
        # Feldera's runner: Provisioned once the compute is (its local runner: once the pipeline wrote its port
        # file; here: the process listens, or its pod is Ready), Initializing with the start's desired status and
        # empty details, without waiting for a first /status answer: the grace period covers a pipeline that does
        # not answer yet. An answer this pass already has is taken over at once.
        p.set("compute is ready", deployment_resources_status=R.PROVISIONED,
              deployment_resources_status_details=None, deployment_runtime_status=RS.INITIALIZING,
              deployment_runtime_status_details="", deployment_runtime_desired_status=cur.deployment_initial)
        if runtime is not None and runtime.probe in (RuntimeProbe.OK, RuntimeProbe.UNAVAILABLE):
            _apply_runtime(p, runtime, config)
        return
    timeout = desired.provisioning_timeout or config.default_provisioning_timeout
    if p.elapsed(cur.deployment_resources_status_since) > timeout:
        cause = compute.message or f"compute is {compute.state.value}"
        _stop(p, desired, "provisioning timed out", ErrorResponse(
            message=f"Provisioning did not finish within {timeout:g}s: {cause}",
            error_code="AutomatonProvisioningTimeout",
            details={"timeout_secs": timeout, "cause": cause}))
        return
    if compute.state is ComputeState.PENDING and compute.message:
        p.set("compute is not ready", deployment_resources_status_details={"reason": compute.message})
    p.act(ActionKind.PROVISION, program_digest=desired.program_digest, initial=cur.deployment_initial,
          bootstrap_policy=cur.bootstrap_policy, silent_bootstrap=cur.silent_bootstrap,
          deployment_id=cur.deployment_id)


def _apply_runtime(p: _Pass, runtime: RuntimeObservation | None, config: LifecycleConfig,
                   compute_reason: str = "") -> None:
    """Take over what the pipeline says about itself (Feldera's observe step, after
    ``parse_status_result``)."""
    cur = p.cur
    if runtime is not None and runtime.probe in (RuntimeProbe.OK, RuntimeProbe.UNAVAILABLE):
        changes: dict[str, Any] = dict(deployment_runtime_status=runtime.runtime_status,
                                       deployment_runtime_desired_status=runtime.runtime_desired_status,
                                       deployment_runtime_status_details=runtime.runtime_status_details)
        if runtime.reason:
            changes["deployment_runtime_status_details"] = {"reason": runtime.reason}
        if runtime.storage_status_details is not None:
            changes["storage_status_details"] = runtime.storage_status_details
        shown = runtime.runtime_status.value if runtime.runtime_status else "nothing"
        p.set(f"pipeline reports {shown}" if runtime.probe is RuntimeProbe.OK else f"pipeline status is {shown}",
              **changes)
        return
    reason = runtime.reason if runtime is not None else "not probed"
    if p.elapsed(cur.deployment_resources_status_since) <= config.provisioned_grace_period:
        p.set("pipeline not reachable yet (grace period)", deployment_runtime_status=RS.INITIALIZING,
              deployment_runtime_desired_status=cur.deployment_initial,
              deployment_runtime_status_details={
                  "reason": "Still in the grace period for initializing. Pipeline status "
                            f"endpoint cannot yet be reached due to: {reason}"})
    else:
        p.set("pipeline not reachable", deployment_runtime_status=RS.UNAVAILABLE,
              deployment_runtime_desired_status=RDS.UNAVAILABLE,
              deployment_runtime_status_details={"reason": f"Pipeline status endpoint could not be reached: {reason}",
                                                 **({"compute": compute_reason} if compute_reason else {})})


def _provisioned(p: _Pass, desired: Desired, observation: Observation, config: LifecycleConfig) -> None:
    compute = observation.compute
    runtime = observation.runtime
    if compute.state in (ComputeState.FAILED, ComputeState.ABSENT, ComputeState.TERMINATING):
        cause = compute.message or f"compute is {compute.state.value}"
        _stop(p, desired, "resource error", ErrorResponse(
            message=f"Pipeline resources failed: {cause}", error_code="RunnerCheckError",
            details={"cause": cause}))
        return
    if runtime is not None and runtime.probe is RuntimeProbe.FATAL:
        assert runtime.error is not None
        _stop(p, desired, "pipeline reported a fatal error", runtime.error)
        return
    _apply_runtime(p, runtime, config, compute.message if compute.state is ComputeState.PENDING else "")
    cur = p.cur
    if cur.deployment_runtime_status is RS.SUSPENDED:
        _stop(p, desired, "pipeline suspended")
        return
    if suspending(desired, cur):
        # Asked until the pipeline says it suspends (no time limit, as in Feldera: a forced stop ends it).
        if cur.suspend_requested_at is None:
            p.set("graceful stop: suspending", suspend_requested_at=p.now)
        if cur.deployment_runtime_desired_status is not RDS.SUSPENDED:
            p.act(ActionKind.SUSPEND)
        return
    if effective_desired(desired, cur) is ResourcesDesiredStatus.STOPPED and not graceful_stop_refused(desired, cur):
        if desired.stop_mode is StopMode.FORCE:
            _stop(p, desired, "desired status is Stopped (force)")
        else:
            shown = cur.deployment_runtime_status.value if cur.deployment_runtime_status else "unknown"
            _stop(p, desired, f"desired status is Stopped; nothing to checkpoint while {shown}")
        return
    _forward_runtime_desired(p, desired)


def _forward_runtime_desired(p: _Pass, desired: Desired) -> None:
    """Keep the pipeline's runtime desired status at the spec's (Feldera's /pause and /resume).

    Running and Paused are kept level-based. A pipeline that started in Standby is activated
    only when ``runtimeDesiredStatus`` changes after it was provisioned.
    """
    cur = p.cur
    target = desired.runtime_desired_status
    if target != cur.runtime_desired_adopted:
        p.set("runtime desired status changed in the spec", runtime_desired_adopted=target,
              runtime_desired_pending=target)
        cur = p.cur
    observed = cur.deployment_runtime_desired_status
    if target is None or observed is None:
        return
    if observed in (RDS.RUNNING, RDS.PAUSED):
        if cur.runtime_desired_pending is not None:
            p.set("runtime desired status forwarded", runtime_desired_pending=None)
        if observed.value != target.value:
            p.act(ActionKind.SET_RUNTIME_DESIRED, target=target)
    elif observed is RDS.STANDBY and cur.runtime_desired_pending is not None:
        p.act(ActionKind.SET_RUNTIME_DESIRED, target=target, activate=True)


def _approve(p: _Pass, desired: Desired) -> None:
    cur = p.cur
    if not _is_new(desired.approve, cur.handled_approve):
        return
    assert desired.approve is not None
    if cur.deployment_resources_status is R.PROVISIONED and cur.deployment_runtime_status is RS.AWAITING_APPROVAL:
        p.set("approve requested", handled_approve=_handled(desired.approve, ActionOutcome.APPLIED,
                                                            "Approval forwarded to the pipeline"))
        p.act(ActionKind.APPROVE)
    else:
        shown = (cur.deployment_runtime_status.value if cur.deployment_runtime_status
                 else cur.deployment_resources_status.value)
        p.set("approve refused", handled_approve=_handled(
            desired.approve, ActionOutcome.REFUSED,
            f"The pipeline is not AwaitingApproval (it is {shown}); nothing to approve"))


def _stopping(p: _Pass, desired: Desired, observation: Observation, config: LifecycleConfig) -> None:
    if observation.compute.state is ComputeState.ABSENT:
        p.set("compute is gone", deployment_resources_status=R.STOPPED, deployment_resources_status_details=None,
              deployment_id=None, **_RUNTIME_CLEARED)
    else:
        p.act(ActionKind.DEPROVISION)
