"""A pipeline process killed, stopped (SIGSTOP), hung, or answering garbage."""

from __future__ import annotations

import pytest

from .chaos import PIPELINE_FAULTS, Chaos

pytestmark = [pytest.mark.faults, pytest.mark.apiserver]


@pytest.mark.parametrize("mode", PIPELINE_FAULTS)
def test_a_failing_pipeline_process_settles_and_recovers(chaos_factory, mode):
    chaos: Chaos = chaos_factory(2)
    outcome = chaos.pipeline_fault(mode)
    assert outcome.ok, f"seed {chaos.seed}: pipeline {mode}: {outcome.problems}"
    assert chaos.operator_crashes == 0, f"seed {chaos.seed}: the operator exited on its own"
