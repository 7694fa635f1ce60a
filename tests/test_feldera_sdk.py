"""Users' scripts: the unmodified Feldera SDK, in the sequences its users write, against the real
API server and real pipeline processes. Every refusal is checked for Feldera's HTTP status and
``error_code``."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import threading
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from feldera import FelderaClient, PipelineBuilder
from feldera.enums import BootstrapPolicy, PipelineFieldSelector, PipelineStatus
from feldera.rest.errors import FelderaAPIError
from feldera.rest.retry import RetryConfig
from feldera.runtime_config import RuntimeConfig

from pipeline_operator.backends.local import LocalBackend
from pipeline_operator.identity import PipelineKey

from .operator_harness import wait_for
from .test_api import call, feldera_client, grant, http_json, schema_validator_for_info
from .test_models import OPENAPI, schema_validator
from .test_operator_lifecycle import SQL

pytestmark = pytest.mark.apiserver

SQL_V2 = SQL + "\nCREATE VIEW big AS SELECT id FROM orders WHERE amount > 100;"


@pytest.fixture
def sdk(operators, cluster, namespace):
    """An operator, and Feldera's SDK as alice, who may do everything with pipelines in the namespace."""
    op = operators(namespace)
    grant(cluster, namespace, "alice", "get,list,watch,create,update,patch,delete")
    wait_for("the API", lambda: _ready(op.api_url), 30, operator=op)
    token = cluster.plane.users["alice"].token
    client = feldera_client(op.api_url, token, namespace, timeout=60,
                           retry_config=RetryConfig(max_retries=0))
    client.operator = op  # type: ignore[attr-defined]
    return client


def refusal(fn, *args, **kwargs) -> tuple[int, str]:
    with pytest.raises(FelderaAPIError) as err:
        fn(*args, **kwargs)
    return err.value.status_code, err.value.error_code


def status(client: FelderaClient, name: str):
    return client.get_pipeline(name, PipelineFieldSelector.STATUS)


def compiled(client: FelderaClient, name: str) -> bool:
    """The operator has seen the pipeline (created with kubectl) and compiled its program."""
    try:
        return status(client, name).program_status == "Success"
    except FelderaAPIError as err:
        if err.status_code == 404:  # not seen by the operator yet
            return False
        raise


def crash(client: FelderaClient, name: str) -> None:
    """Kill the pipeline's process (SIGKILL) and wait for the operator to stop it with an error."""
    op = client.operator  # type: ignore[attr-defined]
    uid = status(client, name).id
    pids = op.pipeline_processes(uid)
    assert pids, "the pipeline process should be running"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    wait_for("the crash to stop the pipeline with an error",
             lambda: (p := status(client, name)).deployment_status == "Stopped" and p.deployment_error,
             60, operator=op)


def test_create_start_pause_stop_start_runs_again(sdk, kstatus, namespace):
    pipeline = PipelineBuilder(sdk, "orders", sql=SQL).create_or_replace()
    kstatus.track(namespace, "orders")
    assert [t.name for t in pipeline.tables()] == ["orders"]
    assert "total" in [v.name for v in pipeline.views()]
    pipeline.start(timeout_s=60)
    assert pipeline.status() is PipelineStatus.RUNNING
    pipeline.pause(timeout_s=30)
    assert pipeline.status() is PipelineStatus.PAUSED
    pipeline.stop(force=True, timeout_s=60)
    # The earlier pause does not outlive the stop: the latest start decides (Feldera's /start).
    pipeline.start(timeout_s=60)
    assert pipeline.status() is PipelineStatus.RUNNING
    pipeline.stop(force=True, timeout_s=60)
    pipeline.start_paused(timeout_s=60)
    assert pipeline.status() is PipelineStatus.PAUSED
    pipeline.resume(timeout_s=30)
    assert pipeline.status() is PipelineStatus.RUNNING
    pipeline.stop(force=True, timeout_s=60)
    sdk.start_pipeline_as_paused("orders", timeout_s=60)  # after a resume, too
    assert pipeline.status() is PipelineStatus.PAUSED
    info = sdk.get_pipeline("orders", PipelineFieldSelector.ALL)
    assert info.program_code == SQL and info.program_info["schema"]["inputs"][0]["name"] == "orders"


def test_a_crashed_pipeline_starts_again_with_start_pipeline(sdk, kstatus, namespace):
    PipelineBuilder(sdk, "crashy", sql=SQL).create_or_replace()
    kstatus.track(namespace, "crashy")
    sdk.start_pipeline("crashy", timeout_s=60)
    crash(sdk, "crashy")
    p = status(sdk, "crashy")
    assert p.deployment_desired_status == "Stopped" and p.deployment_error["error_code"] == "RunnerCheckError"
    # start with the error undismissed is refused, as Feldera refuses it ...
    assert refusal(sdk.start_pipeline, "crashy", dismiss_error=False, wait=False) == \
        (400, "CannotStartWithUndismissedError")
    # ... and the SDK's own sequence (dismiss_error, then start?dismiss_error=false) works.
    assert sdk.start_pipeline("crashy", timeout_s=60) is PipelineStatus.RUNNING


def test_dismissing_the_error_of_a_crashed_pipeline_starts_nothing(sdk, kstatus, namespace, pipelines):
    PipelineBuilder(sdk, "stays", sql=SQL).create_or_replace()
    kstatus.track(namespace, "stays")
    sdk.start_pipeline("stays", timeout_s=60)
    crash(sdk, "stays")
    sdk.dismiss_error_pipeline("stays")
    p = status(sdk, "stays")  # /dismiss_error answers once the error is gone
    assert p.deployment_error is None and p.deployment_status == "Stopped"
    # The operator is alive and looking: a later change is acted on, and the pipeline is still Stopped.
    sdk.patch_pipeline("stays", description="still stopped")
    assert status(sdk, "stays").description == "still stopped"
    p = status(sdk, "stays")
    assert (p.deployment_status, p.deployment_desired_status) == ("Stopped", "Stopped")
    stalled = {c["type"]: c for c in pipelines.status("stays")["conditions"]}["Stalled"]
    assert (stalled["status"], stalled["reason"]) == ("True", "StoppedBySystem")


def test_an_edit_through_the_api_after_a_crash_starts_nothing(sdk, kstatus, namespace):
    PipelineBuilder(sdk, "edited", sql=SQL).create_or_replace()
    kstatus.track(namespace, "edited")
    sdk.start_pipeline("edited", timeout_s=60)
    crash(sdk, "edited")
    # Feldera: an edit leaves the desired status (Stopped, set by the system) and the error as they are.
    sdk.create_or_update_pipeline(_inner("edited", SQL_V2, runtime_config={"min_batch_size_records": 10},
                                         program_config={"profile": "dev"}))
    sdk.patch_pipeline("edited", sql=SQL)
    sdk.stop_pipeline("edited", force=True, timeout_s=30)  # a /stop keeps the error too
    sdk.patch_pipeline("edited", description="looked again")  # answered once the operator has looked again
    p = status(sdk, "edited")
    assert (p.deployment_status, p.deployment_desired_status) == ("Stopped", "Stopped")
    assert p.deployment_error["error_code"] == "RunnerCheckError" and p.program_version == 3
    assert not sdk.operator.pipeline_processes(p.id)  # type: ignore[attr-defined]
    # The SDK's create_or_replace (stop, clear, dismiss, then PUT) leaves it Stopped and without the error ...
    pipeline = PipelineBuilder(sdk, "edited", sql=SQL_V2).create_or_replace()
    p = status(sdk, "edited")
    assert (p.deployment_status, p.deployment_desired_status, p.deployment_error) == ("Stopped", "Stopped", None)
    # ... and a start starts it.
    pipeline.start(timeout_s=60)
    assert pipeline.status() is PipelineStatus.RUNNING


def test_refusals_answer_feldera_status_and_error_code(sdk, kstatus, namespace, pipelines, cluster):
    PipelineBuilder(sdk, "guarded", sql=SQL).create_or_replace()
    kstatus.track(namespace, "guarded")
    # A multihost pipeline is accepted, then its start fails as Feldera's community edition fails it.
    sdk.create_pipeline(_inner("multihost", SQL, runtime_config={"hosts": 2}))
    kstatus.track(namespace, "multihost")
    sdk.start_pipeline("multihost", wait=False)
    # Feldera's own checks of program_config (its RuntimeSelector).
    assert refusal(sdk.patch_pipeline, "guarded", program_config={"runtime_version": "latest"}) == \
        (400, "InvalidProgramConfig")
    assert refusal(sdk.pause_pipeline, "guarded") == (503, "PipelineInteractionNotDeployed")
    sdk.start_pipeline("guarded", timeout_s=60)
    assert refusal(sdk.start_pipeline_as_paused, "guarded", wait=False) == (400, "InitialImmutableUnlessStopped")
    assert refusal(sdk.start_pipeline, "guarded", bootstrap_policy=BootstrapPolicy.REJECT, wait=False) == \
        (400, "BootstrapPolicyImmutableUnlessStopped")
    assert refusal(sdk.clear_storage, "guarded") == (400, "StorageStatusImmutableUnlessStopped")
    assert refusal(sdk.delete_pipeline, "guarded") == (400, "DeleteRestrictedToFullyStopped")
    assert refusal(sdk.patch_pipeline, "guarded", sql=SQL_V2) == (400, "UpdateRestrictedToStopped")
    # A pipeline whose /status answers 503 is Unavailable: actions forwarded to it answer 503 too.
    _debug_fail(sdk, "guarded", "unavailable")
    wait_for("Unavailable", lambda: status(sdk, "guarded").deployment_status == "Unavailable", 30)
    assert status(sdk, "guarded").deployment_runtime_desired_status == "Unavailable"
    for action in (sdk.pause_pipeline, sdk.resume_pipeline, sdk.approve_pipeline, sdk.activate_pipeline):
        assert refusal(action, "guarded") == (503, "PipelineUnavailable"), action
    _debug_fail(sdk, "guarded", "available")
    wait_for("Running again", lambda: status(sdk, "guarded").deployment_status == "Running", 30)
    sdk.stop_pipeline("guarded", force=True, timeout_s=60)
    assert refusal(sdk.delete_pipeline, "guarded") == (400, "DeleteRestrictedToClearedStorage")
    p = wait_for("the multihost start to fail", lambda: (p := status(sdk, "multihost")).deployment_error and p, 30)
    assert (p.deployment_status, p.deployment_error["error_code"]) == ("Stopped", "RunnerProvisionError")
    assert "runtime_config.hosts is 2" in p.deployment_error["message"]
    # Storage in use: the settings its checkpoint depends on stay as they are (Feldera's list, each named) ...
    with pytest.raises(FelderaAPIError) as err:
        sdk.patch_pipeline("guarded", runtime_config={"workers": 2, "hosts": 2, "min_batch_size_records": 5})
    assert (err.value.status_code, err.value.error_code) == (400, "EditRestrictedToClearedStorage")
    assert err.value.details == {"not_allowed": ["`runtime_config.workers`", "`runtime_config.hosts`"]}
    # ... the others change.
    sdk.patch_pipeline("guarded", runtime_config={"min_batch_size_records": 5})
    assert sdk.get_pipeline("guarded", PipelineFieldSelector.ALL).runtime_config["min_batch_size_records"] == 5
    assert refusal(sdk.start_pipeline_as_standby, "guarded", wait=False) == (400, "InitialStandbyNotAllowed")
    # A program that does not compile.
    sdk.patch_pipeline("guarded", sql="CREATE TABLE broken (x INT")
    wait_for("SqlError", lambda: status(sdk, "guarded").program_status == "SqlError", 30)
    assert refusal(sdk.start_pipeline, "guarded", wait=False) == (400, "CannotStartWithCompilationError")
    # The raw API, for what the SDK does not send.
    token, url = cluster.plane.users["alice"].token, f"{sdk.config.url}/v0/pipelines/guarded"
    assert _code(call(f"{url}/start?initial=sideways", token, namespace, "POST")) == (405, "UnsupportedPipelineAction")
    assert _code(call(f"{url}/start?bootstrap_policy=maybe", token, namespace, "POST"))[0] == 400


def test_start_while_stopping_after_a_fatal_error_is_illegal(sdk, kstatus, namespace, pipelines, cluster):
    # A pipeline that takes a few seconds to stop, created as users of kubectl do (env in the spec).
    pipelines.create("slow", {"program": {"sql": SQL}, "deployment": {"env": [
        {"name": "PIPELINE_STOP_DELAY_SECONDS", "value": "4"}]}})
    kstatus.track(namespace, "slow")
    wait_for("compiled", lambda: compiled(sdk, "slow"), 30)
    sdk.start_pipeline("slow", timeout_s=60)
    _debug_fail(sdk, "slow", "panic")
    wait_for("Stopping", lambda: status(sdk, "slow").deployment_status == "Stopping", 30)
    # Feldera checks IllegalPipelineAction first (the SDK's default start dismisses first, which is refused).
    assert refusal(sdk.start_pipeline, "slow", wait=False, dismiss_error=False) == (400, "IllegalPipelineAction")
    assert refusal(sdk.start_pipeline, "slow", wait=False) == (400, "DismissErrorRestrictedToFullyStopped")
    assert refusal(sdk.dismiss_error_pipeline, "slow") == (400, "DismissErrorRestrictedToFullyStopped")
    wait_for("Stopped", lambda: status(sdk, "slow").deployment_status == "Stopped", 30)
    p = status(sdk, "slow")
    assert p.deployment_error["error_code"] == "WorkerPanic" and p.deployment_desired_status == "Stopped"
    # The refused start was not carried out later.
    sdk.patch_pipeline("slow", description="looked again")
    assert status(sdk, "slow").deployment_status == "Stopped"
    # Clearing storage of a Stopped pipeline with a latched error is allowed, as in Feldera.
    sdk.clear_storage("slow", timeout_s=30)
    assert status(sdk, "slow").storage_status == "Cleared"


def test_a_graceful_stop_is_desired_suspended_and_a_start_meanwhile_is_accepted(sdk, kstatus, namespace, cluster):
    # A pipeline that takes a few seconds to suspend (its checkpoint): Feldera's runtime_config.env and workers
    # reach the pipeline process (the local backend passes the PIPELINE_* names of the environment).
    sdk.create_pipeline(_inner("suspends", SQL, runtime_config={
        "workers": 3, "env": {"PIPELINE_SUSPEND_SECONDS": "3", "LD_PRELOAD": "/tmp/x.so"}}))
    kstatus.track(namespace, "suspends")
    sdk.start_pipeline("suspends", timeout_s=60)
    [pid] = sdk.operator.pipeline_processes(status(sdk, "suspends").id)  # type: ignore[attr-defined]
    argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
    environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    config = json.loads(open(argv[argv.index(b"--config-file") + 1].replace(b".yaml", b".json")).read())
    assert config["workers"] == 3 and b"TOKIO_WORKER_THREADS=3" in environ
    assert b"PIPELINE_SUSPEND_SECONDS=3" in environ and not [e for e in environ if e.startswith(b"LD_PRELOAD=")]
    request = urllib.request.Request(f"{sdk.config.url}/v0/pipelines/suspends/metrics", headers={
        "Authorization": f"Bearer {cluster.plane.users['alice'].token}", "Feldera-Tenant": namespace})
    with urllib.request.urlopen(request, timeout=10) as answer:
        metrics = answer.read().decode()
    assert "reference_pipeline_workers 3" in metrics  # the process took them
    sdk.stop_pipeline("suspends", force=False, wait=False)
    # Feldera: desired Provisioned while it suspends, its runtime desired status Suspended.
    p = wait_for("desired Suspended", lambda: (p := status(sdk, "suspends")).deployment_desired_status == "Suspended"
                 and p, 30)
    assert (p.deployment_status, p.deployment_resources_desired_status) == ("Running", "Provisioned")
    # A start meanwhile is accepted, as Feldera accepts it (the pipeline is desired Provisioned) ...
    sdk.start_pipeline("suspends", wait=False)
    # ... and changes nothing: the suspension goes on, then the pipeline stops and stays Stopped.
    p = wait_for("Stopped", lambda: (p := status(sdk, "suspends")).deployment_status == "Stopped" and p, 30)
    assert (p.deployment_desired_status, p.deployment_error) == ("Stopped", None)
    assert p.storage_status_details["checkpoints"], "the suspension wrote a checkpoint"
    # Each as Feldera's pipeline reports it: its CheckpointMetadata, the fingerprint a u64 with every digit, which
    # the Pipeline's status keeps as a string (the API server would round a number beyond int64).
    metadata = schema_validator("CheckpointMetadata")
    stored = json.loads(cluster.kubectl("get", "pipeline", "suspends", "-n", namespace, "-o", "json").stdout)[
        "status"]["storageStatusDetails"]["checkpoints"]
    for checkpoint, kept in zip(p.storage_status_details["checkpoints"], stored, strict=True):
        metadata.validate(checkpoint)
        assert set(checkpoint) == set(OPENAPI["components"]["schemas"]["CheckpointMetadata"]["properties"])
        assert kept["fingerprint"] == str(checkpoint["fingerprint"]) and 0 <= checkpoint["fingerprint"] < 2**64


def test_standby_then_activate(sdk, kstatus, namespace):
    synced = RuntimeConfig.from_dict({"storage": {"backend": {"name": "file", "config": {
        "sync": {"bucket": "s3://pipelines/standby", "provider": "Minio"}}}}})
    PipelineBuilder(sdk, "standby", sql=SQL, runtime_config=synced).create_or_replace()
    kstatus.track(namespace, "standby")
    sdk.start_pipeline_as_standby("standby", wait=False)
    wait_for("Standby", lambda: status(sdk, "standby").deployment_status == "Standby", 60)
    assert sdk.activate_pipeline("standby", timeout_s=60) is PipelineStatus.RUNNING
    # Activating a running pipeline is a no-op that answers at once, as Feldera's.
    assert sdk.activate_pipeline("standby", timeout_s=10) is PipelineStatus.RUNNING


def test_bootstrap_policy_on_start_and_approval(sdk, kstatus, namespace):
    pipeline = PipelineBuilder(sdk, "evolve", sql=SQL).create_or_replace()
    kstatus.track(namespace, "evolve")
    pipeline.start(timeout_s=60)
    pipeline.stop(force=False, timeout_s=60)  # a checkpoint of the first program
    sdk.patch_pipeline("evolve", sql=SQL_V2)
    sdk._wait_for_compilation("evolve", timeout_s=60)
    # await_approval (Feldera's default): the pipeline waits for an approval.
    assert sdk.start_pipeline("evolve", timeout_s=60) is PipelineStatus.AWAITINGAPPROVAL
    assert status(sdk, "evolve").deployment_runtime_status_details["approval_diff"]
    sdk.approve_pipeline("evolve")
    pipeline.wait_for_status(PipelineStatus.RUNNING, timeout=60)
    pipeline.stop(force=False, timeout_s=60)  # a checkpoint of the second program
    sdk.patch_pipeline("evolve", sql=SQL)
    sdk._wait_for_compilation("evolve", timeout_s=60)
    # reject: the start fails with the pipeline's BootstrapRejected, and the system stops it.
    with pytest.raises(RuntimeError):
        pipeline.start(bootstrap_policy=BootstrapPolicy.REJECT, timeout_s=60)
    assert status(sdk, "evolve").deployment_error["error_code"] == "BootstrapRejected"
    # allow: it bootstraps without waiting; silently (Feldera's silent_bootstrap), which is stored, read back,
    # handed to the pipeline, and part of the bootstrap configuration a start cannot change while it runs.
    assert sdk.start_pipeline("evolve", bootstrap_policy=BootstrapPolicy.ALLOW, silent_bootstrap=True,
                              timeout_s=60) is PipelineStatus.RUNNING
    p = status(sdk, "evolve")
    assert (p.bootstrap_policy, p.silent_bootstrap) == ("allow", True)
    op = sdk.operator  # type: ignore[attr-defined]
    assert [b"--silent-bootstrap" in open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
            for pid in op.pipeline_processes(p.id)] == [True]
    assert refusal(sdk.start_pipeline, "evolve", bootstrap_policy=BootstrapPolicy.ALLOW, wait=False) == \
        (400, "BootstrapPolicyImmutableUnlessStopped")
    sdk.start_pipeline("evolve", bootstrap_policy=BootstrapPolicy.ALLOW, silent_bootstrap=True, wait=False)
    pipeline.stop(force=True, timeout_s=60)
    p = status(sdk, "evolve")
    assert (p.bootstrap_policy, p.silent_bootstrap) == (None, False)


def test_pipeline_crud_through_the_api(sdk, kstatus, namespace, cluster, pipelines):
    created = sdk.create_pipeline(_inner("crud", SQL), wait=True)
    assert created.program_status == "Success"  # (not tracked by kstatus: the test deletes it)
    full = call(f"{sdk.config.url}/v0/pipelines/crud", cluster.plane.users["alice"].token, namespace)[1]
    schema_validator_for_info().validate(full)
    for selector in ("status", "all"):
        listed = call(f"{sdk.config.url}/v0/pipelines?selector={selector}", cluster.plane.users["alice"].token,
                      namespace)[1]
        for item in listed:
            schema_validator_for_info().validate(item)
    assert ("program_code" in listed[0]) and ("program_code" not in call(
        f"{sdk.config.url}/v0/pipelines?selector=status", cluster.plane.users["alice"].token, namespace)[1][0])
    assert refusal(sdk.create_pipeline, _inner("crud", SQL)) == (409, "DuplicateName")
    # Names: Feldera's rules, in its order, then Kubernetes' (a Feldera name no Kubernetes object can have).
    assert refusal(sdk.create_pipeline, _inner("", SQL)) == (400, "EmptyName")
    assert refusal(sdk.create_pipeline, _inner("a" * 101, SQL)) == (400, "TooLongName")
    assert refusal(sdk.create_pipeline, _inner("no spaces", SQL)) == (400, "NameDoesNotMatchPattern")
    with pytest.raises(FelderaAPIError) as err:
        sdk.create_pipeline(_inner("Bad_Name", SQL))
    assert (err.value.status_code, err.value.error_code) == (400, "NameDoesNotMatchPattern")
    assert "Kubernetes" in err.value.message
    longest = "l" + "o" * 98 + "g"  # Feldera's maximum, 100: a Kubernetes name too
    assert sdk.create_pipeline(_inner(longest, SQL), wait=False)
    sdk.delete_pipeline(longest)
    # Client metadata: the description's bound (a Kubernetes object's size), Feldera's rules for tags.
    assert refusal(sdk.patch_pipeline, "crud", description="d" * 4097) == (400, "TooLongDescription")
    url, token = f"{sdk.config.url}/v0/pipelines/crud", cluster.plane.users["alice"].token
    for tags, code in ((["t"] * 51, "TooManyTags"), (["x" * 51], "InvalidTag"), (["no*star"], "InvalidTag")):
        answer = http_json(url, "PATCH", {"Authorization": f"Bearer {token}", "Feldera-Tenant": namespace,
                                          "Content-Type": "application/json"}, json.dumps({"tags": tags}).encode())
        assert (answer[0], answer[1]["error_code"]) == (400, code), answer
    assert (created.version, created.program_version) == (1, 1)
    sdk.start_pipeline("crud", timeout_s=60)
    sdk.stop_pipeline("crud", force=True, timeout_s=60)
    assert status(sdk, "crud").version == 1  # a start and a stop edit nothing (Feldera's version)
    # A write answers Feldera's PipelineInfo: GET's fields without the bootstrap configuration.
    headers = {"Authorization": f"Bearer {token}", "Feldera-Tenant": namespace, "Content-Type": "application/json"}
    other = f"{sdk.config.url}/v0/pipelines/written"
    written = [http_json(other, "PUT", headers, json.dumps({
                   "name": "written", "description": "", "runtime_config": {}, "program_code": SQL, "udf_rust": "",
                   "udf_toml": "", "program_config": {}}).encode()),
               http_json(other, "PATCH", headers, json.dumps({"description": "checked"}).encode())]
    assert [code for code, _ in written] == [201, 200]
    for _, body in written:
        schema_validator("PipelineInfo").validate(body)
    sdk.delete_pipeline("written")
    sdk.patch_pipeline("crud", sql=SQL_V2, description="two views")
    after = sdk._wait_for_compilation("crud", timeout_s=60)
    assert after.program_code == SQL_V2 and after.description == "two views" and after.program_version == 2
    assert sorted(v.name for v in after.views) == sorted(["error_view", "total", "big"])
    assert after.version == 2
    # udf_rust, udf_toml and program_config are the program too: each change is a new program, compiled again.
    sdk.patch_pipeline("crud", udf_toml="[dependencies]\n")
    sdk._wait_for_compilation("crud", expected_program_version=3, timeout_s=60)
    sdk.patch_pipeline("crud", program_config={"profile": "dev"})
    after = sdk._wait_for_compilation("crud", expected_program_version=4, timeout_s=60)
    assert (after.version, after.udf_toml, after.program_config["profile"]) == (4, "[dependencies]\n", "dev")
    compiles = [e["program_status"] for e in sdk.get_pipeline_events("crud")].count("CompilingSql")
    assert compiles == 4, sdk.get_pipeline_events("crud")
    managed = json.loads(cluster.kubectl("get", "pipeline", "crud", "-n", namespace, "-o", "json",
                                         "--show-managed-fields").stdout)["metadata"]["managedFields"]
    api = [m for m in managed if m["manager"] == "pipeline-operator-api" and m["operation"] == "Apply"]
    assert api and "f:sql" in json.dumps(api[0]["fieldsV1"])
    sdk.clear_storage("crud")  # it ran: its storage is in use
    sdk.delete_pipeline("crud")
    assert refusal(sdk.get_pipeline, "crud", PipelineFieldSelector.STATUS) == (404, "UnknownPipelineName")
    assert json.loads(cluster.kubectl("get", "pipelines", "-n", namespace, "-o", "json").stdout)["items"] == []


def test_list_order_platform_version_and_deployment_id_as_felderas(sdk, kstatus, namespace, cluster):
    """As Feldera's: the list in the order the pipelines were created (not by name); ``platform_version`` the
    Feldera version ``/v0/config`` names; ``deployment_id`` a new UUIDv7 for each deployment, the same from its
    start until Stopped (a pause keeps it) and null while Stopped."""
    sdk.create_pipeline(_inner("zeta", SQL), wait=False)
    kstatus.track(namespace, "zeta")
    meta = json.loads(cluster.kubectl("get", "pipeline", "zeta", "-n", namespace, "-o", "json").stdout)["metadata"]
    first = dt.datetime.fromisoformat(meta["creationTimestamp"].replace("Z", "+00:00"))
    wait_for("the next second", lambda: dt.datetime.now(dt.UTC).replace(microsecond=0) > first, 5)
    sdk.create_pipeline(_inner("alpha", SQL), wait=True)
    kstatus.track(namespace, "alpha")
    assert [p.name for p in sdk.pipelines()] == ["zeta", "alpha"]
    token = cluster.plane.users["alice"].token
    assert [p["name"] for p in call(f"{sdk.config.url}/v0/pipelines?selector=status", token, namespace)[1]] == [
        "zeta", "alpha"]

    info = status(sdk, "alpha")
    assert info.platform_version == call(f"{sdk.config.url}/v0/config", token)[1]["version"] == "0.306.0"
    assert info.deployment_id is None
    sdk.start_pipeline("alpha", timeout_s=60)
    deployed = status(sdk, "alpha").deployment_id
    assert deployed is not None and uuid.UUID(deployed).version == 7
    # The pipeline is started with that id, as Feldera's runner passes it (--deployment-id).
    (pid,) = sdk.operator.pipeline_processes(status(sdk, "alpha").id)
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert argv[argv.index(b"--deployment-id") + 1].decode() == deployed
    sdk.pause_pipeline("alpha", timeout_s=30)
    assert status(sdk, "alpha").deployment_id == deployed
    sdk.stop_pipeline("alpha", force=True, timeout_s=60)
    assert status(sdk, "alpha").deployment_id is None
    sdk.start_pipeline("alpha", timeout_s=60)
    again = status(sdk, "alpha").deployment_id
    assert again is not None and uuid.UUID(again).version == 7 and uuid.UUID(again) > uuid.UUID(deployed)
    sdk.stop_pipeline("alpha", force=True, timeout_s=60)


def test_put_does_not_overwrite_a_field_another_manager_owns(sdk, kstatus, namespace, pipelines, cluster):
    # Declared with kubectl apply (as GitOps tools do): kubectl owns spec.program.sql.
    manifest = {"apiVersion": "dataflow.dev/v1alpha1", "kind": "Pipeline",
                "metadata": {"name": "gitops", "namespace": namespace}, "spec": {"program": {"sql": SQL}}}
    cluster.kubectl("apply", "--server-side", "--field-manager=argocd-controller", "-f", "-",
                    input=json.dumps(manifest))
    kstatus.track(namespace, "gitops")
    wait_for("compiled", lambda: compiled(sdk, "gitops"), 30)
    with pytest.raises(FelderaAPIError) as err:
        PipelineBuilder(sdk, "gitops", sql=SQL_V2).create_or_replace()
    assert (err.value.status_code, err.value.error_code) == (409, "FieldManagerConflict")
    assert "argocd-controller" in err.value.message
    assert pipelines.get("gitops")["spec"]["program"]["sql"] == SQL
    # The same program (no change of that field) is accepted.
    PipelineBuilder(sdk, "gitops", sql=SQL).create_or_replace()


def test_a_sql_error_shows_the_compilers_message_and_snippet(sdk, kstatus, namespace):
    """Feldera's SDK renders a SQL error as Feldera's compiler writes it: its type, message and the snippet of
    the offending lines (it reads ``snippet`` from every message)."""
    bad = "CREATE TABLE orders (id BIGINT NOT NULL,\n  amount DECIMAL(10, 2) PRIMARY\n);"
    with pytest.raises(RuntimeError) as err:
        PipelineBuilder(sdk, "broken", sql=bad).create_or_replace()
    kstatus.track(namespace, "broken")
    assert str(err.value) == ("Pipeline broken failed to compile:\nSyntaxError\nExpecting )\nCode snippet:\n"
                              "    2|  amount DECIMAL(10, 2) PRIMARY\n"  # PRIMARY: columns 25 to 31
                              + " " * (6 + 24) + "^" * len("PRIMARY") + "\n"
                              + "    3|);\n")
    with pytest.raises(RuntimeError, match=r"(?s)Code snippet:\n    1\|SELECT 1;\n      \^{8}\n$"):
        sdk.create_pipeline(_inner("selects", "SELECT 1;"))
    kstatus.track(namespace, "selects")


PLATFORM = OPENAPI  # Feldera c44a2456a's document


class _FlakyProxy(ThreadingHTTPServer):
    """A proxy in front of the API that answers the first request for ``flaky_path`` with a 502, as a load
    balancer does while a backend restarts, and passes every other request on; it keeps what it answered."""

    def __init__(self, upstream: str, flaky_path: str) -> None:
        self.upstream, self.flaky_path = upstream, flaky_path
        self.answered: list[tuple[str, int, bytes]] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _ProxyHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ProxyHandler(BaseHTTPRequestHandler):
    server: _FlakyProxy

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        with self.server.lock:
            first = self.path == self.server.flaky_path and not any(
                path == self.path for path, _, _ in self.server.answered)
        if first:
            status, body, kind = 502, b"<html>502 Bad Gateway</html>", "text/html"
        else:
            headers = {k: v for k, v in self.headers.items() if k.lower() in ("authorization", "feldera-tenant")}
            status, raw = http_json(self.server.upstream + self.path, headers=headers)
            body, kind = (raw if isinstance(raw, bytes) else json.dumps(raw).encode()), "application/json"
        with self.server.lock:
            self.server.answered.append((self.path, status, body))
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_config_and_cluster_health_answer_felderas_schemas(sdk, namespace, cluster, caplog):
    """``/v0/config`` answers Feldera's Configuration (every key of its schema, the Feldera version the SDK
    expects: no warning of a mismatch); the cluster's health and events answer Feldera's shapes."""
    token = cluster.plane.users["alice"].token
    code, config = call(f"{sdk.config.url}/v0/config", token)
    assert code == 200
    schema_validator("Configuration", PLATFORM).validate(config)
    assert set(config) == set(PLATFORM["components"]["schemas"]["Configuration"]["properties"])
    assert (config["version"], config["edition"]) == ("0.306.0", "Open source")
    assert config["revision"].startswith("c44a2456a") and config["build_source"].startswith("pipeline-operator ")
    assert "pipeline-operator" in config["build_info"]["cargo_dependencies"]
    with caplog.at_level(logging.WARNING, logger="feldera.rest.feldera_client"):
        feldera_client(sdk.config.url, token, namespace)
    assert not [r for r in caplog.records if "incompatibilities" in r.getMessage()]

    # The cluster's health: healthy once the operator is ready and the API server answers it.
    code, health = call(f"{sdk.config.url}/v0/cluster_healthz", token)
    assert code == 200, health
    schema_validator("HealthStatus", PLATFORM).validate(health)
    assert health["all_healthy"] and all(health[s]["healthy"] for s in ("api", "compiler", "runner"))
    assert "Kubernetes API server" in health["runner"]["message"]
    events = sdk.get_cluster_events()
    assert events and events[0]["all_healthy"]
    for event in events:
        schema_validator("ClusterMonitorEventSelectedInfo", PLATFORM).validate(event)
        assert "api_self_info" not in event
    latest = sdk.get_cluster_event("latest", selector="all")
    schema_validator("ClusterMonitorEventSelectedInfo", PLATFORM).validate(latest)
    assert latest["id"] == events[0]["id"] and latest["runner_self_info"] == health["runner"]["message"]
    assert sdk.get_cluster_event(events[-1]["id"]) == events[-1]
    assert refusal(sdk.get_cluster_event, str(uuid.uuid4())) == (404, "UnknownClusterMonitorEvent")
    assert refusal(sdk.get_cluster_event, "not-a-uuid") == (400, "InvalidUuidParam")
    assert call(f"{sdk.config.url}/v0/cluster_healthz")[0] == 401  # as every route, for a known user only


def test_after_a_502_the_sdk_asks_the_clusters_health_and_retries_at_once(sdk, namespace, cluster, caplog):
    """Behind a proxy that answers 502 once, Feldera's SDK asks ``/v0/cluster_healthz``, hears that all is
    healthy and retries at once, instead of backing off (90 s by default, here 5 s) as from an unhealthy
    cluster."""
    token = cluster.plane.users["alice"].token
    proxy = _FlakyProxy(sdk.config.url, "/v0/pipelines/broken?selector=status")
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        behind = feldera_client(proxy.url, token, namespace, retry_config=RetryConfig(unhealthy_backoff=5))
        with pytest.raises(FelderaAPIError) as err, caplog.at_level(logging.INFO):
            behind.get_pipeline("broken", PipelineFieldSelector.STATUS)
    finally:
        proxy.shutdown()
        proxy.server_close()
    assert err.value.status_code == 404  # after the retry, the API's own answer: no such pipeline
    path = [(p, status) for p, status, _ in proxy.answered if p != "/v0/config"]
    assert path == [("/v0/pipelines/broken?selector=status", 502), ("/v0/cluster_healthz", 200),
                    ("/v0/pipelines/broken?selector=status", 404)], path
    assert json.loads(proxy.answered[-2][2])["all_healthy"] is True
    assert any("treating 502 as spurious" in r.getMessage() for r in caplog.records)


def _ready(url: str) -> bool:
    try:
        return call(f"{url}/readyz")[0] == 200
    except OSError:
        return False


def _inner(name: str, sql: str, runtime_config: dict | None = None, program_config: dict | None = None):
    from feldera.rest.pipeline import Pipeline as InnerPipeline
    return InnerPipeline(name, sql=sql, udf_rust="", udf_toml="", program_config=program_config or {},
                         runtime_config=runtime_config or {})


def _code(answer: tuple[int, dict]) -> tuple[int, str]:
    return answer[0], answer[1].get("error_code")


def _debug_fail(client: FelderaClient, name: str, mode: str) -> None:
    """``POST /debug/fail?mode=`` to the pipeline process, with the control token the local backend
    keeps in the pipeline's folder (the operator under test serves the debug routes)."""
    op = client.operator  # type: ignore[attr-defined]
    p = status(client, name)
    folder = LocalBackend(op.state_dir).folder(PipelineKey(client.http.headers["Feldera-Tenant"], name, p.id))
    port, token = int((folder / "port").read_text()), (folder / "token").read_text()
    code, body = call(f"http://127.0.0.1:{port}/debug/fail?mode={mode}", token, method="POST")
    assert code == 202, (code, body)
