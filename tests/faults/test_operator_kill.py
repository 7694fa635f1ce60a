"""SIGKILL of the operator at a random moment of a random lifecycle step, then a restart."""

from __future__ import annotations

import pytest

from .chaos import Chaos

pytestmark = [pytest.mark.faults, pytest.mark.apiserver]

ITERATIONS = 6


def test_operator_killed_during_random_lifecycle_steps_converges_without_duplicates_or_losses(chaos_factory):
    chaos: Chaos = chaos_factory(3)
    for i in range(ITERATIONS):
        outcome = chaos.run("operator SIGKILL", chaos.kill_operator)
        assert outcome.ok, f"seed {chaos.seed}, iteration {i}: invariants broken after operator SIGKILL: " \
                           f"{outcome.problems}"
    assert chaos.operator_crashes == 0, f"seed {chaos.seed}: the operator exited on its own"
