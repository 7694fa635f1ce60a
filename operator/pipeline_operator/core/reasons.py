"""What a monitor event says to a person: a Kubernetes Event reason, type and one-line message."""

from __future__ import annotations

from ..models import EventStatus, ProgramStatus
from .emission import EmissionKind

_PROGRAM_REASONS = {
    ProgramStatus.PENDING: "ProgramPending",
    ProgramStatus.COMPILING_SQL: "ProgramCompilingSql",
    ProgramStatus.SQL_COMPILED: "ProgramSqlCompiled",
    ProgramStatus.COMPILING_RUST: "ProgramCompilingRust",
    ProgramStatus.SUCCESS: "ProgramCompiled",
    ProgramStatus.SQL_ERROR: "ProgramFailed",
    ProgramStatus.RUST_ERROR: "ProgramFailed",
    ProgramStatus.SYSTEM_ERROR: "ProgramFailed",
}
MAX_MESSAGE = 1024


def _v(value: object) -> str:
    return "none" if value is None else getattr(value, "value", str(value))


def summary(status: EventStatus) -> str:
    runtime = f"/{_v(status.deployment_runtime_status)}" if status.deployment_runtime_status else ""
    return (f"resources {_v(status.deployment_resources_status)}{runtime}, desired "
            f"{_v(status.deployment_resources_desired_status)}, program {_v(status.program_status)}, "
            f"storage {_v(status.storage_status)}")


def describe(kind: EmissionKind, previous: EventStatus | None, current: EventStatus,
             why: str = "") -> tuple[str, str, str]:
    """(reason, type, message) of the Kubernetes Event for one monitor event."""
    event_type = "Warning" if current.deployment_error is not None else "Normal"
    if kind is EmissionKind.HEARTBEAT:
        return "Heartbeat", event_type, _line(f"No change: {summary(current)}")
    if kind is EmissionKind.DETAILS:
        return "DetailsChanged", event_type, _line(f"Details changed: {summary(current)}")
    if previous is None or kind is EmissionKind.FIRST:
        return "MonitoringStarted", event_type, _line(f"Monitoring started: {summary(current)}")
    changes: list[tuple[int, str, str]] = []  # (priority, reason, text)
    p, c = previous, current
    if c.deployment_error != p.deployment_error:
        if c.deployment_error is not None:
            err = c.deployment_error
            changes.append((0, "DeploymentError", f"error {err.error_code}: {err.message}"))
        else:
            changes.append((0, "ErrorDismissed", "error dismissed"))
    if c.deployment_resources_status is not p.deployment_resources_status:
        changes.append((1, c.deployment_resources_status.value,
                        f"resources {_v(p.deployment_resources_status)} -> {_v(c.deployment_resources_status)}"))
    if c.deployment_runtime_status is not p.deployment_runtime_status and c.deployment_runtime_status is not None:
        changes.append((2, f"Runtime{c.deployment_runtime_status.value}",
                        f"runtime {_v(p.deployment_runtime_status)} -> {_v(c.deployment_runtime_status)}"))
    if c.deployment_runtime_desired_status is not p.deployment_runtime_desired_status \
            and c.deployment_runtime_desired_status is not None:
        changes.append((3, f"RuntimeDesired{c.deployment_runtime_desired_status.value}",
                        f"runtime desired {_v(p.deployment_runtime_desired_status)} -> "
                        f"{_v(c.deployment_runtime_desired_status)}"))
    if c.program_status is not p.program_status:
        changes.append((4, _PROGRAM_REASONS[c.program_status],
                        f"program {_v(p.program_status)} -> {_v(c.program_status)}"))
    if c.storage_status is not p.storage_status:
        changes.append((5, f"Storage{c.storage_status.value}",
                        f"storage {_v(p.storage_status)} -> {_v(c.storage_status)}"))
    if c.deployment_resources_desired_status is not p.deployment_resources_desired_status:
        changes.append((6, f"Desired{c.deployment_resources_desired_status.value}",
                        f"desired {_v(p.deployment_resources_desired_status)} -> "
                        f"{_v(c.deployment_resources_desired_status)}"))
    if not changes:
        return "StatusChanged", event_type, _line(f"{summary(current)}" + (f" ({why})" if why else ""))
    changes.sort()
    text = "; ".join(t for _, _, t in changes)
    return changes[0][1], event_type, _line(text[:1].upper() + text[1:] + (f" ({why})" if why else ""))


def _line(text: str) -> str:
    one = " ".join(text.split())
    return one if len(one) <= MAX_MESSAGE else one[: MAX_MESSAGE - 3] + "..."
