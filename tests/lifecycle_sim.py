"""A tiny driver for the pure lifecycle core: desired state, recorded state and a fake clock."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pipeline_operator.core.lifecycle import (
    ComputeObservation,
    ComputeState,
    Decision,
    Desired,
    LifecycleConfig,
    Observation,
    PipelineState,
    ProgramObservation,
    RuntimeObservation,
    RuntimeProbe,
    StorageObservation,
    decide,
)
from pipeline_operator.models import ProgramStatus, RuntimeDesiredStatus, RuntimeStatus

T0 = dt.datetime(2026, 11, 26, 8, 0, tzinfo=dt.UTC)


def compute(state: ComputeState, message: str = "") -> ComputeObservation:
    return ComputeObservation(state=state, message=message)


def ok(status: RuntimeStatus, desired: RuntimeDesiredStatus | None = None, **kw: Any) -> RuntimeObservation:
    return RuntimeObservation(probe=RuntimeProbe.OK, runtime_status=status,
                              runtime_desired_status=desired or RuntimeDesiredStatus(
                                  status.value if status.value in RuntimeDesiredStatus._value2member_map_
                                  else "Running"), **kw)


def running(status: RuntimeStatus = RuntimeStatus.RUNNING, desired: RuntimeDesiredStatus | None = None,
            **kw: Any) -> Observation:
    """A ready compute whose pipeline answers with ``status``."""
    return Observation(compute=compute(ComputeState.READY), runtime=ok(status, desired, **kw))


def compiled(digest: str, status: ProgramStatus = ProgramStatus.SUCCESS, error: Any = None) -> Observation:
    return Observation(program=ProgramObservation(program_digest=digest, status=status, error=error))


def storage(exists: bool) -> Observation:
    return Observation(storage=StorageObservation(exists=exists))


class Sim:
    def __init__(self, desired: Desired | None = None, state: PipelineState | None = None,
                 config: LifecycleConfig | None = None) -> None:
        self.desired = desired or Desired(program_digest="p1")
        self.state = state or PipelineState()
        self.now = T0
        self.config = config if config is not None else LifecycleConfig()
        self.decisions: list[Decision] = []

    def spec(self, **changes: Any) -> None:
        """A spec change (a new generation), or annotation changes when only those are given."""
        annotations = {"start", "clear_storage", "dismiss_error", "approve"}
        bump = 0 if set(changes) <= annotations else 1
        self.desired = self.desired.model_copy(update={**changes, "generation": self.desired.generation + bump})

    def step(self, observation: Observation | None = None, after: float = 1.0) -> Decision:
        self.now = self.now + dt.timedelta(seconds=after)
        decision = decide(self.desired, self.state, observation or Observation(), self.now, self.config)
        self.state = decision.state
        self.decisions.append(decision)
        return decision

    def start(self) -> None:
        """Bring the pipeline to Provisioned/Running from a fresh state."""
        from pipeline_operator.models import ResourcesDesiredStatus
        self.spec(resources_desired_status=ResourcesDesiredStatus.PROVISIONED)
        self.step(compiled(self.desired.program_digest))
        self.step(running())
        assert self.state.deployment_runtime_status is RuntimeStatus.RUNNING, self.state


def summary(decision: Decision) -> list[tuple]:
    """Each step as (resources, desired, runtime, program, storage, has_error)."""
    return [(s.state.deployment_resources_status.value, s.state.deployment_resources_desired_status.value,
             s.state.deployment_runtime_status.value if s.state.deployment_runtime_status else None,
             s.state.program_status.value, s.state.storage_status.value,
             s.state.deployment_error is not None) for s in decision.steps]


def kinds(decision: Decision) -> list[str]:
    return [a.kind.value for a in decision.actions]
