"""Feldera's command-line client ``fda``, unmodified (the release of the Feldera version the API matches,
built from crates.io by ``pipeline_operator_dev.fda``), through one pipeline's whole life against the real
operator (local backend) and the real API server: every command that applies to one pipeline exits 0 and
prints what Feldera's would.

``fda`` 0.306 sends its API key only over HTTPS and sends no ``Feldera-Tenant`` header: the operator serves
TLS here and, for a user who is not a service account (alice), works in its ``--api-default-namespace``.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline_operator_dev import fda as fda_build

from .conftest import _kill_pipeline_processes_under
from .operator_harness import InProcessOperator, Pipelines, wait_for
from .test_api import grant
from .test_api_hardening import self_signed
from .test_operator_lifecycle import FAST_PIPELINE, SQL

pytestmark = pytest.mark.apiserver

NAME = "orders"
FDA_TIMEOUT = 120.0


@pytest.fixture(scope="module")
def fda_binary() -> Path:
    """fda built from crates.io (cached with the control plane's binaries). Without cargo and without a
    cached build the test is skipped, except in CI, where it must run."""
    if not os.environ.get("FDA") and not fda_build.cached_path().exists() and not fda_build.cargo_available():
        if os.environ.get("CI"):
            pytest.fail("fda is not built and there is no cargo to build it (make test builds it first)")
        pytest.skip("no fda and no cargo to build it")
    return fda_build.ensure_fda()


class Fda:
    """``fda`` against one operator, as alice, over HTTPS."""

    def __init__(self, binary: Path, url: str, token: str, ca: Path) -> None:
        self.binary = binary
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("FELDERA_", "SENTRY_"))}
        self.env.update(FELDERA_HOST=url, FELDERA_API_KEY=token, FELDERA_HTTPS_TLS_CERT=str(ca), NO_COLOR="1")

    def __call__(self, *args: str, json_output: bool = False, fmt: str = "text", exit_code: int = 0,
                 stdin: str | None = None) -> Any:
        """Run one command (``stdin`` on its standard input); it must exit ``exit_code``. Its standard output
        (parsed with ``json_output``), or with an ``exit_code`` other than 0 its standard error."""
        cmd = [str(self.binary), "--format", "json" if json_output else fmt, *args]
        res = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=FDA_TIMEOUT,
                             input=stdin)
        assert res.returncode == exit_code, \
            f"fda {' '.join(args)} exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
        if exit_code:
            return res.stderr
        return json.loads(res.stdout) if json_output else res.stdout


@pytest.fixture(scope="module")
def life(crd_installed, fda_binary, tmp_path_factory) -> Iterator[tuple[Fda, InProcessOperator, Pipelines]]:
    """One operator (TLS, its default namespace a fresh one) and fda as alice, who may do everything with
    pipelines there."""
    cluster = crd_installed
    namespace = "fda-life"
    cluster.kubectl("create", "namespace", namespace)
    grant(cluster, namespace, "alice", "get,list,watch,create,update,patch,delete")
    folder = tmp_path_factory.mktemp("fda")
    cert, key = self_signed(folder)
    op = InProcessOperator(cluster, namespace, folder / "state", [
        "--api-tls-cert", str(cert), "--api-tls-key", str(key), "--api-default-namespace", namespace]).start()
    try:
        url = f"https://127.0.0.1:{op.api_port}"
        fda = Fda(fda_binary, url, cluster.plane.users["alice"].token, cert)
        yield fda, op, Pipelines(cluster, namespace)
    finally:
        op.stop()
        _kill_pipeline_processes_under(folder)


def test_fda_through_one_pipelines_life(life, tmp_path):
    fda, op, pipelines = life
    program = tmp_path / "program.sql"
    program.write_text(SQL)
    wait_for("the API over TLS", lambda: _answers(fda), 60, operator=op)

    # Create, and the program: its code, configuration and status.
    assert "Pipeline created successfully." in fda("create", NAME, str(program))
    assert fda("program", "get", NAME).strip() == SQL.strip()
    assert fda("program", "config", NAME, json_output=True)["profile"] == "optimized"
    assert "Success" in wait_for("the program to compile", lambda: _compiled(fda), 60, operator=op)
    # The runtime configuration: read, one key set (while Stopped), read again.
    assert fda("config", NAME, json_output=True)["workers"] == 8
    assert fda("set-config", NAME, "workers", "2", json_output=True)["workers"] == 2
    assert "Runtime config updated successfully." in fda("set-config", NAME, "max_buffering_delay_usecs", "1000")
    assert fda("config", NAME, json_output=True)["workers"] == 2
    pipelines.patch_spec(NAME, {"deployment": {"env": FAST_PIPELINE}})  # the reference pipeline, quick

    # Start, and what a running pipeline tells.
    assert "Pipeline started successfully." in fda("start", NAME)
    status = fda("status", NAME, json_output=True)
    assert (status["deployment_status"], status["program_status"], status["storage_status"]) == \
        ("Running", "Success", "InUse")
    assert [p["name"] for p in fda("pipelines", json_output=True)] == [NAME]
    assert NAME in fda("pipelines") and "Running" in fda("pipelines")
    stats = fda("stats", NAME, json_output=True)
    assert stats["global_metrics"]["state"] == "Running" and stats["inputs"] == []
    assert "process_resident_memory_bytes" in fda("metrics", NAME, fmt="prometheus")
    assert "storage_usage_bytes" in {m["key"] for m in fda("metrics", NAME, json_output=True)}
    assert "reference pipeline listening" in fda("logs", NAME)

    # Pause, resume, a checkpoint, a restart.
    assert "Pipeline paused successfully." in fda("pause", NAME)
    assert fda("status", NAME, json_output=True)["deployment_status"] == "Paused"
    assert "Pipeline resumed successfully." in fda("resume", NAME)
    assert "taken successfully." in fda("checkpoint", NAME)
    restarted = fda("restart", NAME)
    assert "Pipeline stop successful." in restarted and "Pipeline started successfully." in restarted

    # Its events, as Feldera's list and latest.
    events = fda("events", NAME, json_output=True)
    assert events and events[0]["deployment_resources_status"] == "Provisioned"
    latest = fda("event", NAME, "latest", "all", json_output=True)
    assert latest["event_id"] == events[0]["event_id"] and "checkpoints" in latest["storage_status_details"]
    assert "storage_status_details" not in fda("event", NAME, latest["event_id"], json_output=True)  # status only
    assert events[0]["event_id"] in fda("events", NAME)

    # Stop; a new program (and profile) while Stopped; its start waits for approval, as the checkpoint was
    # written by the old program; approved, it runs.
    assert "Pipeline stopped successfully." in fda("stop", NAME)
    assert fda("status", NAME, json_output=True)["deployment_status"] == "Stopped"
    assert "Pipeline deployment error dismissed successfully." in fda("dismiss-error", NAME)
    program.write_text(SQL + "\nCREATE VIEW big AS SELECT id FROM orders WHERE amount > 100;\n")
    assert "Program updated successfully." in fda("program", "set", NAME, str(program))
    assert "Program config updated successfully." in fda("program", "set-config", NAME, "--profile", "dev")
    assert fda("program", "config", NAME, json_output=True)["profile"] == "dev"
    assert "awaiting approval" in fda("start", NAME)
    assert fda("status", NAME, json_output=True)["deployment_status"] == "AwaitingApproval"
    # fda 0.306 expects 202 and a CheckpointResponse (Feldera's openapi.json says so), but Feldera's pipeline
    # answers /approve with 200 "Bootstrap approved", which Feldera's manager passes on, as the operator does:
    # against Feldera itself, `fda approve` approves, then exits 1 with this very message.
    assert 'Failed to approve pipeline changes: "Bootstrap approved"' in fda("approve", NAME, exit_code=1)
    wait_for("Running after the approval",
             lambda: fda("status", NAME, json_output=True)["deployment_status"] == "Running", 60, operator=op)
    assert "big" in {v["name"] for v in fda("status", NAME, json_output=True)["program_info"]["schema"]["outputs"]}
    assert "Pipeline stopped successfully." in fda("stop", NAME)

    # Clear, and the end: delete.
    assert "Pipeline cleared successfully." in fda("clear", NAME)
    assert fda("status", NAME, json_output=True)["storage_status"] == "Cleared"

    # The cluster: its events, the latest with everything.
    cluster_events = fda("cluster", "events", json_output=True)
    assert cluster_events and cluster_events[0]["all_healthy"] is True
    assert fda("cluster", "event", "latest", "all", json_output=True)["runner_status"] == "Healthy"

    assert "Pipeline deleted successfully." in fda("delete", NAME)
    assert fda("pipelines", json_output=True) == []


def test_fda_query_and_exec_reach_the_pipeline_over_the_websocket(life, tmp_path):
    """``fda query`` (and its alias ``exec``, with the SQL on its standard input) opens a WebSocket on the
    pipeline's ``/query``, sends its query and prints what comes back until the pipeline closes it: through
    the operator, the reference pipeline (run with its debug routes, as the operator under test runs it) echoes
    what reached it, which fda prints; a close with an error is fda's exit code 1."""
    fda, op, pipelines = life
    name = "adhoc"
    program = tmp_path / "program.sql"
    program.write_text(SQL)
    wait_for("the API over TLS", lambda: _answers(fda), 60, operator=op)
    assert "Pipeline created successfully." in fda("create", name, str(program))
    pipelines.patch_spec(name, {"deployment": {"env": FAST_PIPELINE}})
    wait_for("the program to compile", lambda: "Success" in fda("program", "status", name), 60, operator=op)
    try:
        assert "Pipeline started successfully." in fda("start", name)
        echo = json.loads(fda("query", name, "SELECT COUNT(*) FROM orders"))
        assert (echo["method"], echo["path"], echo["authorized"]) == ("GET", "/query", True)
        assert json.loads(echo["body"]) == {"sql": "SELECT COUNT(*) FROM orders", "format": "text"}
        echo = json.loads(fda("exec", name, "--stdin", stdin="SELECT 1;\n"))
        assert json.loads(echo["body"]) == {"sql": "SELECT 1;\n", "format": "text"}
        # Asked for Arrow IPC, fda takes a text message for the pipeline's error, and says so.
        assert '"path":"/query"' in fda("query", name, "SELECT 2", fmt="arrow_ipc", exit_code=1).replace(" ", "")
    finally:
        fda("stop", name)
        fda("clear", name)
        fda("delete", name)


def _answers(fda: Fda) -> bool:
    try:
        fda("pipelines")
    except AssertionError:
        return False
    return True


def _compiled(fda: Fda) -> str | None:
    out = fda("program", "status", NAME)
    return out if "Success" in out else None
