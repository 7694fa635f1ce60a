"""What the lifecycle takes and returns: its inputs (:class:`Desired`, from the Pipeline's spec and
annotations; the :class:`Observation` of compute, storage, program and runtime), its state
(:class:`PipelineState`, what the Pipeline's status records) and its outputs (the :class:`Decision`: status
steps to commit and actions to take)."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from ...models import (
    EVENT_FIELDS,
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
from .bounds import _short, cap_details, cap_error

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
