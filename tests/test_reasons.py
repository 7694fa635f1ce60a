"""What Kubernetes Events say for monitor events, and the cap on details."""

from __future__ import annotations

import json

import pytest

from pipeline_operator.core.emission import EmissionKind
from pipeline_operator.core.lifecycle import (
    DETAILS_DEPTH_LIMIT,
    DETAILS_LIMIT,
    cap_details,
    cap_error,
    parse_status_response,
)
from pipeline_operator.core.reasons import describe
from pipeline_operator.models import (
    ErrorResponse,
    EventStatus,
    ProgramStatus,
    ResourcesDesiredStatus,
    ResourcesStatus,
    RuntimeDesiredStatus,
    RuntimeStatus,
    StorageStatus,
)

RUNNING = EventStatus(deployment_resources_status=ResourcesStatus.PROVISIONED,
                      deployment_resources_desired_status=ResourcesDesiredStatus.PROVISIONED,
                      deployment_runtime_status=RuntimeStatus.RUNNING,
                      deployment_runtime_desired_status=RuntimeDesiredStatus.RUNNING,
                      program_status=ProgramStatus.SUCCESS, storage_status=StorageStatus.IN_USE)


def changed(**kw) -> EventStatus:
    return RUNNING.model_copy(update=kw)


@pytest.mark.parametrize(("after", "reason", "text"), [
    (changed(deployment_runtime_status=RuntimeStatus.PAUSED,
             deployment_runtime_desired_status=RuntimeDesiredStatus.PAUSED),
     "RuntimePaused", "Runtime Running -> Paused; runtime desired Running -> Paused"),
    (changed(deployment_resources_status=ResourcesStatus.STOPPING, deployment_runtime_status=None,
             deployment_runtime_desired_status=None), "Stopping", "Resources Provisioned -> Stopping"),
    (changed(deployment_resources_desired_status=ResourcesDesiredStatus.STOPPED), "DesiredStopped",
     "Desired Provisioned -> Stopped"),
])
def test_status_changes_get_specific_reasons(after, reason, text):
    got_reason, kind, message = describe(EmissionKind.STATUS, RUNNING, after, "spec changed")
    assert (got_reason, kind) == (reason, "Normal")
    assert message.startswith(text) and message.endswith("(spec changed)")


def test_an_error_is_a_warning_and_named_first():
    err = ErrorResponse(message="worker panicked\nat line 3", error_code="WorkerPanic", details=None)
    after = changed(deployment_resources_status=ResourcesStatus.STOPPING, deployment_error=err,
                    deployment_runtime_status=None)
    reason, kind, message = describe(EmissionKind.STATUS, RUNNING, after)
    assert (reason, kind) == ("DeploymentError", "Warning")
    assert "\n" not in message and "WorkerPanic: worker panicked at line 3" in message
    assert "Provisioned -> Stopping" in message


@pytest.mark.parametrize(("program", "reason"), [(ProgramStatus.SUCCESS, "ProgramCompiled"),
                                                  (ProgramStatus.SQL_ERROR, "ProgramFailed")])
def test_program_reasons(program, reason):
    before = changed(deployment_resources_status=ResourcesStatus.STOPPED, deployment_runtime_status=None,
                     deployment_runtime_desired_status=None, program_status=ProgramStatus.COMPILING_RUST)
    assert describe(EmissionKind.STATUS, before, before.model_copy(update={"program_status": program}))[0] == reason


def test_storage_cleared_reason():
    before = changed(deployment_resources_status=ResourcesStatus.STOPPED, storage_status=StorageStatus.CLEARING)
    after = before.model_copy(update={"storage_status": StorageStatus.CLEARED})
    assert describe(EmissionKind.STATUS, before, after)[0] == "StorageCleared"


def test_heartbeats_and_details_have_their_own_reasons():
    assert describe(EmissionKind.HEARTBEAT, RUNNING, RUNNING)[0] == "Heartbeat"
    assert describe(EmissionKind.DETAILS, RUNNING, RUNNING)[0] == "DetailsChanged"
    assert describe(EmissionKind.FIRST, None, RUNNING)[0] == "MonitoringStarted"


def test_messages_fit_in_an_event():
    err = ErrorResponse(message="x" * 5000, error_code="Big", details=None)
    assert len(describe(EmissionKind.STATUS, RUNNING, changed(deployment_error=err))[2]) == 1024


def test_small_details_are_kept_and_huge_ones_replaced_by_a_marker():
    small = {"connector_stats": {"num_errors": 1}}
    assert cap_details(small) is small
    huge = {"padding": "x" * (DETAILS_LIMIT + 1)}
    capped = cap_details(huge)
    assert capped["truncated"] is True and capped["size_bytes"] > DETAILS_LIMIT
    obs = parse_status_response(200, {"runtime_status": "Running", "runtime_desired_status": "Running",
                                      "runtime_status_details": huge, "storage_status_details": huge})
    assert obs.runtime_status_details["truncated"] and obs.storage_status_details["truncated"]


def test_deep_details_are_replaced_by_a_marker_within_the_size_limit():
    """Small but deep details (an error's details too) would make the Pipeline too deep for its readers."""
    deep: dict = {}
    for _ in range(DETAILS_DEPTH_LIMIT - 1):
        deep = {"a": deep}
    assert cap_details(deep) is deep  # DETAILS_DEPTH_LIMIT objects, one inside the other
    deeper = {"a": deep, "b": 1}
    capped = cap_details(deeper)
    assert capped["truncated"] is True and capped["depth_limit"] == DETAILS_DEPTH_LIMIT
    assert len(json.dumps(deeper)) < DETAILS_LIMIT
    error = cap_error(ErrorResponse(message="m", error_code="E", details=[deeper]))
    assert error.details["truncated"] is True
