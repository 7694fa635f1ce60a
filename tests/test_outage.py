"""The API server goes away for a while: the operator keeps running, leaves the pipelines' compute
alone, and catches up when the API server is back (the real kube-apiserver, stopped and started
again on the same address with the same certificates and tokens)."""

from __future__ import annotations

import time

import pytest

from .operator_harness import wait_for
from .test_operator_lifecycle import spec

pytestmark = pytest.mark.apiserver
OUTAGE = 25.0  # seconds without an API server (the 60 s outage is bench/chaos.py's)


def test_an_api_server_outage_leaves_compute_alone_and_the_operator_catches_up(
        operators, pipelines, namespace, cluster, kstatus):
    op = operators(namespace, "--heartbeat-interval", "2")  # status writes go on during the outage
    uids = {name: pipelines.create(name, spec())["metadata"]["uid"] for name in ("steady", "later")}
    for name in uids:
        kstatus.track(namespace, name, expect="Current")
        pipelines.wait_status(name, op, deploymentStatus="Running")
    pids = {name: op.pipeline_processes(uid) for name, uid in uids.items()}
    assert all(len(p) == 1 for p in pids.values())

    cluster.plane.stop_apiserver()
    try:
        # Observe the whole outage: the operator stays up and no pipeline process is touched.
        ends = time.monotonic() + OUTAGE
        while time.monotonic() < ends:
            op.assert_alive()
            assert {name: op.pipeline_processes(uid) for name, uid in uids.items()} == pids
            time.sleep(0.5)
    finally:
        cluster.plane.start_apiserver()
    assert "the Kubernetes API server is unreachable" in op.log()  # one line per pipeline, no traceback

    pipelines.patch_spec("later", {"desiredStatus": "Stopped", "stopMode": "Force"})  # made after the return
    st = pipelines.wait_status("later", op, deploymentStatus="Stopped", timeout=90)
    assert st["observedGeneration"] == pipelines.get("later")["metadata"]["generation"]
    wait_for("the stopped pipeline's process to be gone", lambda: not op.pipeline_processes(uids["later"]), 30,
             operator=op)
    st = pipelines.a_later_pass("steady", op, timeout=90)  # the status reflects the present
    assert st["deploymentStatus"] == "Running"
    assert op.pipeline_processes(uids["steady"]) == pids["steady"]
    op.assert_alive()
    assert "Traceback" not in op.log()
    kstatus.track(namespace, "later", expect="Current")


def test_an_etcd_restart_is_ridden_out(operators, pipelines, namespace, cluster, kstatus):
    op = operators(namespace)
    uid = pipelines.create("stored", spec())["metadata"]["uid"]
    kstatus.track(namespace, "stored", expect="Current")
    pipelines.wait_status("stored", op, deploymentStatus="Running")
    pid = op.pipeline_processes(uid)
    cluster.plane.restart_etcd(kill=True)  # same data: what a crash and restart of the store looks like
    st = pipelines.a_later_pass("stored", op, timeout=90)
    assert st["deploymentStatus"] == "Running" and op.pipeline_processes(uid) == pid
    pipelines.patch_spec("stored", {"desiredStatus": "Stopped", "stopMode": "Force"})
    pipelines.wait_status("stored", op, deploymentStatus="Stopped", timeout=90)
    op.assert_alive()
    assert "Traceback" not in op.log()
