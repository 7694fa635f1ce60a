"""The API server away for a while, and etcd restarted, in the middle of lifecycle steps."""

from __future__ import annotations

import time

import pytest

from .chaos import Chaos

pytestmark = [pytest.mark.faults, pytest.mark.apiserver]

OUTAGE_SECONDS = 12.0


def test_apiserver_outage_during_a_lifecycle_step(chaos_factory):
    chaos: Chaos = chaos_factory(2)
    plane = chaos.cluster.plane

    def outage() -> None:
        chaos._fault_delay(1.0)
        plane.stop_apiserver()
        try:
            time.sleep(OUTAGE_SECONDS)  # the length of the outage is the fault
            assert chaos.op.proc is not None and chaos.op.proc.poll() is None, \
                f"the operator exited while the API server was away:\n{chaos.op.log()[-3000:]}"
        finally:
            plane.start_apiserver()

    outcomes = [chaos.run("apiserver outage", outage) for _ in range(2)]
    assert all(o.ok for o in outcomes), f"seed {chaos.seed}: {[o.problems for o in outcomes]}"
    assert chaos.operator_crashes == 0


def test_etcd_restart_during_a_lifecycle_step(chaos_factory):
    chaos: Chaos = chaos_factory(2)

    def restart() -> None:
        chaos._fault_delay(1.0)
        chaos.cluster.plane.restart_etcd(kill=True)

    outcomes = [chaos.run("etcd restart", restart) for _ in range(2)]
    assert all(o.ok for o in outcomes), f"seed {chaos.seed}: {[o.problems for o in outcomes]}"
    assert chaos.operator_crashes == 0
