"""The API server goes away for a while: the operator keeps running, leaves the pipelines' compute
alone, and catches up when the API server is back (the real kube-apiserver, stopped and started
again on the same address with the same certificates and tokens)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from .conftest import _kill_pipeline_processes_under
from .operator_harness import wait_for
from .test_operator_lifecycle import spec

pytestmark = pytest.mark.apiserver
OUTAGE = 25.0  # seconds without an API server (the 60 s outage is bench/chaos.py's)
CRD = Path(__file__).resolve().parent.parent / "crds" / "pipelines.dataflow.dev.yaml"


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


def test_an_operator_started_before_the_api_server_serves_the_crd_waits_for_it(binaries, tmp_path):
    """Kopf looks up the served resources once, as it starts: an operator started while the API server
    does not serve the CRD (yet: a kube-apiserver that has just started) must not run without ever
    watching Pipelines. A control plane of its own, without the CRD at first, stands for that moment."""
    from pipeline_operator_dev import controlplane

    from .conftest import Cluster
    from .operator_harness import OperatorProcess, Pipelines
    plane = controlplane.ControlPlane(binaries).start()
    op = None
    try:
        cluster = Cluster(binaries, plane)
        plane.kubectl("create", "namespace", "early")
        op = OperatorProcess(cluster, "early", tmp_path / "state", []).start()
        # It has looked: it says it waits (or, as Kopf said before it waited, that it cannot serve them).
        wait_for("the operator to find the CRD not served",
                 lambda: any(m in op.log() for m in ("does not serve pipelines.dataflow.dev/v1alpha1",
                                                     "Unresolved resources cannot be served")), 30, operator=op)
        plane.kubectl("apply", "-f", str(CRD))
        controlplane.wait_established(plane.kubectl)
        Pipelines(cluster, "early").create("first", spec())
        Pipelines(cluster, "early").wait_status("first", op, deploymentStatus="Running", timeout=60)
        assert "the operator waits for it before watching Pipelines (is the CRD installed?)" in op.log()
        assert "Traceback" not in op.log()
    finally:
        if op is not None and op.running():
            op.stop()
        _kill_pipeline_processes_under(tmp_path)
        plane.stop()
