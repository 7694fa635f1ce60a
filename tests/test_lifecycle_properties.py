"""Property-based tests: random sequences of spec changes, annotations, observations and time.

Whatever happens, the core never leaves Feldera's tables, and the invariants hold:
Provisioning/Provisioned imply storage InUse and program Success; the runtime status is null
unless Provisioned; an error, once set, stays until dismissed; the conditions are judged by
kstatus exactly as the lifecycle fields say; every committed step is one monitor event.
"""

from __future__ import annotations

import datetime as dt

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline_operator.core import resource
from pipeline_operator.core.emission import EmissionRules, UuidV7, emit
from pipeline_operator.core.lifecycle import (
    NOT_JSON,
    ComputeObservation,
    ComputeState,
    Desired,
    LifecycleConfig,
    Observation,
    PipelineState,
    ProgramObservation,
    StorageObservation,
    decide,
    parse_status_response,
)
from pipeline_operator.models import (
    BootstrapPolicy,
    InitialRuntimeStatus,
    ProgramStatus,
    ResourcesDesiredStatus,
    ResourcesStatus,
    SpecRuntimeDesiredStatus,
    StopMode,
    StorageStatus,
    program_digest,
)

from .kstatus import compute as kstatus_compute
from .kstatus import expected_from_lifecycle
from .test_transitions import FELDERA_PROGRAM, FELDERA_RESOURCES, FELDERA_STORAGE

PROGRAMS = ["CREATE TABLE t (x INT);", "CREATE TABLE t (x INT, y INT);", "SELEC oops"]
CONFIG = LifecycleConfig(provisioned_grace_period=20, default_provisioning_timeout=30)

spec_changes = st.fixed_dictionaries({}, optional={
    "resources_desired_status": st.sampled_from(ResourcesDesiredStatus),
    "initial": st.sampled_from(InitialRuntimeStatus),
    "runtime_desired_status": st.none() | st.sampled_from(SpecRuntimeDesiredStatus),
    "stop_mode": st.sampled_from(StopMode),
    "sql": st.sampled_from(PROGRAMS),
    "provisioning_timeout": st.none() | st.sampled_from([5.0, 60.0]),
    "bootstrap_policy": st.sampled_from(BootstrapPolicy),
    "standby_allowed": st.booleans(),
}).filter(bool)
annotations = st.fixed_dictionaries({}, optional={
    "start": st.text("abc", min_size=1, max_size=3),
    "clear_storage": st.text("abc", min_size=1, max_size=3),
    "dismiss_error": st.text("abc", min_size=1, max_size=3),
    "approve": st.text("abc", min_size=1, max_size=3),
}).filter(bool)
status_answers = st.sampled_from([
    (200, {"runtime_status": s, "runtime_desired_status": d, "runtime_status_details": {"n": n},
           "storage_status_details": c})
    for s in ["Running", "Paused", "Standby", "AwaitingApproval", "Initializing", "Replaying", "Suspended",
              "Unavailable", "Synchronizing"]
    for d in ["Running", "Paused", "Suspended", "Standby"]
    for n in [0, 1]
    for c in [None, {"checkpoints": ["c1"]}]
] + [(503, {"message": "busy", "error_code": "Initializing", "details": None}),
     (503, {"message": "busy", "error_code": "Other", "details": None}),
     (500, {"message": "panic", "error_code": "WorkerPanic", "details": {}}),
     (None, None), (200, NOT_JSON), (200, "Running"), (200, "Terminated")])


@st.composite
def observations(draw, desired_digest: str) -> Observation:
    compute = ComputeObservation(state=draw(st.sampled_from(ComputeState)), message=draw(st.sampled_from(["", "why"])))
    answer = draw(st.none() | status_answers)
    runtime = None if answer is None else parse_status_response(answer[0], answer[1], "refused")
    program = draw(st.none() | st.builds(
        ProgramObservation,
        program_digest=st.sampled_from([desired_digest, "stale"]),
        status=st.sampled_from(ProgramStatus),
        error=st.none() | st.just({"line": 1, "column": 1})))
    storage = draw(st.none() | st.builds(StorageObservation, exists=st.booleans()))
    return Observation(compute=compute, runtime=runtime, program=program, storage=storage)


operations = st.lists(st.tuples(
    st.sampled_from(["observe", "observe", "observe", "spec", "annotate"]),
    st.sampled_from([0.5, 1.0, 2.5, 10.0, 25.0, 200.0]),
    st.data()), min_size=1, max_size=40)


def resource_of(desired: Desired, sql: str, status) -> dict:
    spec = {"desiredStatus": desired.resources_desired_status.value, "program": {"sql": sql}}
    if desired.runtime_desired_status is not None:
        spec["runtimeDesiredStatus"] = desired.runtime_desired_status.value
    return {"metadata": {"generation": desired.generation}, "spec": spec,
            "status": status.model_dump(mode="json", by_alias=True, exclude_none=True)}


def check_step(before: PipelineState, after: PipelineState) -> None:
    assert (before.deployment_resources_status.value, after.deployment_resources_status.value) in FELDERA_RESOURCES
    assert (before.storage_status.value, after.storage_status.value) in FELDERA_STORAGE
    assert (before.program_status.value, after.program_status.value) in FELDERA_PROGRAM
    if before.storage_status is not after.storage_status or before.program_status is not after.program_status:
        assert before.deployment_resources_status is ResourcesStatus.STOPPED


def check_state(state: PipelineState) -> None:
    if state.deployment_resources_status in (ResourcesStatus.PROVISIONING, ResourcesStatus.PROVISIONED):
        assert state.storage_status is StorageStatus.IN_USE
        assert state.program_status is ProgramStatus.SUCCESS
    if state.deployment_resources_status is not ResourcesStatus.PROVISIONED:
        assert state.deployment_runtime_status is None and state.deployment_runtime_desired_status is None
    if state.deployment_error is not None:
        assert state.deployment_resources_desired_status is ResourcesDesiredStatus.STOPPED


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=operations)
def test_random_histories_keep_every_invariant(ops):
    sql = PROGRAMS[0]
    desired = Desired(program_digest=program_digest(sql))
    state = PipelineState()
    now = dt.datetime(2026, 11, 26, tzinfo=dt.UTC)
    ids = UuidV7()
    last_event = None
    events = []
    conditions = []
    for kind, advance, data in ops:
        if kind == "spec":
            change = data.draw(spec_changes)
            sql = change.pop("sql", sql)
            desired = desired.model_copy(update={**change, "program_digest": program_digest(sql),
                                                 "generation": desired.generation + 1})
        elif kind == "annotate":
            desired = desired.model_copy(update=data.draw(annotations))
        observation = data.draw(observations(desired.program_digest))
        now += dt.timedelta(seconds=advance)
        before = state
        decision = decide(desired, state, observation, now, CONFIG)
        state = decision.state

        # The tables and the invariants, step by step.
        prev = before
        for step in decision.steps:
            check_step(prev, step.state)
            check_state(step.state)
            prev = step.state
        check_step(prev, state)
        check_state(state)
        assert state.observed_generation == desired.generation

        # An error, once set, stays until dismissed.
        if before.deployment_error is not None and state.deployment_error is None:
            assert before.deployment_resources_status is ResourcesStatus.STOPPED
            new_dismiss = desired.dismiss_error is not None and (
                before.handled_dismiss_error is None or before.handled_dismiss_error.value != desired.dismiss_error)
            assert new_dismiss or desired.generation > (before.error_generation or 0)
        # Desired Stopped by the system (every move to Stopping, a failed start) holds until a start
        # request or a newer spec generation.
        for step in decision.steps:
            if step.state.deployment_resources_status is ResourcesStatus.STOPPING and \
                    desired.resources_desired_status is ResourcesDesiredStatus.PROVISIONED:
                assert step.state.deployment_resources_desired_status is ResourcesDesiredStatus.STOPPED
        if before.system_stop_generation is not None and state.system_stop_generation is None:
            new_start = desired.start is not None and (
                before.handled_start is None or before.handled_start.value != desired.start)
            assert new_start or desired.generation > before.system_stop_generation
        if before.system_stop_generation is not None and state.system_stop_generation is not None:
            assert ResourcesStatus.PROVISIONING not in [s.state.deployment_resources_status for s in decision.steps]
        if before.deployment_error is not None:
            assert ResourcesStatus.PROVISIONING not in [s.state.deployment_resources_status
                                                        for s in decision.steps] or state.deployment_error is None

        # Every committed step is one event, in order; nothing else is, within the intervals.
        emitted = emit(last_event, [s.state.event_status() for s in decision.steps], state.event_status(), now,
                       ids, EmissionRules())
        if decision.steps and last_event is not None:
            assert len(emitted) == len(decision.steps)
        for e in emitted:
            assert last_event is None or e.event.event_id.int > last_event.event_id.int
            last_event = e.event
        events.extend(e.event for e in emitted)

        # GitOps tools read the same verdict from the conditions as from the lifecycle fields.
        status = resource.to_status(desired, state, conditions, [], now)
        conditions = status.conditions
        obj = resource_of(desired, sql, status)
        assert kstatus_compute(obj)[0] == expected_from_lifecycle(obj), (obj["status"], obj["spec"])
        # And the status round-trips into the same state.
        assert resource.from_status(status).model_dump() == {**state.model_dump()}
    assert events and events[0].recorded_at <= events[-1].recorded_at
