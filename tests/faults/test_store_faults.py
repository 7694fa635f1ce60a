"""The event store deleted, truncated, or made read-only while the operator runs; and deletions meanwhile."""

from __future__ import annotations

import contextlib
import json
import time

import pytest

from ..operator_harness import wait_for
from .chaos import STORE_FAULTS, Chaos, can_make_immutable, findings, immutable

pytestmark = [pytest.mark.faults, pytest.mark.apiserver]
HOLD = "test.dataflow.dev/hold"  # a finalizer no controller removes: the deletion never finishes


def read_only(chaos: Chaos) -> contextlib.AbstractContextManager[None]:
    store = chaos.store_path
    return immutable(store, store.with_name(store.name + "-wal"), chaos.store_dir)


@pytest.fixture
def store_can_be_read_only(tmp_path) -> None:
    if why := can_make_immutable(tmp_path):
        pytest.skip(f"the store cannot be made read-only for root on this machine: {why}")


@pytest.mark.parametrize("mode", STORE_FAULTS)
def test_event_store_fault_while_running(chaos_factory, mode, tmp_path):
    if mode == "read-only" and (why := can_make_immutable(tmp_path)):
        pytest.skip(f"the store cannot be made read-only for root on this machine: {why}")
    chaos: Chaos = chaos_factory(2)
    outcome = chaos.store_fault(mode)
    assert outcome.ok, f"seed {chaos.seed}: store {mode}: {outcome.problems}"
    assert chaos.operator_crashes == 0, f"seed {chaos.seed}: the operator exited on its own"


def test_a_pipeline_deleted_while_the_store_is_read_only_is_created_again_with_only_its_own_events(
        chaos_factory, store_can_be_read_only):
    """The deletion does not wait for the store; the name is used again once the old Pipeline is gone,
    and the new one (a new uid) reaches its status and is served none of the old one's events."""
    chaos: Chaos = chaos_factory(1)
    target = chaos.targets["chaos-0"]
    old_uid = target.uid
    before = chaos.snapshot()
    assert before.get(old_uid), "the pipeline has no events to lose"
    started = time.monotonic()
    with read_only(chaos):
        chaos.apply_step(target, "delete")
        chaos.apply_step(target, "start")  # created again once the deleted one is gone
        assert target.uid != old_uid
        problems = chaos.wait_settled()  # while the store still refuses every write
        assert not problems, problems
    outcome = chaos.check("store read-only", before, started, problems)
    assert outcome.ok, f"seed {chaos.seed}: {outcome.problems}"
    assert old_uid not in chaos.store_ids()
    served = chaos.served_ids("chaos-0")
    assert served and not served & before[old_uid]
    assert served <= chaos.store_ids()[target.uid]


def test_the_events_of_a_pipeline_deleted_while_the_store_is_read_only_go_even_if_the_operator_stops_first(
        chaos_factory, store_can_be_read_only):
    """The removal a deletion queues is lost with the operator while the store cannot be written; the
    sweep of a later operator removes the events all the same, and nothing of the pipelines that exist."""
    chaos: Chaos = chaos_factory(2)
    gone, kept = chaos.targets["chaos-0"], chaos.targets["chaos-1"]
    stored = chaos.store_ids()
    assert stored.get(gone.uid) and stored.get(kept.uid)
    with read_only(chaos):
        chaos.apply_step(gone, "delete")
        chaos.wait_gone(gone)
        chaos.op.kill()  # with the removal still queued
    chaos.op.start()
    wait_for("the deleted pipeline's events to leave the store", lambda: gone.uid not in chaos.store_ids(), 30,
             operator=chaos.op)
    assert stored[kept.uid] <= chaos.store_ids()[kept.uid]
    assert f"chaos-0: removing its events from the event store: the Pipeline no longer exists (uid {gone.uid})" \
        in chaos.op.log()


def test_a_deletion_that_never_finishes_is_a_finding_and_the_name_is_not_used_again(chaos_factory):
    chaos: Chaos = chaos_factory(1)
    chaos.deletion_seconds = 3.0
    target = chaos.targets["chaos-0"]
    old_uid = target.uid
    chaos.cluster.kubectl("patch", "pipeline", "chaos-0", "-n", chaos.namespace, "--type=json", "-p",
                          json.dumps([{"op": "add", "path": "/metadata/finalizers/-", "value": HOLD}]))
    chaos.apply_step(target, "delete")
    problems: list[str] = []
    with findings(problems):
        chaos.apply_step(target, "start")
    assert len(problems) == 1 and problems[0].startswith(
        f"chaos-0: the deletion of uid {old_uid} did not finish within 3s (finalizers ["), problems
    assert HOLD in problems[0] and problems[0].endswith("; not created again")
    assert target.state == "Deleted" and target.uid == old_uid

    # The operator's part is done (compute stopped, storage cleared, its finalizer removed); then the hold goes.
    wait_for("the operator's finalizer to go",
             lambda: chaos.pipelines.get("chaos-0")["metadata"].get("finalizers") == [HOLD], 60, operator=chaos.op)
    chaos.cluster.kubectl("patch", "pipeline", "chaos-0", "-n", chaos.namespace, "--type=merge",
                          "-p", '{"metadata":{"finalizers":null}}')
    chaos.apply_step(target, "start")
    assert target.uid != old_uid and not chaos.wait_settled()
