"""The domain model: Feldera's enums, error and monitor-event shapes, and the Pipeline resource.

This module is the one source of truth for every value and field name. The CRD in ``crds/``
is generated from the ``Pipeline*`` models here (see :mod:`pipeline_operator.crd`), the HTTP
API serialises :class:`MonitorEvent` through :func:`project_event`, and the lifecycle core
works on the same enums.

Naming: Python attributes use Feldera's snake_case names (``deployment_resources_status``).
In the custom resource the same fields are camelCase; the conversion is pydantic's
``to_camel`` alias generator, applied by :class:`CamelModel` and by :func:`camelize`, and
nowhere else.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

API_GROUP = "dataflow.dev"
API_VERSION = "v1alpha1"
KIND = "Pipeline"
PLURAL = "pipelines"
SINGULAR = "pipeline"
SHORT_NAMES = ["pl", "fpl"]
CATEGORIES = ["all", "dataflow"]

# Bounds that the CRD schema enforces (and the operator respects when it writes status).
MAX_SQL_LENGTH = 128 * 1024  # the spec is also copied into kubectl's last-applied annotation (256 KiB in all)
MAX_HISTORY_ITEMS = 100
MAX_ENV_VARS = 64
MAX_CONDITION_MESSAGE = 32768
MAX_ERROR_MESSAGE = 8192
MAX_UDF_LENGTH = 32 * 1024
MAX_DESCRIPTION = 4096
MAX_TAGS = 32

# --------------------------------------------------------------------------------------
# Feldera's enums (values exactly as in Feldera's OpenAPI document)
# --------------------------------------------------------------------------------------


class ResourcesStatus(str, enum.Enum):
    STOPPED = "Stopped"
    PROVISIONING = "Provisioning"
    PROVISIONED = "Provisioned"
    STOPPING = "Stopping"


class ResourcesDesiredStatus(str, enum.Enum):
    STOPPED = "Stopped"
    PROVISIONED = "Provisioned"


class RuntimeStatus(str, enum.Enum):
    UNAVAILABLE = "Unavailable"
    COORDINATION = "Coordination"
    STANDBY = "Standby"
    INITIALIZING = "Initializing"
    AWAITING_APPROVAL = "AwaitingApproval"
    BOOTSTRAPPING = "Bootstrapping"
    REPLAYING = "Replaying"
    PAUSED = "Paused"
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    CONCURRENT_BOOTSTRAPPING = "ConcurrentBootstrapping"
    SYNCHRONIZING = "Synchronizing"


class RuntimeDesiredStatus(str, enum.Enum):
    UNAVAILABLE = "Unavailable"
    COORDINATION = "Coordination"
    STANDBY = "Standby"
    PAUSED = "Paused"
    RUNNING = "Running"
    SUSPENDED = "Suspended"


class ProgramStatus(str, enum.Enum):
    PENDING = "Pending"
    COMPILING_SQL = "CompilingSql"
    SQL_COMPILED = "SqlCompiled"
    COMPILING_RUST = "CompilingRust"
    SUCCESS = "Success"
    SQL_ERROR = "SqlError"
    RUST_ERROR = "RustError"
    SYSTEM_ERROR = "SystemError"

    @property
    def is_failed(self) -> bool:
        return self in (ProgramStatus.SQL_ERROR, ProgramStatus.RUST_ERROR, ProgramStatus.SYSTEM_ERROR)

    @property
    def is_compiling(self) -> bool:
        return not self.is_failed and self is not ProgramStatus.SUCCESS


class StorageStatus(str, enum.Enum):
    CLEARED = "Cleared"
    IN_USE = "InUse"
    CLEARING = "Clearing"


class CombinedStatus(str, enum.Enum):
    """Feldera's ``deployment_status``: one word for resources and runtime status together."""
    STOPPED = "Stopped"
    PROVISIONING = "Provisioning"
    UNAVAILABLE = "Unavailable"
    COORDINATION = "Coordination"
    STANDBY = "Standby"
    AWAITING_APPROVAL = "AwaitingApproval"
    INITIALIZING = "Initializing"
    BOOTSTRAPPING = "Bootstrapping"
    CONCURRENT_BOOTSTRAPPING = "ConcurrentBootstrapping"
    SYNCHRONIZING = "Synchronizing"
    REPLAYING = "Replaying"
    PAUSED = "Paused"
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    STOPPING = "Stopping"


class CombinedDesiredStatus(str, enum.Enum):
    """Feldera's combined desired status."""
    STOPPED = "Stopped"
    UNAVAILABLE = "Unavailable"
    STANDBY = "Standby"
    PAUSED = "Paused"
    RUNNING = "Running"
    SUSPENDED = "Suspended"


class PipelineMonitorEventFieldSelector(str, enum.Enum):
    ALL = "all"
    STATUS = "status"


# Spec-only enums: the subsets of Feldera's values a user may ask for.


class InitialRuntimeStatus(str, enum.Enum):
    """Feldera's ``/start?initial=``."""
    RUNNING = "Running"
    PAUSED = "Paused"
    STANDBY = "Standby"


class SpecRuntimeDesiredStatus(str, enum.Enum):
    """What a user may ask of a running pipeline (Feldera's ``/pause`` and ``/resume``)."""
    RUNNING = "Running"
    PAUSED = "Paused"


class StopMode(str, enum.Enum):
    """Feldera's ``/stop?force=false|true``."""
    GRACEFUL = "Graceful"
    FORCE = "Force"


class BootstrapPolicy(str, enum.Enum):
    """Feldera's ``/start?bootstrap_policy=``: what a pipeline does when its program changed since its
    checkpoint and views must be bootstrapped. The spec spells the values in CamelCase; Feldera's
    API and the pipeline process in snake_case (:attr:`feldera`)."""
    AWAIT_APPROVAL = "AwaitApproval"
    ALLOW = "Allow"
    REJECT = "Reject"

    @property
    def feldera(self) -> str:
        return {"AwaitApproval": "await_approval", "Allow": "allow", "Reject": "reject"}[self.value]

    @classmethod
    def from_feldera(cls, value: str) -> "BootstrapPolicy":
        for policy in cls:
            if policy.feldera == value:
                return policy
        raise ValueError(f"unknown bootstrap policy '{value}': expected await_approval, allow or reject")


def combined_status(resources: ResourcesStatus, runtime: RuntimeStatus | None) -> CombinedStatus:
    """Feldera's combined ``deployment_status``: the runtime status while Provisioned."""
    if resources is ResourcesStatus.PROVISIONED:
        return CombinedStatus((runtime or RuntimeStatus.INITIALIZING).value)
    return CombinedStatus(resources.value)


def combined_desired_status(resources_desired: ResourcesDesiredStatus,
                            runtime_desired: RuntimeDesiredStatus | None,
                            initial: RuntimeDesiredStatus | None) -> CombinedDesiredStatus:
    """Feldera's combined ``deployment_desired_status``."""
    if resources_desired is ResourcesDesiredStatus.STOPPED:
        return CombinedDesiredStatus.STOPPED
    chosen = runtime_desired or initial or RuntimeDesiredStatus.RUNNING
    if chosen is RuntimeDesiredStatus.COORDINATION:
        return CombinedDesiredStatus.UNAVAILABLE
    return CombinedDesiredStatus(chosen.value)


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


class ErrorResponse(BaseModel):
    """Feldera's error shape, on the HTTP API and in ``deployment_error``."""
    model_config = ConfigDict(frozen=True)

    message: str
    error_code: str
    details: Any = None


# --------------------------------------------------------------------------------------
# Monitor events
# --------------------------------------------------------------------------------------

STATUS_FIELDS: tuple[str, ...] = (
    "deployment_resources_status",
    "deployment_resources_desired_status",
    "deployment_runtime_status",
    "deployment_runtime_desired_status",
    "deployment_has_error",
    "program_status",
    "storage_status",
)
DETAILS_FIELDS: tuple[str, ...] = (
    "deployment_resources_status_details",
    "deployment_runtime_status_details",
    "storage_status_details",
)
# Fields the ``status`` selector leaves out (and ``all`` includes, as null when absent).
ALL_ONLY_FIELDS: frozenset[str] = frozenset((*DETAILS_FIELDS, "deployment_error"))
# Feldera's field order on the wire.
EVENT_FIELD_ORDER: tuple[str, ...] = (
    "event_id",
    "recorded_at",
    "deployment_resources_status",
    "deployment_resources_status_details",
    "deployment_resources_desired_status",
    "deployment_runtime_status",
    "deployment_runtime_status_details",
    "deployment_runtime_desired_status",
    "deployment_has_error",
    "deployment_error",
    "program_status",
    "storage_status",
    "storage_status_details",
)


def format_timestamp(t: dt.datetime) -> str:
    """RFC 3339 in UTC the way Feldera (chrono, ``SecondsFormat::AutoSi``) writes it.

    ``2026-11-26T07:31:00Z``, ``...:00.120Z`` or ``...:00.123456Z``: no fraction when it is
    zero, else milliseconds or microseconds, whichever is exact.
    """
    if t.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    t = t.astimezone(dt.timezone.utc)
    base = t.strftime("%Y-%m-%dT%H:%M:%S")
    us = t.microsecond
    if us == 0:
        frac = ""
    elif us % 1000 == 0:
        frac = f".{us // 1000:03d}"
    else:
        frac = f".{us:06d}"
    return f"{base}{frac}Z"


class EventStatus(BaseModel):
    """The status and details fields of a monitor event: a snapshot of one pipeline."""
    model_config = ConfigDict(frozen=True, extra="ignore")  # a projection's deployment_has_error is derived

    deployment_resources_status: ResourcesStatus
    deployment_resources_status_details: Any = None
    deployment_resources_desired_status: ResourcesDesiredStatus
    deployment_runtime_status: RuntimeStatus | None = None
    deployment_runtime_status_details: Any = None
    deployment_runtime_desired_status: RuntimeDesiredStatus | None = None
    deployment_error: ErrorResponse | None = None
    program_status: ProgramStatus
    storage_status: StorageStatus
    storage_status_details: Any = None

    @property
    def deployment_has_error(self) -> bool:
        return self.deployment_error is not None

    def status_key(self) -> tuple[Any, ...]:
        """What "a status field changed" compares (the error itself counts, not only its presence)."""
        return (self.deployment_resources_status, self.deployment_resources_desired_status,
                self.deployment_runtime_status, self.deployment_runtime_desired_status,
                self.deployment_error, self.program_status, self.storage_status)

    def details_key(self) -> tuple[Any, ...]:
        return (self.deployment_resources_status_details, self.deployment_runtime_status_details,
                self.storage_status_details)


class MonitorEvent(EventStatus):
    """One pipeline monitor event, as Feldera's ``pipeline_monitor_event`` row."""

    event_id: uuid.UUID
    recorded_at: dt.datetime


def project_event(event: MonitorEvent,
                  selector: PipelineMonitorEventFieldSelector | str = "status") -> dict[str, Any]:
    """The JSON object Feldera returns for an event under ``selector`` (``all`` or ``status``).

    ``status`` omits the three details fields and ``deployment_error``; ``all`` includes them,
    as ``null`` when absent. ``deployment_has_error`` is derived from ``deployment_error``.
    Keys are in Feldera's order.
    """
    selector = PipelineMonitorEventFieldSelector(selector)
    values: dict[str, Any] = {
        "event_id": str(event.event_id),
        "recorded_at": format_timestamp(event.recorded_at),
        "deployment_resources_status": event.deployment_resources_status.value,
        "deployment_resources_status_details": event.deployment_resources_status_details,
        "deployment_resources_desired_status": event.deployment_resources_desired_status.value,
        "deployment_runtime_status": _value(event.deployment_runtime_status),
        "deployment_runtime_status_details": event.deployment_runtime_status_details,
        "deployment_runtime_desired_status": _value(event.deployment_runtime_desired_status),
        "deployment_has_error": event.deployment_has_error,
        "deployment_error": (event.deployment_error.model_dump(mode="json")
                             if event.deployment_error is not None else None),
        "program_status": event.program_status.value,
        "storage_status": event.storage_status.value,
        "storage_status_details": event.storage_status_details,
    }
    if selector is PipelineMonitorEventFieldSelector.ALL:
        return {k: values[k] for k in EVENT_FIELD_ORDER}
    return {k: values[k] for k in EVENT_FIELD_ORDER if k not in ALL_ONLY_FIELDS}


def program_digest(sql: str) -> str:
    """Identifies a program: the status records which program it compiled."""
    return hashlib.sha256(sql.encode()).hexdigest()[:32]


def _value(e: enum.Enum | None) -> Any:
    return None if e is None else e.value


def camelize(obj: Any) -> Any:
    """snake_case keys to camelCase, recursively through dicts and lists (keys only)."""
    if isinstance(obj, dict):
        return {to_camel(k): camelize(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [camelize(v) for v in obj]
    return obj


# --------------------------------------------------------------------------------------
# The Pipeline custom resource
# --------------------------------------------------------------------------------------

# A Kubernetes resource quantity that is not negative (``10Gi``, ``500m``, ``1.5``).
QUANTITY_PATTERN = (r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
                    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$")
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
CONDITION_REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"

# A quantity as Kubernetes accepts it: an integer or a string (``cpu: 1`` or ``cpu: "500m"``).
Quantity = Annotated[int | str, Field(json_schema_extra={
    "x-kubernetes-int-or-string": True,
    "pattern": QUANTITY_PATTERN,  # applies to strings only
    "x-kubernetes-validations": [{"rule": "type(self) != int || self >= 0",
                                  "message": "must not be negative"}],
})]
FreeForm = Annotated[Any, Field(json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})]
FreeFormObject = Annotated[dict[str, Any] | None, Field(json_schema_extra={
    "type": "object", "x-kubernetes-preserve-unknown-fields": True})]


class CamelModel(BaseModel):
    """Fields are snake_case in Python and camelCase in the resource."""
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid",
                              use_enum_values=False)

    def to_resource(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class ProgramSpec(CamelModel):
    sql: str = Field("", max_length=MAX_SQL_LENGTH,
                     description="The pipeline's SQL program. Changes while the pipeline is not "
                                 "Stopped are held until it is Stopped, then compiled.")
    udf_rust: str | None = Field(None, max_length=MAX_UDF_LENGTH,
                          description="Feldera's udf_rust: kept and served as given (this operator "
                                      "compiles no Rust).")
    udf_toml: str | None = Field(None, max_length=MAX_UDF_LENGTH, description="Feldera's udf_toml: kept and served.")


class ResourceList(CamelModel):
    cpu: Quantity | None = Field(None, description="CPU, e.g. 500m or 2.")
    memory: Quantity | None = Field(None, description="Memory, e.g. 512Mi or 4Gi.")


class ResourceRequirements(CamelModel):
    requests: ResourceList | None = None
    limits: ResourceList | None = None


class EnvVar(CamelModel):
    name: str = Field(min_length=1, max_length=256, pattern=ENV_NAME_PATTERN)
    value: str = Field("", max_length=4096)


class DeploymentSpec(CamelModel):
    image: str | None = Field(None, min_length=1, max_length=512,
                              description="Container image of the pipeline process "
                                          "(Kubernetes backend). Defaults to the operator's.")
    resources: ResourceRequirements | None = Field(None, description="CPU and memory of the "
                                                   "pipeline process (Kubernetes backend).")
    env: list[EnvVar] = Field(default_factory=list, max_length=MAX_ENV_VARS,
                              description="Environment variables of the pipeline process.",
                              json_schema_extra={"x-kubernetes-list-type": "map",
                                                 "x-kubernetes-list-map-keys": ["name"]})
    provisioning_timeout_seconds: int | None = Field(
        None, ge=1, le=86400,
        description="How long Provisioning may take before the pipeline stops with an error. "
                    "Defaults to the operator's --provisioning-timeout.")


class StorageSpec(CamelModel):
    size: Quantity | None = Field(None, description="Size of the pipeline's storage volume, e.g. 10Gi.")
    storage_class_name: str | None = Field(None, min_length=1, max_length=253,
                                           description="StorageClass of the volume.")


class PipelineSpec(CamelModel):
    """What a pipeline should be. Written by people and GitOps tools; never by the operator."""

    desired_status: ResourcesDesiredStatus = Field(
        ResourcesDesiredStatus.STOPPED,
        description="Provisioned to run the pipeline (Feldera's /start), Stopped to stop it (/stop).")
    initial_runtime_status: InitialRuntimeStatus = Field(
        InitialRuntimeStatus.RUNNING,
        description="Runtime status the pipeline starts in (Feldera's /start?initial=).")
    runtime_desired_status: SpecRuntimeDesiredStatus | None = Field(
        None,
        description="Running or Paused: kept on the pipeline while it is Provisioned (Feldera's "
                    "/resume and /pause) and the status it starts in, unless initialRuntimeStatus "
                    "is Standby; then a change of this field activates it.")
    stop_mode: StopMode = Field(
        StopMode.GRACEFUL,
        description="Graceful suspends the pipeline (checkpoint) before stopping; Force "
                    "deprovisions at once (Feldera's /stop?force=false|true).")
    bootstrap_policy: BootstrapPolicy = Field(
        BootstrapPolicy.AWAIT_APPROVAL,
        description="When the program changed since the pipeline's checkpoint: AwaitApproval waits in "
                    "AwaitingApproval for an approval, Allow bootstraps at once, Reject fails the start "
                    "(Feldera's /start?bootstrap_policy=). Used at the next start.")
    description: str | None = Field(None, max_length=MAX_DESCRIPTION, description="Feldera's pipeline description.")
    tags: list[str] | None = Field(None, max_length=MAX_TAGS,
                            description="Feldera's pipeline tags (free-form labels).",
                            json_schema_extra={"items": {"type": "string", "maxLength": 256}})
    runtime_config: FreeFormObject = Field(
        None, description="Feldera's runtime_config, kept as given. The operator uses "
                          "provisioning_timeout_secs (unless deployment.provisioningTimeoutSeconds is set) and "
                          "storage.backend (Standby needs a file backend with sync configured).")
    program_config: FreeFormObject = Field(None, description="Feldera's program_config, kept as given.")
    program: ProgramSpec = Field(default_factory=ProgramSpec)
    deployment: DeploymentSpec = Field(default_factory=DeploymentSpec)
    storage: StorageSpec = Field(default_factory=StorageSpec)


class ConditionStatus(str, enum.Enum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(CamelModel):
    """metav1.Condition."""
    type: str = Field(min_length=1, max_length=316)
    status: ConditionStatus
    reason: str = Field(min_length=1, max_length=1024, pattern=CONDITION_REASON_PATTERN)
    message: str = Field("", max_length=MAX_CONDITION_MESSAGE)
    last_transition_time: dt.datetime
    observed_generation: int | None = Field(None, ge=0)


class ErrorStatus(CamelModel):
    """The latched error: Feldera's ErrorResponse, with camelCase keys."""
    message: str = Field(max_length=MAX_ERROR_MESSAGE)
    error_code: str = Field(max_length=256)
    details: FreeForm = None


class HistoryEntry(CamelModel):
    """One monitor event as the ``status`` selector shows it, camelCase."""
    event_id: uuid.UUID
    recorded_at: dt.datetime
    deployment_resources_status: ResourcesStatus
    deployment_resources_desired_status: ResourcesDesiredStatus
    deployment_runtime_status: RuntimeStatus | None = None
    deployment_runtime_desired_status: RuntimeDesiredStatus | None = None
    deployment_has_error: bool
    program_status: ProgramStatus
    storage_status: StorageStatus


class ActionOutcome(str, enum.Enum):
    APPLIED = "Applied"
    REFUSED = "Refused"


class HandledAction(CamelModel):
    """The last value of a one-shot annotation that the operator handled, and what it did."""
    value: str = Field(max_length=1024)
    outcome: ActionOutcome
    message: str = Field("", max_length=1024)
    error_code: str | None = Field(None, max_length=256, description="Feldera's error code of a refusal.")


class HandledActions(CamelModel):
    start: HandledAction | None = None
    clear_storage: HandledAction | None = None
    dismiss_error: HandledAction | None = None
    approve: HandledAction | None = None


class OperatorState(CamelModel):
    """Bookkeeping that lets a restarted operator carry on where it was. Not an interface."""
    error_generation: int | None = Field(None, ge=0, description="Spec generation when the error latched; "
                                         "a newer generation dismisses it.")
    system_stop_generation: int | None = Field(None, ge=0, description="Spec generation when the system set "
                                               "the desired status to Stopped; a start or a newer generation "
                                               "releases it.")
    stop_spec_digest: str | None = Field(None, max_length=64, description="The spec (without description and "
                                         "tags) when the error or the stop was set.")
    runtime_desired_adopted: SpecRuntimeDesiredStatus | None = None
    runtime_desired_pending: SpecRuntimeDesiredStatus | None = None
    suspend_requested_at: dt.datetime | None = None


class PipelineStatus(CamelModel):
    """What the operator observed and decided. Written only by the operator, to ``/status``."""
    model_config = ConfigDict(extra="ignore")

    observed_generation: int | None = Field(None, ge=0)
    conditions: list[Condition] = Field(
        default_factory=list, max_length=8,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]})
    deployment_status: CombinedStatus | None = Field(None, description="Feldera's combined status.")
    deployment_desired_status: CombinedDesiredStatus | None = None
    deployment_resources_status: ResourcesStatus | None = None
    deployment_resources_status_since: dt.datetime | None = None
    deployment_resources_status_details: FreeForm = None
    deployment_resources_desired_status: ResourcesDesiredStatus | None = Field(
        None, description="The effective desired status: Stopped while an error is latched or the "
                          "system holds the pipeline stopped.")
    deployment_resources_desired_status_since: dt.datetime | None = None
    deployment_initial: RuntimeDesiredStatus | None = None
    bootstrap_policy: BootstrapPolicy | None = None
    deployment_runtime_status: RuntimeStatus | None = None
    deployment_runtime_status_since: dt.datetime | None = None
    deployment_runtime_status_details: FreeForm = None
    deployment_runtime_desired_status: RuntimeDesiredStatus | None = None
    deployment_runtime_desired_status_since: dt.datetime | None = None
    deployment_error: ErrorStatus | None = None
    program_status: ProgramStatus | None = None
    program_status_since: dt.datetime | None = None
    program_error: FreeForm = None
    program_digest: str | None = Field(None, max_length=64, description="Digest of the program the "
                                       "program status refers to.")
    program_version: int | None = Field(None, ge=0, description="Feldera's program_version: one more "
                                        "for every new program.")
    program_change_held: bool | None = Field(None, description="The spec's program changed while the "
                                             "pipeline was not Stopped; it is compiled once Stopped.")
    storage_status: StorageStatus | None = None
    storage_status_details: FreeForm = None
    handled_actions: HandledActions | None = None
    operator_state: OperatorState | None = None
    history: list[HistoryEntry] = Field(default_factory=list, max_length=MAX_HISTORY_ITEMS,
                                        description="The newest monitor events, newest first.")


class Metadata(BaseModel):
    """The part of ``metadata`` the operator reads."""
    model_config = ConfigDict(extra="ignore")

    name: str
    namespace: str | None = None
    uid: str | None = None
    generation: int = 1
    resource_version: str | None = Field(None, alias="resourceVersion")
    annotations: dict[str, str] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)


class Pipeline(BaseModel):
    """A whole Pipeline object as read from the API server."""
    model_config = ConfigDict(extra="ignore")

    api_version: Literal["dataflow.dev/v1alpha1"] = Field(f"{API_GROUP}/{API_VERSION}",
                                                           alias="apiVersion")
    kind: Literal["Pipeline"] = "Pipeline"
    metadata: Metadata
    spec: PipelineSpec = Field(default_factory=PipelineSpec)
    status: PipelineStatus = Field(default_factory=PipelineStatus)
