"""The monitor-event emission rules at their boundaries, with an injected clock."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from pipeline_operator.core.emission import (
    EmissionKind,
    EmissionRules,
    UuidV7,
    emit,
    make_event,
    retain,
)
from pipeline_operator.models import (
    EventStatus,
    MonitorEvent,
    ProgramStatus,
    ResourcesDesiredStatus,
    ResourcesStatus,
    StorageStatus,
)

from .lifecycle_sim import T0, Sim, compiled, running

STOPPED = EventStatus(deployment_resources_status=ResourcesStatus.STOPPED,
                      deployment_resources_desired_status=ResourcesDesiredStatus.STOPPED,
                      program_status=ProgramStatus.SUCCESS, storage_status=StorageStatus.IN_USE)
ids = UuidV7()


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def last_event(status: EventStatus = STOPPED, seconds: float = 0) -> MonitorEvent:
    return make_event(status, ids(at(seconds)), at(seconds))


def with_details(status: EventStatus, details) -> EventStatus:
    return status.model_copy(update={"storage_status_details": details})


def test_first_pass_records_an_event():
    out = emit(None, [], STOPPED, at(0), ids)
    assert [e.kind for e in out] == [EmissionKind.FIRST]
    assert out[0].event.recorded_at == at(0)


def test_no_change_within_the_heartbeat_interval_records_nothing():
    assert emit(last_event(), [], STOPPED, at(599), ids) == []


@pytest.mark.parametrize(("seconds", "expected"), [(599, 0), (600, 0), (601, 1)])
def test_heartbeat_only_after_more_than_ten_minutes(seconds, expected):
    out = emit(last_event(), [], STOPPED, at(seconds), ids)
    assert len(out) == expected
    assert all(e.kind is EmissionKind.HEARTBEAT for e in out)


def test_no_heartbeat_while_provisioning_as_felderas_runner():
    provisioning = STOPPED.model_copy(update={
        "deployment_resources_status": ResourcesStatus.PROVISIONING,
        "deployment_resources_desired_status": ResourcesDesiredStatus.PROVISIONED})
    assert emit(last_event(provisioning), [], provisioning, at(3600), ids) == []
    changed = with_details(provisioning, {"checkpoints": []})  # a change of the details is still recorded
    assert [e.kind for e in emit(last_event(provisioning), [], changed, at(10), ids)] == [EmissionKind.DETAILS]


@pytest.mark.parametrize(("seconds", "expected"), [(9.9, 0), (10, 1), (10.1, 1)])
def test_details_only_change_is_throttled_to_ten_seconds(seconds, expected):
    changed = with_details(STOPPED, {"checkpoints": [1]})
    out = emit(last_event(), [], changed, at(seconds), ids)
    assert len(out) == expected
    assert all(e.kind is EmissionKind.DETAILS and e.event.storage_status_details == {"checkpoints": [1]}
               for e in out)


def test_status_change_is_recorded_at_once_even_right_after_an_event():
    moved = STOPPED.model_copy(update={"deployment_resources_desired_status": ResourcesDesiredStatus.PROVISIONED})
    out = emit(last_event(), [moved], moved, at(0.001), ids)
    assert [e.kind for e in out] == [EmissionKind.STATUS]
    assert out[0].previous.status_key() == STOPPED.status_key()


def test_intervals_are_parameters():
    rules = EmissionRules(details_min_interval=1, heartbeat_interval=3)
    changed = with_details(STOPPED, {"x": 1})
    assert len(emit(last_event(), [], changed, at(1), ids, rules)) == 1
    assert len(emit(last_event(), [], STOPPED, at(3), ids, rules)) == 0
    assert len(emit(last_event(), [], STOPPED, at(3.5), ids, rules)) == 1


def test_every_step_of_a_pass_is_one_event_in_order_sharing_the_pass_time():
    sim = Sim()
    first = sim.step()
    last = emit(None, [s.state.event_status() for s in first.steps], first.state.event_status(), sim.now, ids)[-1].event
    from pipeline_operator.models import ResourcesDesiredStatus as D
    sim.spec(resources_desired_status=D.PROVISIONED)
    decision = sim.step(compiled("p1"))
    out = emit(last, [s.state.event_status() for s in decision.steps], decision.state.event_status(), sim.now, ids)
    assert len(decision.steps) == 7 and len(out) == 7
    assert [e.event.program_status.value for e in out] == [
        "Pending", "CompilingSql", "SqlCompiled", "CompilingRust", "Success", "Success", "Success"]
    assert [e.event.deployment_resources_status.value for e in out][-1] == "Provisioning"
    assert {e.event.recorded_at for e in out} == {sim.now}
    assert [e.event.event_id for e in out] == sorted(e.event.event_id for e in out)
    assert retain([e.event for e in out], 1)[0] == out[-1].event  # newest: the last step


def test_the_last_step_is_recorded_with_the_newest_details():
    sim = Sim()
    sim.start()
    sim.spec(resources_desired_status=ResourcesDesiredStatus.STOPPED)
    decision = sim.step(running(storage_status_details={"checkpoints": ["c9"]}))
    out = emit(None, [s.state.event_status() for s in decision.steps], decision.state.event_status(), sim.now, ids)
    assert out[-1].event.storage_status_details == {"checkpoints": ["c9"]}


def test_status_change_resets_the_details_throttle():
    moved = STOPPED.model_copy(update={"deployment_resources_status": ResourcesStatus.STOPPED,
                                       "storage_status": StorageStatus.CLEARING})
    status_event = emit(last_event(), [moved], moved, at(5), ids)[0].event
    changed = with_details(moved, {"x": 1})
    assert emit(status_event, [], changed, at(14.9), ids) == []
    assert len(emit(status_event, [], changed, at(15), ids)) == 1


def test_retention_keeps_the_newest_n_newest_first():
    events = [make_event(STOPPED, ids(at(i)), at(i)) for i in range(100)]
    kept = retain(reversed(events), 20)
    assert kept == list(reversed(events[-20:]))
    assert retain(events, 0) == []
    with pytest.raises(ValueError):
        retain(events, -1)


def test_ties_in_recorded_at_are_broken_by_event_id():
    same = at(1)
    events = [make_event(STOPPED, ids(same), same) for _ in range(5)]
    assert retain(events[::-1] + [], 5) == events[::-1]
    assert isinstance(events[0].event_id, uuid.UUID)
