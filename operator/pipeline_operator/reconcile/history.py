"""Monitor events and ``status.history`` entries, one from the other: what the loop writes to the status of
each event, and the events it seeds a store that lost them with (the history keeps no error text)."""

from __future__ import annotations

from collections.abc import Sequence

from ..models import ErrorResponse, HistoryEntry, MonitorEvent, project_event


def history_entry(event: MonitorEvent) -> HistoryEntry:
    return HistoryEntry.model_validate(project_event(event, "status"))


ERROR_NOT_RETAINED = ErrorResponse(
    message="This event was recovered from status.history, which keeps no error text; the error itself "
            "was not retained", error_code="ErrorNotRetained", details=None)


def history_event(entry: HistoryEntry, error: ErrorResponse | None) -> MonitorEvent:
    """A monitor event from a ``status.history`` entry (which has no details and no error text):
    ``error`` is the error to show when the entry had one (the latched error when it is the same
    episode, else a marker), so ``deployment_has_error`` survives."""
    shown = entry.model_dump(exclude={"deployment_has_error"})
    return MonitorEvent(**shown, deployment_error=(error or ERROR_NOT_RETAINED) if entry.deployment_has_error else None)


def history_events(history: Sequence[HistoryEntry], latched: ErrorResponse | None) -> list[MonitorEvent]:
    """Monitor events from ``status.history`` (newest first): the newest entries that have an error
    belong to the error latched now and carry it; older episodes carry the marker."""
    events, current = [], latched
    for entry in history:
        if not entry.deployment_has_error:
            current = None
        events.append(history_event(entry, current))
    return events


__all__ = ["ERROR_NOT_RETAINED", "history_entry", "history_event", "history_events"]
