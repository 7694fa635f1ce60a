"""The domain model: Feldera's enums, error and monitor-event shapes, and the Pipeline resource.

This package is the one source of truth for every value and field name. The CRD in ``crds/``
is generated from the ``Pipeline*`` models here (see :mod:`pipeline_operator.controller.crd`), the HTTP
API serialises :class:`MonitorEvent` through :func:`project_event`, and the lifecycle core
works on the same enums.

Naming: Python attributes use Feldera's snake_case names (``deployment_resources_status``).
In the custom resource the same fields are camelCase; the conversion is pydantic's
``to_camel`` alias generator, applied by :class:`CamelModel` and by :func:`camelize`, and
nowhere else.

The package's rooms: ``feldera_api`` (Feldera's enums and error shape), ``events`` (Feldera's status fields,
declared once, and the monitor event derived from them), ``spec`` (the Pipeline's spec, from which the CRD is
generated) and ``status`` (the Pipeline's status and ``status.history``). The package names the public API.
"""

from __future__ import annotations

from .events import (
    DETAILS_FIELDS,
    EVENT_FIELD_ORDER,
    EVENT_FIELDS,
    STATUS_FIELDS,
    EventStatus,
    MonitorEvent,
    PipelineDeployment,
    format_timestamp,
    json_value,
    project_event,
)
from .feldera_api import (
    BootstrapPolicy,
    CombinedDesiredStatus,
    CombinedStatus,
    ErrorResponse,
    InitialRuntimeStatus,
    PipelineMonitorEventFieldSelector,
    ProgramStatus,
    ResourcesDesiredStatus,
    ResourcesStatus,
    RuntimeDesiredStatus,
    RuntimeStatus,
    SpecRuntimeDesiredStatus,
    StopMode,
    StorageStatus,
    combined_desired_status,
    combined_status,
)
from .spec import (
    API_GROUP,
    API_VERSION,
    CATEGORIES,
    KIND,
    MAX_DESCRIPTION,
    MAX_ERROR_MESSAGE,
    MAX_HISTORY_ITEMS,
    MAX_INGRESS_PEERS,
    MAX_SQL_LENGTH,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    DeploymentSpec,
    PipelineSpec,
    StorageDeletionPolicy,
    camelize,
    program_digest,
)
from .status import (
    ActionOutcome,
    Condition,
    ConditionStatus,
    ErrorStatus,
    HandledAction,
    HandledActions,
    HistoryEntry,
    OperatorState,
    PipelineStatus,
)

__all__ = [
    "API_GROUP", "API_VERSION", "CATEGORIES", "DETAILS_FIELDS", "EVENT_FIELDS", "EVENT_FIELD_ORDER", "KIND",
    "MAX_DESCRIPTION", "MAX_ERROR_MESSAGE", "MAX_HISTORY_ITEMS", "MAX_INGRESS_PEERS", "MAX_SQL_LENGTH", "PLURAL",
    "SHORT_NAMES", "SINGULAR", "STATUS_FIELDS", "ActionOutcome", "BootstrapPolicy", "CombinedDesiredStatus",
    "CombinedStatus", "Condition", "ConditionStatus", "DeploymentSpec", "ErrorResponse", "ErrorStatus", "EventStatus",
    "HandledAction", "HandledActions", "HistoryEntry", "InitialRuntimeStatus", "MonitorEvent", "OperatorState",
    "PipelineDeployment", "PipelineMonitorEventFieldSelector", "PipelineSpec", "PipelineStatus", "ProgramStatus",
    "ResourcesDesiredStatus", "ResourcesStatus", "RuntimeDesiredStatus", "RuntimeStatus", "SpecRuntimeDesiredStatus",
    "StopMode", "StorageDeletionPolicy", "StorageStatus", "camelize", "combined_desired_status", "combined_status",
    "format_timestamp", "json_value", "program_digest", "project_event",
]
