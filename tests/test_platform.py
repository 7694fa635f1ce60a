"""Feldera's platform routes without a cluster: the cluster monitor's recording rules and answers (api/platform.py),
and ``/v0/config`` against Feldera's schema."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from pipeline_operator.api.errors import ApiError
from pipeline_operator.api.platform import STORE_EVERY, Check, ClusterMonitor, configuration

from .test_models import OPENAPI, schema_validator

PLATFORM = OPENAPI  # Feldera c44a2456a's document
GOOD = Check(api=(True, "api ok"), compiler=(True, "compiler ok"), runner=(True, "runner ok"))
BAD = Check(api=(True, "api ok"), compiler=(True, "compiler ok"), runner=(False, "no API server"))


class Scripted:
    """A monitor whose checks answer from a list, on a clock that moves 10 s per check."""

    def __init__(self) -> None:
        self.now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
        self.next = GOOD
        self.monitor = ClusterMonitor(self.check, clock=lambda: self.now)

    async def check(self) -> Check:
        self.now += dt.timedelta(seconds=10)
        return self.next

    def run(self, check: Check, times: int) -> None:
        self.next = check
        for _ in range(times):
            asyncio.run(self.monitor.check_now())

    def statuses(self) -> list[tuple[str, str]]:
        return [(e.api_status, e.runner_status) for e in self.monitor.events]


def test_events_are_recorded_by_felderas_rules():
    s = Scripted()
    s.run(BAD, 1)  # never healthy yet: InitialUnhealthy
    assert s.statuses() == [("Healthy", "InitialUnhealthy")]
    s.run(BAD, 7)  # unhealthy still: recorded after 1, 2, 4 checks (a doubling backoff)
    assert len(s.monitor.events) == 4
    s.run(GOOD, 1)  # a change: recorded at once
    assert s.statuses()[-1] == ("Healthy", "Healthy") and s.monitor.events[-1].all_healthy
    s.run(GOOD, STORE_EVERY - 1)  # healthy still: the next record after 60 checks (10 minutes)
    assert len(s.monitor.events) == 5
    s.run(GOOD, 1)
    assert len(s.monitor.events) == 6
    s.run(BAD, 1)  # healthy once: now Unhealthy, not InitialUnhealthy
    assert s.statuses()[-1] == ("Healthy", "Unhealthy")


def test_old_events_go_but_the_latest_stays():
    s = Scripted()
    s.run(GOOD, 1)
    s.run(BAD, 1)
    s.now += dt.timedelta(hours=80)
    s.run(GOOD, 1)
    assert len(s.monitor.events) == 1 and s.monitor.events[0].all_healthy


def test_health_and_events_answer_felderas_shapes():
    s = Scripted()
    s.run(GOOD, 1)
    s.run(BAD, 1)
    status, body = asyncio.run(s.monitor.health())
    assert status == 503 and not body["all_healthy"]
    schema_validator("HealthStatus", PLATFORM).validate(body)
    assert body["runner"] == {"healthy": False, "message": "no API server", "unchanged_since": "2026-01-01T00:00:20Z",
                              "checked_at": "2026-01-01T00:00:20Z"}
    assert body["api"]["unchanged_since"] == "2026-01-01T00:00:10Z"  # healthy since the first check
    listed = asyncio.run(s.monitor.list())
    assert [e["runner_status"] for e in listed] == ["Unhealthy", "Healthy"]  # newest first
    for event in listed:
        schema_validator("ClusterMonitorEventSelectedInfo", PLATFORM).validate(event)
        assert set(event) == {"id", "recorded_at", "all_healthy", "api_status", "compiler_status", "runner_status"}
    everything = asyncio.run(s.monitor.get(listed[1]["id"], "all"))
    schema_validator("ClusterMonitorEventSelectedInfo", PLATFORM).validate(everything)
    assert everything["runner_self_info"] == "runner ok" and everything["id"] == listed[1]["id"]
    assert asyncio.run(s.monitor.get("latest", "status")) == listed[0]
    for event_id, selector, code in (("nope", "status", "InvalidUuidParam"),
                                     ("latest", "some", "InvalidSelector"),
                                     ("00000000-0000-0000-0000-000000000000", "all", "UnknownClusterMonitorEvent")):
        with pytest.raises(ApiError) as err:
            asyncio.run(s.monitor.get(event_id, selector))
        assert err.value.error_code == code


def test_the_first_answer_checks_first():
    s = Scripted()
    status, body = asyncio.run(s.monitor.health())
    assert status == 200 and body["all_healthy"] and len(s.monitor.events) == 1


def test_config_is_felderas_configuration_saying_what_answers():
    config = configuration("0.1.0")
    schema_validator("Configuration", PLATFORM).validate(config)
    assert set(config) == set(PLATFORM["components"]["schemas"]["Configuration"]["properties"])
    assert set(config["build_info"]) == set(PLATFORM["components"]["schemas"]["BuildInformation"]["properties"])
    assert config["version"] == "0.306.0" and config["edition"] in ("Open source", "Enterprise")
    assert config["build_source"] == "pipeline-operator 0.1.0"
    assert config["build_info"]["cargo_dependencies"].startswith(
        "pipeline-operator 0.1.0 (Feldera 0.306.0 API, revision c44a2456a)")
