"""10,000 unauthenticated and malformed API requests while pipelines change state, beside a hostile tenant's
Pipelines (one answering /status with a head that never ends, two nested 1,200 levels deep)."""

from __future__ import annotations

import pytest

from .chaos import Chaos, start_storm, storm_requests

pytestmark = [pytest.mark.faults, pytest.mark.apiserver]

REQUESTS = 10_000


def test_request_storm_gets_no_server_errors_and_reconciliation_goes_on(chaos_factory):
    chaos: Chaos = chaos_factory(2)
    with chaos.hostile_neighbours() as hostile:
        requests = storm_requests(chaos.rng, chaos.cluster.plane.users["admin"].token, REQUESTS, also=tuple(hostile))
        thread, result = start_storm(chaos.op.api_url, requests, concurrency=100)
        steps = 0
        while thread.is_alive() or steps < 2:
            outcome = chaos.run("request storm", lambda: None)
            assert outcome.ok, f"seed {chaos.seed}: during the storm: {outcome.problems}"
            steps += 1
        thread.join()
    assert result.total == REQUESTS, (result.statuses, result.errors)
    assert not result.server_errors, f"{len(result.server_errors)} server errors, e.g. {result.server_errors[:5]}"
    assert 500 not in result.statuses, result.statuses
    assert chaos.operator_crashes == 0
    chaos.op.assert_alive()
