"""The Pipeline's status (:class:`PipelineStatus`, written only by the operator): Feldera's fields of
:class:`PipelineDeployment`, optional and camelCase, the conditions, the latched error, the one-shot actions
handled, the operator's bookkeeping and ``status.history`` (:class:`HistoryEntry`, derived from the monitor
event)."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from typing import TYPE_CHECKING, Annotated, Any, Optional

from pydantic import ConfigDict, Field, create_model

from .events import ALL_ONLY_FIELDS, EVENT_FIELD_ORDER, EventStatus, PipelineDeployment
from .feldera_api import CombinedDesiredStatus, CombinedStatus, SpecRuntimeDesiredStatus
from .spec import (
    CONDITION_REASON_PATTERN,
    MAX_CONDITION_MESSAGE,
    MAX_ERROR_MESSAGE,
    MAX_HISTORY_ITEMS,
    CamelModel,
    FreeForm,
)


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
