"""Monitor events: Feldera's status fields of a pipeline declared once (:class:`PipelineDeployment`), the
monitor event's fields in Feldera's order derived from them (:data:`EVENT_FIELDS`, :class:`EventStatus`,
:class:`MonitorEvent`), and an event as Feldera's selectors project it on the wire."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from .feldera_api import (
    BootstrapPolicy,
    ErrorResponse,
    PipelineMonitorEventFieldSelector,
    ProgramStatus,
    ResourcesDesiredStatus,
    ResourcesStatus,
    RuntimeDesiredStatus,
    RuntimeStatus,
    StorageStatus,
)

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
