"""One monitoring pass in the making (:class:`_Pass`): the state so far, each change of a status field a
committed step, checked against Feldera's transitions."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ...models import STATUS_FIELDS
from .. import transitions
from ..emission import UuidV7
from .model import Action, ActionKind, PipelineState, Step

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
