"""The container image: built from the repository's files only, running as non-root, and its
entrypoint starts the operator from an installed wheel (there is no Docker engine here)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pipeline_operator import controlplane

from .conftest import Cluster

REPO = Path(__file__).resolve().parent.parent


def stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's stages, each a list of (instruction, arguments)."""
    out: list[list[tuple[str, str]]] = []
    for line in (REPO / "Dockerfile").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        if instruction.upper() == "FROM":
            out.append([])
        out[-1].append((instruction.upper(), args.strip()))
    return out


def test_dockerfile_is_slim_non_root_and_built_from_the_repository():
    build, final = stages()
    assert final[0][1].startswith("python:3.11-slim") and build[0][1].startswith("python:3.11-slim")
    user = [args for instruction, args in final if instruction == "USER"]
    assert user and user[-1].split(":")[0].isdigit() and int(user[-1].split(":")[0]) >= 1000
    final_text = " ".join(args for _, args in final)
    for tool in ("gcc", "build-essential", "apt-get install", "git "):
        assert tool not in final_text
    assert "--no-index" in final_text  # installs only the wheels built from the repository
    copies = [args for instruction, args in build if instruction == "COPY"]
    assert copies == ["pyproject.toml README.md ./", "operator/ operator/"]
    entrypoint = json.loads(next(args for instruction, args in final if instruction == "ENTRYPOINT"))
    assert entrypoint == ["pipeline-operator"]
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert ignored[1] == "*" and "!operator/" in ignored


@pytest.mark.apiserver
def test_entrypoint_starts_the_operator_from_an_installed_wheel(crd_installed: Cluster, namespace, tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist),
                    str(REPO)], check=True, timeout=300)
    wheel = next(dist.glob("pipeline_operator-*.whl"))
    # --target installs beside the environment without touching it (--prefix would first uninstall
    # the environment's own copy of the project).
    site = tmp_path / "installed"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--ignore-installed", "-q", "--target",
                    str(site), str(wheel)], check=True, timeout=300)
    entrypoint = site / "bin" / "pipeline-operator"
    env = {**os.environ, "PYTHONPATH": str(site), "KUBECONFIG": str(crd_installed.kubeconfig)}
    where = subprocess.run([sys.executable, "-c", "import pipeline_operator, sys; print(pipeline_operator.__file__)"],
                           env=env, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(site))  # the wheel's code, not the checkout's
    port = controlplane.free_port()
    log = tmp_path / "operator.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(entrypoint), "run", "--namespace", namespace, "--backend", "local",
                                 "--state-dir", str(tmp_path / "state"), "--event-store", str(tmp_path / "e.sqlite"),
                                 "--api-listen", f"127.0.0.1:{port}"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30
        ready = False
        while time.monotonic() < deadline and not ready:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    ready = r.status == 200
            except OSError:
                time.sleep(0.3)
        assert ready, log.read_text()[-3000:]
        assert "watching pipelines.dataflow.dev" in log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()[-3000:]
