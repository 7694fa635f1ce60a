"""The event store deleted, truncated, or made read-only while the operator runs."""

from __future__ import annotations

import pytest

from .chaos import Chaos, can_make_immutable

pytestmark = [pytest.mark.faults, pytest.mark.apiserver]


@pytest.mark.parametrize("mode", ["delete", "truncate", "read-only"])
def test_event_store_fault_while_running(chaos_factory, mode, tmp_path):
    if mode == "read-only" and (why := can_make_immutable(tmp_path)):
        pytest.skip(f"the store cannot be made read-only for root on this machine: {why}")
    chaos: Chaos = chaos_factory(2)
    outcome = chaos.store_fault(mode)
    assert outcome.ok, f"seed {chaos.seed}: store {mode}: {outcome.problems}"
    assert chaos.operator_crashes == 0, f"seed {chaos.seed}: the operator exited on its own"
