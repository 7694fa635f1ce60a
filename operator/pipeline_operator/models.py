"""The domain model: Feldera's enums, error and monitor-event shapes, and the Pipeline resource.

This module is the one source of truth for every value and field name. The CRD in ``crds/``
is generated from the ``Pipeline*`` models here (see :mod:`pipeline_operator.controller.crd`), the HTTP
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
from typing import TYPE_CHECKING, Annotated, Any, Optional

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.alias_generators import to_camel

from .feldera_config import ProgramConfig, RuntimeConfig

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
MAX_TAGS = 50  # Feldera's maximum number of tags (the HTTP API checks its rules for each tag too)
MAX_TAG = 256

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
    def from_feldera(cls, value: str) -> BootstrapPolicy:
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

# The monitor event's fields are declared once, by :class:`EventStatus` below (Feldera's names and
# order); these tuples, the ``status`` projection, ``status.history`` entries (:class:`HistoryEntry`)
# and the lifecycle core's state are all derived from it.


def format_timestamp(t: dt.datetime) -> str:
    """RFC 3339 in UTC the way Feldera (chrono, ``SecondsFormat::AutoSi``) writes it.

    ``2026-11-26T07:31:00Z``, ``...:00.120Z`` or ``...:00.123456Z``: no fraction when it is
    zero, else milliseconds or microseconds, whichever is exact.
    """
    if t.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    t = t.astimezone(dt.UTC)
    base = t.strftime("%Y-%m-%dT%H:%M:%S")
    us = t.microsecond
    if us == 0:
        frac = ""
    elif us % 1000 == 0:
        frac = f".{us // 1000:03d}"
    else:
        frac = f".{us:06d}"
    return f"{base}{frac}Z"


class PipelineDeployment(BaseModel):
    """Feldera's status fields of a pipeline, with their types and initial values: the one
    declaration. The lifecycle core's state extends it; a monitor event (:class:`EventStatus`),
    its ``status`` projection, ``status.history`` entries and the resource's status
    (:class:`PipelineStatus`, camelCase) are derived from it, so a new field is one edit."""
    model_config = ConfigDict(frozen=True)

    deployment_resources_status: ResourcesStatus = ResourcesStatus.STOPPED
    deployment_resources_status_since: dt.datetime | None = None
    deployment_resources_status_details: Any = None
    deployment_resources_desired_status: ResourcesDesiredStatus = Field(
        ResourcesDesiredStatus.STOPPED, description="The effective desired status: Stopped while an error is "
                                                    "latched or the system holds the pipeline stopped.")
    deployment_resources_desired_status_since: dt.datetime | None = None
    deployment_initial: RuntimeDesiredStatus | None = Field(
        None, description="Set by a start (Feldera's /start?initial=), cleared on the way to Stopped.")
    bootstrap_policy: BootstrapPolicy | None = Field(None, description="Set by a start, cleared on the way "
                                                                       "to Stopped.")
    silent_bootstrap: bool = Field(False, description="Set by a start (Feldera's /start?silent_bootstrap=), "
                                                      "cleared on the way to Stopped.")
    deployment_id: uuid.UUID | None = Field(None, description="Feldera's deployment_id: a new UUIDv7 for each "
                                                              "deployment, from Provisioning until Stopped.")
    deployment_runtime_status: RuntimeStatus | None = None
    deployment_runtime_status_since: dt.datetime | None = None
    deployment_runtime_status_details: Any = None
    deployment_runtime_desired_status: RuntimeDesiredStatus | None = None
    deployment_runtime_desired_status_since: dt.datetime | None = None
    deployment_error: ErrorResponse | None = None
    program_status: ProgramStatus = ProgramStatus.PENDING
    program_status_since: dt.datetime | None = None
    program_digest: str | None = Field(None, max_length=64, description="Digest of the program the program "
                                                                      "status refers to.")
    program_version: int = Field(0, ge=0, description="Feldera's program_version: one more for every new "
                                                     "program.")
    program_error: Any = None
    storage_status: StorageStatus = StorageStatus.CLEARED
    storage_status_details: Any = None


# A monitor event's fields, in Feldera's order (``pipeline_monitor_event``): a field named
# ``*_details`` is a details field (the ``all`` selector only); ``deployment_error`` is shown by
# ``all`` only, and as ``deployment_has_error`` by both; every other field is a status field.
EVENT_FIELDS: tuple[str, ...] = (
    "deployment_resources_status", "deployment_resources_status_details", "deployment_resources_desired_status",
    "deployment_runtime_status", "deployment_runtime_status_details", "deployment_runtime_desired_status",
    "deployment_error", "program_status", "storage_status", "storage_status_details")
DETAILS_FIELDS: tuple[str, ...] = tuple(f for f in EVENT_FIELDS if f.endswith("_details"))
STATUS_FIELDS: tuple[str, ...] = tuple(f for f in EVENT_FIELDS if f not in DETAILS_FIELDS)
# Fields the ``status`` selector leaves out (and ``all`` includes, as null when absent).
ALL_ONLY_FIELDS: frozenset[str] = frozenset((*DETAILS_FIELDS, "deployment_error"))
# Feldera's field order on the wire: the ids, then the fields, ``deployment_has_error`` before the error.
EVENT_FIELD_ORDER: tuple[str, ...] = ("event_id", "recorded_at", *[
    name for f in EVENT_FIELDS for name in (("deployment_has_error", f) if f == "deployment_error" else (f,))])
# Required in an event (Feldera's OpenAPI): the status fields that are never null.
_EVENT_REQUIRED = {"deployment_resources_status", "deployment_resources_desired_status", "program_status",
                   "storage_status"}


class _EventBase(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")  # a projection's deployment_has_error is derived

    @property
    def deployment_has_error(self) -> bool:
        return getattr(self, "deployment_error", None) is not None

    def status_key(self) -> tuple[Any, ...]:
        """What "a status field changed" compares (the error itself counts, not only its presence)."""
        return tuple(getattr(self, f) for f in STATUS_FIELDS)

    def details_key(self) -> tuple[Any, ...]:
        return tuple(getattr(self, f) for f in DETAILS_FIELDS)


def _event_field(name: str) -> tuple[Any, Any]:
    info = PipelineDeployment.model_fields[name]
    return info.annotation, (... if name in _EVENT_REQUIRED else None)


_EventFields: Any = create_model("_EventFields", __base__=_EventBase,  # type: ignore[call-overload]
                            **{name: _event_field(name) for name in EVENT_FIELDS})


if TYPE_CHECKING:  # the fields are derived at run time; the type checker sees Any
    EventStatus = Any
else:
    class EventStatus(_EventFields):  # type: ignore[misc]
        """The status and details fields of a monitor event: a snapshot of one pipeline (derived from
        :class:`PipelineDeployment`, in Feldera's event order)."""


class MonitorEvent(EventStatus):  # type: ignore[misc]
    """One pipeline monitor event, as Feldera's ``pipeline_monitor_event`` row."""

    event_id: uuid.UUID
    recorded_at: dt.datetime


def json_value(value: Any) -> Any:
    """A field's value as Feldera writes it in JSON (enums by value, errors as objects)."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dt.datetime):
        return format_timestamp(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def project_event(event: MonitorEvent,
                  selector: PipelineMonitorEventFieldSelector | str = "status") -> dict[str, Any]:
    """The JSON object Feldera returns for an event under ``selector`` (``all`` or ``status``).

    ``status`` omits the details fields and ``deployment_error``; ``all`` includes them, as
    ``null`` when absent. ``deployment_has_error`` is derived from ``deployment_error``. Keys are
    in Feldera's order.
    """
    selector = PipelineMonitorEventFieldSelector(selector)
    keep_all = selector is PipelineMonitorEventFieldSelector.ALL
    return {k: json_value(getattr(event, k)) for k in EVENT_FIELD_ORDER if keep_all or k not in ALL_ONLY_FIELDS}


def program_digest(sql: str) -> str:
    """Identifies a program: the status records which program it compiled."""
    return hashlib.sha256(sql.encode()).hexdigest()[:32]


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
ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
CONDITION_REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"

# A quantity as Kubernetes accepts it: an integer or a string (``cpu: 1`` or ``cpu: "500m"``).
Quantity = Annotated[int | str, Field(json_schema_extra={
    "x-kubernetes-int-or-string": True,
    "pattern": QUANTITY_PATTERN,  # applies to strings only
    "maxLength": 64,
    "x-kubernetes-validations": [{"rule": "type(self) != int || self >= 0",
                                  "message": "must not be negative"}],
})]
FreeForm = Annotated[Any, Field(json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})]


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


# Label selectors and IP blocks of NetworkPolicy peers, as Kubernetes spells them. The schema bounds
# every list and string so that the API server can check the CEL rules below within its cost budget.
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
CIDR_PATTERN = (r"^(([0-9]{1,3}\.){3}[0-9]{1,3}/[0-9]{1,2}"
                r"|[0-9a-fA-F:.]*:[0-9a-fA-F:.]*/[0-9]{1,3})$")
MAX_INGRESS_PEERS = 32
MAX_SELECTOR_ITEMS = 32

LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE_PATTERN)]
Cidr = Annotated[str, Field(min_length=1, max_length=64, pattern=CIDR_PATTERN)]


class LabelSelectorOperator(str, enum.Enum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


class LabelSelectorRequirement(CamelModel):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "(self.operator in ['In', 'NotIn']) == (has(self.values) && size(self.values) > 0)",
         "message": "values must be non-empty for the operators In and NotIn and absent for Exists and "
                    "DoesNotExist"}]})
    key: str = Field(min_length=1, max_length=317, description="The label key.")
    operator: LabelSelectorOperator = Field(description="In, NotIn, Exists or DoesNotExist.")
    values: list[LabelValue] | None = Field(None, max_length=MAX_SELECTOR_ITEMS,
                                            description="The label values (In and NotIn only).")


MAX_LABEL_KEY = 317  # a prefix (a DNS subdomain, 253) and "/" and a name (63)


class LabelSelector(CamelModel):
    match_labels: dict[str, LabelValue] | None = Field(
        None, max_length=MAX_SELECTOR_ITEMS, description="Labels an object must have (all of them).",
        json_schema_extra={"x-kubernetes-validations": [
            {"rule": f"self.all(k, size(k) >= 1 && size(k) <= {MAX_LABEL_KEY})",
             "message": f"label keys are 1 to {MAX_LABEL_KEY} characters"}]})
    match_expressions: list[LabelSelectorRequirement] | None = Field(
        None, max_length=MAX_SELECTOR_ITEMS, description="Requirements an object's labels must meet (all of them).")


class IPBlock(CamelModel):
    cidr: Cidr = Field(description="The admitted addresses, e.g. 10.0.0.0/16.")
    except_: list[Cidr] | None = Field(None, alias="except", max_length=MAX_SELECTOR_ITEMS,
                                       description="Addresses within cidr that are not admitted.")


class NetworkPolicyPeer(CamelModel):
    """A source the pipeline's NetworkPolicy admits, as in a Kubernetes NetworkPolicy: pods selected
    by podSelector (in the pipeline's namespace, or in the namespaces namespaceSelector selects), or
    the addresses of ipBlock."""
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "has(self.ipBlock) != (has(self.podSelector) || has(self.namespaceSelector))",
         "message": "set ipBlock alone, or podSelector and/or namespaceSelector"}]})
    pod_selector: LabelSelector | None = Field(None, description="Pods admitted (with namespaceSelector: in the "
                                                                 "namespaces it selects; else in the pipeline's).")
    namespace_selector: LabelSelector | None = Field(None, description="Namespaces whose pods are admitted.")
    ip_block: IPBlock | None = Field(None, description="Addresses admitted (outside the cluster's pod network).")


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
    allow_ingress_from: list[NetworkPolicyPeer] | None = Field(
        None, max_length=MAX_INGRESS_PEERS,
        description="Who else may reach the pipeline process on its port 8080 (Kubernetes backend with "
                    "--network-policies): NetworkPolicy peers, added to the operator's pods, which are always "
                    "admitted.")


class StorageDeletionPolicy(str, enum.Enum):
    """What deleting a Pipeline does to its storage (named after a PersistentVolume's reclaim policy)."""
    DELETE = "Delete"
    RETAIN = "Retain"


class StorageSpec(CamelModel):
    size: Quantity | None = Field(None, description="Size of the pipeline's storage volume, e.g. 10Gi.")
    storage_class_name: str | None = Field(None, min_length=1, max_length=253,
                                           description="StorageClass of the volume.")
    # Unset means Delete (as before the field existed), so that a spec written back is the spec as given.
    deletion_policy: StorageDeletionPolicy | None = Field(
        None,
        description="Delete (the default) removes the storage with the Pipeline; Retain leaves it in place, "
                    "released from the Pipeline and labelled dataflow.dev/retained-from=<name>, for the next "
                    "Pipeline of the same name in the namespace to adopt. Clearing storage deletes it under "
                    "either policy.")


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
    silent_bootstrap: bool = Field(
        False, description="Bootstrap with the output connectors disabled (Feldera's "
                           "/start?silent_bootstrap=). Used at the next start.")
    description: str | None = Field(None, max_length=MAX_DESCRIPTION, description="Feldera's pipeline description.")
    tags: list[Annotated[str, Field(max_length=MAX_TAG)]] | None = Field(
        None, max_length=MAX_TAGS, description="Feldera's pipeline tags (free-form labels).")
    runtime_config: RuntimeConfig | None = Field(
        None, description="Feldera's runtime_config, with Feldera's keys (snake_case), types and defaults. The "
                          "operator uses provisioning_timeout_secs (unless deployment.provisioningTimeoutSeconds is "
                          "set), storage.backend (Standby needs a file backend with sync configured), workers and "
                          "env (the pipeline process's), resources (Kubernetes backend: the container's requests "
                          "and limits and the storage's size and class, where deployment and storage say nothing) "
                          "and hosts (more than 1 fails the start).")
    program_config: ProgramConfig | None = Field(
        None, description="Feldera's program_config, with Feldera's keys (snake_case), types and defaults.")
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


def _history_fields() -> dict[str, Any]:
    """``status.history`` entries: the event as the ``status`` selector shows it, derived from
    :class:`EventStatus` (a new event field is a new history field)."""
    fields: dict[str, Any] = {"event_id": (uuid.UUID, ...), "recorded_at": (dt.datetime, ...)}
    for name in EVENT_FIELD_ORDER[2:]:
        if name == "deployment_has_error":
            fields[name] = (bool, ...)
        elif name not in ALL_ONLY_FIELDS:
            info = EventStatus.model_fields[name]
            fields[name] = (info.annotation, ... if info.is_required() else info.default)
    return fields


_HistoryFields: Any = create_model("_HistoryFields", __base__=CamelModel,
                              **_history_fields())


if TYPE_CHECKING:  # the fields are derived at run time; the type checker sees Any
    HistoryEntry = Any
else:
    class HistoryEntry(_HistoryFields):  # type: ignore[misc]
        """One monitor event as the ``status`` selector shows it, camelCase."""


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
    program_settings_digest: str | None = Field(None, max_length=64, description="udfRust, udfToml and "
                                                "programConfig of the program the program status refers to.")
    version: int | None = Field(None, ge=1, description="Feldera's version: one more for every change of the "
                                "pipeline's Feldera fields (program, configurations, description, tags).")
    version_digest: str | None = Field(None, max_length=64, description="Those fields when version was counted.")


def _status_field(name: str) -> tuple[Any, Any]:
    """A :class:`PipelineDeployment` field as the resource's status keeps it: optional (absent
    until the operator writes it), free-form JSON for details, camelCase keys for the error."""
    info = PipelineDeployment.model_fields[name]
    if name == "deployment_error":
        annotation: Any = ErrorStatus | None
    elif info.annotation is Any:
        annotation = FreeForm
    else:
        annotation = Optional[info.annotation]  # noqa: UP045 (a runtime type, not an annotation)
    if info.metadata:  # constraints (max_length, ge) carry over
        annotation = Annotated[(annotation, *info.metadata)]
    return annotation, Field(None, description=info.description)


class _PipelineStatusBase(CamelModel):
    """What the operator observed and decided. Written only by the operator, to ``/status``."""
    model_config = ConfigDict(extra="ignore")

    observed_generation: int | None = Field(None, ge=0)
    conditions: list[Condition] = Field(
        default_factory=list, max_length=8,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]})
    deployment_status: CombinedStatus | None = Field(None, description="Feldera's combined status.")
    deployment_desired_status: CombinedDesiredStatus | None = None


_PipelineStatusFields: Any = create_model(  # type: ignore[call-overload]
    "_PipelineStatusFields", __base__=_PipelineStatusBase,
    **{name: _status_field(name) for name in PipelineDeployment.model_fields},
    program_change_held=(bool | None, Field(None, description="The spec's program changed while the pipeline "
                                                              "was not Stopped; it is compiled once Stopped.")),
    handled_actions=(HandledActions | None, None),
    operator_state=(OperatorState | None, None),
    history=(list[HistoryEntry], Field(default_factory=list, max_length=MAX_HISTORY_ITEMS,
                                       description="The newest monitor events, newest first.")),
)


if TYPE_CHECKING:  # the fields are derived at run time; the type checker sees Any
    PipelineStatus = Any
else:
    class PipelineStatus(_PipelineStatusFields):  # type: ignore[misc]
        """What the operator observed and decided. Written only by the operator, to ``/status``."""
