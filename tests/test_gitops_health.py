"""The Argo CD health check and kstatus agree, for healthy, progressing, stopped and failed Pipelines."""

from __future__ import annotations

import datetime as dt

import pytest

from pipeline_operator.core import resource
from pipeline_operator.core.lifecycle import Desired, PipelineState
from pipeline_operator.models import (
    ErrorResponse,
    ProgramStatus,
    ResourcesDesiredStatus,
    ResourcesStatus,
    RuntimeDesiredStatus,
    RuntimeStatus,
    StorageStatus,
    program_digest,
)

from .argocd_health import health
from .kstatus import compute, expected_from_lifecycle

SQL = "CREATE TABLE t (x INT);"
NOW = dt.datetime(2026, 11, 26, tzinfo=dt.UTC)


def pipeline(desired_status: str, **state) -> dict:
    desired = Desired(generation=3, resources_desired_status=ResourcesDesiredStatus(desired_status),
                      program_digest=program_digest(SQL))
    base = dict(program_status=ProgramStatus.SUCCESS, program_digest=program_digest(SQL),
                storage_status=StorageStatus.IN_USE, observed_generation=3,
                deployment_resources_desired_status=ResourcesDesiredStatus(desired_status))
    status = resource.to_status(desired, PipelineState(**{**base, **state}), [], [], NOW)
    return {"metadata": {"name": "p", "generation": 3},
            "spec": {"desiredStatus": desired_status, "program": {"sql": SQL}},
            "status": status.model_dump(mode="json", by_alias=True, exclude_none=True)}


CASES = {
    "running": (pipeline("Provisioned", deployment_resources_status=ResourcesStatus.PROVISIONED,
                         deployment_runtime_status=RuntimeStatus.RUNNING,
                         deployment_runtime_desired_status=RuntimeDesiredStatus.RUNNING),
                "Current", "Healthy"),
    "provisioning": (pipeline("Provisioned", deployment_resources_status=ResourcesStatus.PROVISIONING), "InProgress",
                     "Progressing"),
    "stopped": (pipeline("Stopped"), "Current", "Suspended"),
    "stopping": (pipeline("Stopped", deployment_resources_status=ResourcesStatus.STOPPING), "InProgress",
                 "Progressing"),
    "failed": (pipeline("Provisioned", deployment_resources_desired_status=ResourcesDesiredStatus.STOPPED,
                        deployment_error=ErrorResponse(message="worker panicked", error_code="WorkerPanic",
                                                       details=None)), "Failed", "Degraded"),
    "sql error": (pipeline("Stopped", program_status=ProgramStatus.SQL_ERROR), "Failed", "Degraded"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_argocd_health_and_kstatus(case):
    obj, verdict, argo = CASES[case]
    assert compute(obj)[0] == verdict == expected_from_lifecycle(obj)
    status, message = health(obj)
    assert status == argo, message
    if argo == "Degraded":
        assert ":" in message and len(message) > 5


def test_a_spec_not_yet_seen_is_progressing():
    obj = CASES["running"][0]
    obj = {**obj, "metadata": {**obj["metadata"], "generation": 4}}
    assert compute(obj)[0] == "InProgress" and health(obj)[0] == "Progressing"


def test_a_new_pipeline_without_status_is_progressing():
    assert health({"metadata": {"name": "p", "generation": 1}, "spec": {}})[0] == "Progressing"
