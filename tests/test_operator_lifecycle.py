"""The operator end to end on the real API server, with real pipeline processes (local backend)."""

from __future__ import annotations

import json
import signal
import urllib.request

import pytest

from pipeline_operator.backends.local import LocalBackend
from pipeline_operator.identity import PipelineKey

from .operator_harness import sequence, wait_for

pytestmark = pytest.mark.apiserver

SQL = "CREATE TABLE orders (id BIGINT NOT NULL, amount DECIMAL(10, 2));\n" \
      "CREATE MATERIALIZED VIEW total AS SELECT SUM(amount) AS total FROM orders;"
FAST_PIPELINE = [{"name": "PIPELINE_INIT_SECONDS", "value": "0.5"},
                 {"name": "PIPELINE_REPLAY_SECONDS", "value": "1.5"},
                 {"name": "PIPELINE_SUSPEND_SECONDS", "value": "0.3"}]


def spec(**extra) -> dict:
    return {"desiredStatus": "Provisioned", "program": {"sql": SQL}, "deployment": {"env": FAST_PIPELINE}, **extra}


def debug_fail(op, namespace: str, name: str, uid: str, mode: str) -> None:
    """``POST /debug/fail?mode=`` to the pipeline process, with the control token the local backend
    gave it (the operator under test runs with ``--pipeline-debug-routes``)."""
    folder = LocalBackend(op.state_dir).folder(PipelineKey(namespace, name, uid))
    port, token = int((folder / "port").read_text()), (folder / "token").read_text()
    urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/debug/fail?mode={mode}", method="POST",
                                                  headers={"Authorization": f"Bearer {token}"}), timeout=30)


def status_of(op, uid: str) -> dict:
    """Ask the pipeline process itself, through the port the backend recorded."""
    folder = next((op.state_dir / "pipelines").glob(f"*__{uid}"))
    port = int((folder / "port").read_text())
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as r:
        return json.load(r)


def test_full_lifecycle_with_real_processes(operators, pipelines, namespace, kstatus):
    op = operators(namespace)
    created = pipelines.create("orders", spec())
    uid = created["metadata"]["uid"]
    kstatus.track(namespace, "orders")

    st = pipelines.wait_status("orders", op, deploymentStatus="Running", programStatus="Success")
    assert st["storageStatus"] == "InUse" and st["observedGeneration"] == 1
    assert len(op.pipeline_processes(uid)) == 1
    assert status_of(op, uid)["runtime_status"] == "Running"
    conditions = {c["type"]: c["status"] for c in st["conditions"]}
    assert conditions == {"Ready": "True", "Reconciling": "False", "Stalled": "False"}

    pipelines.patch_spec("orders", {"runtimeDesiredStatus": "Paused"})
    pipelines.wait_status("orders", op, deploymentStatus="Paused", timeout=10)
    assert status_of(op, uid)["runtime_desired_status"] == "Paused"
    pipelines.patch_spec("orders", {"runtimeDesiredStatus": "Running"})
    pipelines.wait_status("orders", op, deploymentStatus="Running", timeout=10)

    # Graceful stop: suspend (checkpoint), then Stopping, then Stopped; storage kept.
    pipelines.patch_spec("orders", {"desiredStatus": "Stopped"})
    st = pipelines.wait_status("orders", op, deploymentStatus="Stopped", deploymentResourcesDesiredStatus="Stopped")
    assert st["storageStatus"] == "InUse" and "deploymentError" not in st
    checkpoints = st["storageStatusDetails"]["checkpoints"]
    assert len(checkpoints) == 1
    folder = next((op.state_dir / "pipelines").glob(f"*__{uid}"))
    assert (folder / "storage" / "checkpoints" / f"{checkpoints[0]['uuid']}.json").exists()
    wait_for("the process to be gone", lambda: not op.pipeline_processes(uid), 10, operator=op)
    runtime = sequence(st["history"], "deploymentResourcesStatus", "deploymentRuntimeStatus",
                       "deploymentRuntimeDesiredStatus")
    assert runtime[-3:] == [("Provisioned", "Suspended", "Suspended"), ("Stopping", None, None),
                            ("Stopped", None, None)]

    # Restart: the pipeline replays from its checkpoint.
    pipelines.patch_spec("orders", {"desiredStatus": "Provisioned"})
    st = pipelines.wait_status("orders", op, deploymentStatus="Running")
    assert ("Provisioned", "Replaying") in sequence(st["history"], "deploymentResourcesStatus",
                                                    "deploymentRuntimeStatus")

    # Force stop, then clear storage: Cleared and the directory is gone.
    pipelines.patch_spec("orders", {"desiredStatus": "Stopped", "stopMode": "Force"})
    pipelines.wait_status("orders", op, deploymentStatus="Stopped")
    pipelines.annotate("orders", "dataflow.dev/clear-storage", "now")
    st = pipelines.wait_status("orders", op, storageStatus="Cleared")
    assert st["handledActions"]["clearStorage"] == {"value": "now", "outcome": "Applied", "message": "Clearing storage"}
    assert not (folder / "storage").exists()
    storage = sequence(st["history"], "storageStatus")
    assert storage[-3:] == [("InUse",), ("Clearing",), ("Cleared",)]
    kstatus.track(namespace, "orders", expect="Current")


def test_clear_storage_is_refused_while_running(operators, pipelines, namespace, kstatus):
    op = operators(namespace)
    pipelines.create("busy", spec())
    pipelines.wait_status("busy", op, deploymentStatus="Running")
    pipelines.annotate("busy", "dataflow.dev/clear-storage", "please")
    st = wait_for("the refusal", lambda: (pipelines.status("busy").get("handledActions") or {}).get("clearStorage"),
                  operator=op)
    assert st["outcome"] == "Refused" and "StorageStatusImmutableUnlessStopped" in st["message"]
    assert pipelines.status("busy")["storageStatus"] == "InUse"
    kstatus.track(namespace, "busy", expect="Current")


def test_sql_error_never_provisions_until_the_program_is_fixed(operators, pipelines, namespace, kstatus):
    op = operators(namespace)
    pipelines.create("broken", spec(program={"sql": "CREATE TABLE t (x INT);\nCREATE VIEW v AS SELEC FROM t;"}))
    kstatus.track(namespace, "broken")
    st = pipelines.wait_status("broken", op, programStatus="SqlError", deploymentResourcesDesiredStatus="Stopped")
    message = st["programError"]["sql_compilation"]["messages"][0]
    assert message["start_line_number"] == 2 and message["start_column"] >= 1
    assert st["deploymentError"]["errorCode"] == "StartFailedDueToFailedCompilation"
    assert st["deploymentResourcesStatus"] == "Stopped"
    stalled = next(c for c in st["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "StartFailedDueToFailedCompilation"
    # The operator looks again (a description-only generation, which dismisses nothing) and still
    # neither provisions nor forgets the error.
    st = pipelines.a_later_pass("broken", op)
    assert st["deploymentResourcesStatus"] == "Stopped" and st["observedGeneration"] == 2
    assert st["deploymentError"]["errorCode"] == "StartFailedDueToFailedCompilation"
    assert "Provisioning" not in {h["deploymentResourcesStatus"] for h in st["history"]}
    from .kstatus import compute
    assert compute(pipelines.get("broken"))[0] == "Failed"

    pipelines.patch_spec("broken", {"program": {"sql": SQL}})  # a new generation dismisses the error
    st = pipelines.wait_status("broken", op, deploymentStatus="Running")
    assert "deploymentError" not in st and st["observedGeneration"] == 3


@pytest.mark.parametrize(("mode", "code"), [("exit", "RunnerCheckError"), ("panic", "WorkerPanic")])
def test_a_failing_pipeline_stops_with_an_error_and_stays_stopped_until_dismissed(
        operators, pipelines, namespace, kstatus, mode, code):
    op = operators(namespace)
    uid = pipelines.create("fragile", spec())["metadata"]["uid"]
    kstatus.track(namespace, "fragile")
    pipelines.wait_status("fragile", op, deploymentStatus="Running")
    debug_fail(op, namespace, "fragile", uid, mode)
    st = pipelines.wait_status("fragile", op, deploymentStatus="Stopped")
    assert st["deploymentError"]["errorCode"] == code
    assert st["deploymentResourcesDesiredStatus"] == "Stopped"
    assert ("Stopping", True) in sequence(st["history"], "deploymentResourcesStatus", "deploymentHasError")
    assert {c["type"]: c["status"] for c in st["conditions"]}["Stalled"] == "True"
    # No restart while the error holds: the operator looks again (a description-only generation,
    # which dismisses nothing) and leaves it Stopped, with the error and no process.
    st = pipelines.a_later_pass("fragile", op)
    assert st["deploymentStatus"] == "Stopped" and st["deploymentError"]["errorCode"] == code
    assert not op.pipeline_processes(uid)

    pipelines.annotate("fragile", "dataflow.dev/dismiss-error", "1")
    st = wait_for("the dismissal", lambda: (s := pipelines.status("fragile")).get("handledActions", {}).get(
        "dismissError", {}).get("value") == "1" and s, 30, operator=op)
    # Dismissing starts nothing (Feldera): the system set the desired status to Stopped.
    assert "deploymentError" not in st and st["handledActions"]["dismissError"]["outcome"] == "Applied"
    assert st["deploymentStatus"] == "Stopped" and st["deploymentResourcesDesiredStatus"] == "Stopped"
    assert {c["type"]: c["reason"] for c in st["conditions"]}["Stalled"] == "StoppedBySystem"
    pipelines.annotate("fragile", "dataflow.dev/start", "1")
    st = pipelines.wait_status("fragile", op, deploymentStatus="Running")
    assert st["handledActions"]["start"]["outcome"] == "Applied"
    assert len(op.pipeline_processes(uid)) == 1


def test_provisioning_timeout_stops_with_an_error_naming_the_cause(operators, pipelines, namespace, kstatus):
    op = operators(namespace)
    env = [{"name": "PIPELINE_BIND_DELAY_SECONDS", "value": "60"}]
    pipelines.create("slow", spec(deployment={"env": env, "provisioningTimeoutSeconds": 2}))
    kstatus.track(namespace, "slow")
    st = pipelines.wait_status("slow", op, deploymentStatus="Stopped", deploymentResourcesDesiredStatus="Stopped")
    error = st["deploymentError"]
    assert error["errorCode"] == "AutomatonProvisioningTimeout"
    assert "2s" in error["message"] and "process starting" in error["message"]


def test_program_change_while_running_is_held_until_stopped(operators, pipelines, namespace, kstatus):
    op = operators(namespace)
    pipelines.create("evolving", spec())
    kstatus.track(namespace, "evolving")
    first = pipelines.wait_status("evolving", op, deploymentStatus="Running")["programDigest"]
    new_sql = SQL + "\nCREATE VIEW big AS SELECT id FROM orders WHERE amount > 100;"
    pipelines.patch_spec("evolving", {"program": {"sql": new_sql}})
    st = wait_for("the held condition", lambda: (s := pipelines.status("evolving")).get("programChangeHeld") and s,
                  operator=op)
    reconciling = next(c for c in st["conditions"] if c["type"] == "Reconciling")
    assert reconciling["status"] == "True" and reconciling["reason"] == "ProgramChangeHeld"
    assert st["programDigest"] == first and st["deploymentStatus"] == "Running"
    from .kstatus import compute
    assert compute(pipelines.get("evolving"))[0] == "InProgress"
    pipelines.patch_spec("evolving", {"desiredStatus": "Stopped"})
    st = wait_for("the new program to be compiled once Stopped",
                  lambda: (s := pipelines.status("evolving")).get("programDigest") != first
                  and s.get("programStatus") == "Success" and s, operator=op)
    assert st["deploymentStatus"] == "Stopped" and "programChangeHeld" not in st
    assert ("Stopped", "Pending") in sequence(st["history"], "deploymentResourcesStatus", "programStatus")
    kstatus.track(namespace, "evolving", expect="Current")


def test_operator_killed_mid_provisioning_converges_with_exactly_one_process(
        operators, pipelines, namespace, kstatus, tmp_path):
    state = tmp_path / "shared-state"
    op = operators(namespace, state_dir=state, process=True)  # killed below
    env = [*FAST_PIPELINE, {"name": "PIPELINE_BIND_DELAY_SECONDS", "value": "3"}]
    uid = pipelines.create("phoenix", spec(deployment={"env": env}))["metadata"]["uid"]
    kstatus.track(namespace, "phoenix", expect="Current")
    pipelines.wait_status("phoenix", op, deploymentResourcesStatus="Provisioning")
    wait_for("the process to start", lambda: op.pipeline_processes(uid), 10, operator=op)
    op.kill()  # SIGKILL: no clean-up at all
    again = operators(namespace, state_dir=state)
    pipelines.wait_status("phoenix", again, deploymentStatus="Running")
    st = pipelines.a_later_pass("phoenix", again)  # it looked again since, and started no second process
    assert len(again.pipeline_processes(uid)) == 1
    assert st["deploymentStatus"] == "Running"


def test_clean_shutdown_leaves_pipelines_running_and_a_restart_adopts_them(
        operators, pipelines, namespace, kstatus, tmp_path):
    state = tmp_path / "shared-state"
    op = operators(namespace, state_dir=state)
    uid = pipelines.create("steady", spec())["metadata"]["uid"]
    kstatus.track(namespace, "steady", expect="Current")
    pipelines.wait_status("steady", op, deploymentStatus="Running")
    pids = op.pipeline_processes(uid)
    assert op.stop(signal.SIGTERM) == 0
    assert "pipeline-operator stopped" in op.log()
    assert op.pipeline_processes(uid) == pids
    again = operators(namespace, state_dir=state)
    st = pipelines.a_later_pass("steady", again)  # the new operator has decided about it: adopted, not replaced
    again.assert_alive()
    assert again.pipeline_processes(uid) == pids
    assert st["deploymentStatus"] == "Running" and "deploymentError" not in st


def annotations(obj: dict) -> set[str]:
    return set(obj["metadata"].get("annotations") or {})


def test_labels_and_foreign_annotations_cause_no_status_writes(operators, pipelines, namespace, kstatus):
    op = operators(namespace)
    pipelines.create("quiet", spec(desiredStatus="Stopped"))
    kstatus.track(namespace, "quiet", expect="Current")

    def settled() -> dict | None:  # compiled, and the conditions say there is nothing left to do
        obj = pipelines.get("quiet")
        st = obj.get("status") or {}
        conditions = {c["type"]: c["status"] for c in st.get("conditions", [])}
        done = st.get("programStatus") == "Success" and st.get("observedGeneration") == 1 \
            and conditions == {"Ready": "True", "Reconciling": "False", "Stalled": "False"}
        return obj if done else None
    before = wait_for("quiet to be settled", settled, operator=op)
    pipelines.cluster.kubectl("label", "pipeline", "quiet", "-n", namespace, "team=data")
    pipelines.annotate("quiet", "argocd.argoproj.io/tracking-id", "app:dataflow.dev/Pipeline:x/quiet")
    # The operator handles the object's events in order: once it has observed a later generation, it
    # has seen the label and the annotation. Every version stored before that generation is the
    # user's two: no status write, no annotation of the operator's (nor of Kopf's) in between.
    pipelines.a_later_pass("quiet", op)
    versions = pipelines.changes_since("quiet", before["metadata"]["resourceVersion"],
                                       until=lambda o: (o.get("status") or {}).get("observedGeneration") == 2)
    user_only = [o for o in versions if o["metadata"]["generation"] == 1]
    assert [((o["metadata"].get("labels") or {}).get("team"), "argocd.argoproj.io/tracking-id" in annotations(o))
            for o in user_only] == [("data", False), ("data", True)], [o["metadata"] for o in user_only]
    assert all(o["status"] == before["status"] for o in user_only)
    assert all(o["metadata"]["finalizers"] == ["dataflow.dev/finalizer"] for o in versions)
    # Kopf's bookkeeping annotations (under the operator's prefix) were set at creation, none since.
    assert not [k for k in annotations(before) if k.startswith("kopf.zalando.org")]
    allowed = annotations(before) | {"argocd.argoproj.io/tracking-id"}
    assert all(annotations(o) <= allowed for o in versions), [sorted(annotations(o) - allowed) for o in versions]


def test_approve_annotation_is_forwarded_when_awaiting_approval(operators, pipelines, namespace, kstatus):
    op = operators(namespace)
    env = [*FAST_PIPELINE, {"name": "PIPELINE_REQUIRE_APPROVAL", "value": "1"}]
    pipelines.create("gated", spec(deployment={"env": env}))
    kstatus.track(namespace, "gated", expect="Current")
    pipelines.wait_status("gated", op, deploymentStatus="AwaitingApproval")
    pipelines.annotate("gated", "dataflow.dev/approve", "go")
    st = pipelines.wait_status("gated", op, deploymentStatus="Running")
    assert st["handledActions"]["approve"]["outcome"] == "Applied"
    pipelines.annotate("gated", "dataflow.dev/approve", "again")
    refused = wait_for("the refusal",
                       lambda: (pipelines.status("gated")["handledActions"]["approve"]["value"] == "again")
                       and pipelines.status("gated")["handledActions"]["approve"], operator=op)
    assert refused["outcome"] == "Refused" and "not AwaitingApproval" in refused["message"]


def test_standby_is_activated_by_a_runtime_desired_status_change(operators, pipelines, namespace, kstatus):
    op = operators(namespace)
    # Feldera allows Standby only with a file storage backend that has sync configured.
    synced = {"storage": {"backend": {"name": "file", "config": {"sync": {"bucket": "s3://pipelines/standby"}}}}}
    pipelines.create("standby", spec(initialRuntimeStatus="Standby", runtimeConfig=synced))
    kstatus.track(namespace, "standby", expect="Current")
    st = pipelines.wait_status("standby", op, deploymentStatus="Standby")
    assert st["deploymentInitial"] == "Standby"
    pipelines.patch_spec("standby", {"runtimeDesiredStatus": "Paused"})
    pipelines.wait_status("standby", op, deploymentStatus="Paused", deploymentRuntimeDesiredStatus="Paused")


def test_local_backend_passes_only_pipeline_env_to_the_process(operators, pipelines, namespace, kstatus):
    op = operators(namespace)
    env = [*FAST_PIPELINE, {"name": "LD_PRELOAD", "value": "/tmp/evil.so"},
           {"name": "PYTHONPATH", "value": "/tmp/evil"}, {"name": "PIPELINE_COLOR", "value": "blue"}]
    uid = pipelines.create("sandboxed", spec(deployment={"env": env}))["metadata"]["uid"]
    kstatus.track(namespace, "sandboxed", expect="Current")
    pipelines.wait_status("sandboxed", op, deploymentStatus="Running")
    (pid,) = op.pipeline_processes(uid)
    environ = dict(item.split(b"=", 1) for item in open(f"/proc/{pid}/environ", "rb").read().split(b"\0") if item)
    assert environ[b"PIPELINE_COLOR"] == b"blue"
    assert b"LD_PRELOAD" not in environ and b"PYTHONPATH" not in environ and b"KUBECONFIG" not in environ
    assert "ignores the environment variables LD_PRELOAD, PYTHONPATH of deployment.env" in op.log()
