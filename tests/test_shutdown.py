"""Shutdown is clean whatever is in flight: SIGTERM while many status writes are under way (and
conflict with spec changes) exits 0 without a traceback, leaves the pipelines' compute running,
and the next operator adopts it and converges; with either event loop (``--event-loop``)."""

from __future__ import annotations

import json
import signal
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from .operator_harness import wait_for
from .test_operator_lifecycle import spec

pytestmark = pytest.mark.apiserver
COUNT = 20
LOOPS = ("uvloop", "asyncio", "uvloop")  # one round each: the default, the standard library's, the default again


def ready(op) -> bool:
    try:
        with urllib.request.urlopen(f"{op.api_url}/readyz", timeout=5) as answer:
            return answer.status == 200
    except OSError:
        return False


def test_sigterm_during_status_writes_exits_cleanly_and_leaves_compute_running(
        operators, pipelines, namespace, cluster, tmp_path):
    state = tmp_path / "state"
    names = [f"p{i:02d}" for i in range(COUNT)]
    op = operators(namespace, "--event-loop", LOOPS[0], state_dir=state, process=True)
    uids = {name: pipelines.create(name, spec())["metadata"]["uid"] for name in names}
    for name in names:
        pipelines.wait_status(name, op, deploymentStatus="Running", timeout=120)
    pids = {name: op.pipeline_processes(uid) for name, uid in uids.items()}
    assert all(len(p) == 1 for p in pids.values())

    def patch(name: str, n: int) -> None:
        cluster.kubectl("patch", "pipeline", name, "-n", namespace, "--type=merge", "-p",
                        json.dumps({"spec": {"description": f"round {n}"}}), check=False)

    with ThreadPoolExecutor(8) as pool:
        for n, loop in enumerate(LOOPS):
            wait_for("the operator to be ready", lambda op=op: ready(op), 60, operator=op)
            assert f"(event loop: {loop})" in op.log()
            changes = [pool.submit(patch, name, n) for name in names]
            wait_for("some of the round's spec changes", lambda changes=changes: sum(c.done() for c in changes) >= 5,
                     60)
            code = op.stop(signal.SIGTERM, timeout=60)  # while the other changes and their status writes go on
            log = op.log()
            assert code == 0, log[-4000:]
            assert "Traceback" not in log, log[-6000:]
            for change in changes:
                change.result()
            assert {name: op.pipeline_processes(uid) for name, uid in uids.items()} == pids  # compute untouched
            op = operators(namespace, "--event-loop", LOOPS[(n + 1) % len(LOOPS)], state_dir=state,
                           process=True)
    for name in names:  # the last operator converges: every change observed, every pipeline still Running
        st = pipelines.a_later_pass(name, op, timeout=120)
        assert st["deploymentStatus"] == "Running"
    assert {name: op.pipeline_processes(uid) for name, uid in uids.items()} == pids
    assert op.stop() == 0 and "Traceback" not in op.log()


def test_nothing_of_the_operators_own_outlives_kopf_so_stopping_waits_for_nothing(operators, pipelines, namespace):
    """Kopf, as it stops, waits up to 5 s for every task made after it started, then cancels them: a task
    of the operator's own still waiting then (a periodic check's wait, say) makes every stop 5 s longer.
    Kopf's debug log says whether any was left ("Hung tasks ...")."""
    op = operators(namespace, "--verbose")
    pipelines.create("steady", spec())
    pipelines.wait_status("steady", op, deploymentStatus="Running")
    assert ready(op)  # the API has served a request, and its periodic checks run
    assert op.stop() == 0
    hung = [line for line in op.log().splitlines() if "Hung tasks" in line]
    assert hung and all("Hung tasks stopping is skipped: no tasks given" in line for line in hung), hung
