"""The README's run command (``pipeline-operator demo``), non-interactively, on a clean environment."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline_operator_dev.demo import events_table

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.apiserver
def test_demo_reaches_running_and_prints_the_events_table(binaries, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG",)}
    env["HOME"] = os.environ.get("HOME", str(tmp_path))  # the binaries' cache
    res = subprocess.run([sys.executable, "-m", "pipeline_operator.cli", "demo", "--exit-when-running"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    out = res.stdout
    assert res.returncode == 0, out[-3000:] + res.stderr[-3000:]
    assert "starting an embedded control plane" in out
    assert "orders: Running" in out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("time"))
    assert lines[header].split() == ["time", "resources", "runtime", "program", "storage", "error"]
    assert "Running (desired Running)" in lines[header + 1]
    assert any("Provisioning (desired Provisioned)" in line for line in lines[header:])
    leftovers = subprocess.run(["pgrep", "-f", "pipeline-operator-demo-"], capture_output=True, text=True).stdout
    assert not leftovers.strip(), f"processes left behind: {leftovers}"


def test_events_table_reads_like_fda_events():
    now = dt.datetime(2026, 11, 26, 8, 0, 30, tzinfo=dt.UTC)
    table = events_table([{
        "recorded_at": "2026-11-26T08:00:00Z", "deployment_resources_status": "Stopped",
        "deployment_resources_desired_status": "Stopped", "deployment_runtime_status": None,
        "deployment_runtime_desired_status": None, "program_status": "Success", "storage_status": "InUse",
        "deployment_has_error": True, "deployment_error": {"error_code": "RunnerCheckError", "message": "x"}}], now)
    header, row = table.splitlines()
    assert header.split() == ["time", "resources", "runtime", "program", "storage", "error"]
    assert row.startswith("08:00:00 (30s ago)") and row.endswith("RunnerCheckError")


def test_packaged_example_is_the_repository_example():
    packaged = REPO / "operator" / "pipeline_operator" / "data" / "example-pipeline.yaml"
    assert packaged.read_text() == (REPO / "examples" / "orders.yaml").read_text()
