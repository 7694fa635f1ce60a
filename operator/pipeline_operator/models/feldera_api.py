"""Feldera's own values and shapes, exactly as in Feldera's OpenAPI document: the statuses of a
pipeline's resources, runtime, program and storage, the combined statuses derived from them, the start
parameters (initial runtime status, bootstrap policy, stop mode) and Feldera's error shape."""

from __future__ import annotations

import enum
from typing import Any

from pydantic import BaseModel, ConfigDict

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
