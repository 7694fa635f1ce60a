"""A pipeline process killed, stopped (SIGSTOP), hung, or answering garbage, JSON nested too deep or a head
that never ends."""

from __future__ import annotations

import pytest

from .chaos import PIPELINE_FAULTS, RSS_MARGIN_MB, Chaos

pytestmark = [pytest.mark.faults, pytest.mark.apiserver]


@pytest.mark.parametrize("mode", PIPELINE_FAULTS)
def test_a_failing_pipeline_process_settles_and_recovers(chaos_factory, mode):
    chaos: Chaos = chaos_factory(2)
    outcome = chaos.pipeline_fault(mode)
    assert outcome.ok, f"seed {chaos.seed}: pipeline {mode}: {outcome.problems}"
    assert chaos.operator_crashes == 0, f"seed {chaos.seed}: the operator exited on its own"
    if mode == "endless-header":
        # The answer's head is read no further than its bound: the operator's memory stays where it was.
        assert outcome.rss is not None and outcome.rss.growth is not None, outcome.rss
        assert outcome.rss.growth <= RSS_MARGIN_MB, outcome.rss
