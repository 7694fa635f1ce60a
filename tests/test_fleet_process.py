"""The fleet mode of the reference pipeline process (``bench/fleet_process.py``): many pipelines in
one process, each at a loopback address of its own with its own lifecycle, control token, storage and
faults; and the operator driving several of them through the Kubernetes backend with the fleet's
stand-in kubelet (tests/fake_kubelet.py ``FleetKubelet``), as the fleet benchmark does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .fake_kubelet import FleetKubelet
from .operator_harness import wait_for
from .test_api import http_json

FLEET_MAIN = [sys.executable, str(Path(__file__).resolve().parent.parent / "bench" / "fleet_process.py")]
QUICK = {"PIPELINE_INIT_SECONDS": "0.2", "PIPELINE_REPLAY_SECONDS": "0.2", "PIPELINE_SUSPEND_SECONDS": "0.1"}


class FleetProcess:
    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        port_file = folder / "port"
        self.log = folder / "fleet.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([*FLEET_MAIN, str(port_file)], stdout=out,
                                         stderr=subprocess.STDOUT)
        port = wait_for("the fleet to listen", lambda: port_file.exists() and port_file.read_text(), 60)
        self.url = f"http://127.0.0.1:{int(port)}"
        self.addresses: dict[str, str] = {}

    def register(self, key: str, storage: Path, token: str, initial: str = "running", **env: str) -> None:
        body = {"storage": str(storage), "program": {"digest": "d1"}, "initial": initial,
                "bootstrap_policy": "allow", "debug_routes": True,
                "env": {**QUICK, "PIPELINE_CONTROL_TOKEN": token, **env}}
        status, answer = http_json(f"{self.url}/fleet/pipelines/{key}", "PUT", {"Content-Type": "application/json"},
                                   json.dumps(body).encode())
        assert status == 201, answer
        self.addresses[key] = answer["address"]
        # The fleet answers once the pipeline is registered; it binds its address just after (as a pod's
        # process starts listening after the kubelet started it).
        if "PIPELINE_BIND_DELAY_SECONDS" not in env:
            wait_for(f"{key} to listen", lambda: self.served()[key]["listening"], 30)

    def call(self, key: str, route: str, method: str = "GET", token: str | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        address = self.addresses.get(key) or self.served()[key]["address"]  # registered by a kubelet
        return http_json(f"{address}{route}", method, headers)

    def served(self) -> dict[str, Any]:
        return http_json(f"{self.url}/fleet/pipelines")[1]

    def runtime_status(self, key: str) -> str | None:
        """The pipeline's runtime status; None while it does not answer."""
        try:
            status, body = self.call(key, "/status")
        except OSError:  # the connection closed without an answer: nothing listens at that address
            return None
        return body["runtime_status"] if status == 200 else None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[FleetProcess]:
    process = FleetProcess(tmp_path / "fleet")
    yield process
    process.stop()


def unreachable(fleet: FleetProcess, key: str) -> bool:
    """Whether nothing answers at the pipeline's address (the connection is refused, or closed unanswered)."""
    try:
        urllib.request.urlopen(f"{fleet.addresses[key]}/status", timeout=10)
    except urllib.error.HTTPError:
        return False
    except (urllib.error.URLError, ConnectionError, OSError):
        return True
    return False


def test_pipelines_of_one_fleet_go_through_their_lifecycles_independently(fleet, tmp_path):
    fleet.register("a/one", tmp_path / "s1", "token-one")
    fleet.register("b/two", tmp_path / "s2", "token-two", initial="paused")
    wait_for("one Running", lambda: fleet.runtime_status("a/one") == "Running")
    wait_for("two Paused", lambda: fleet.runtime_status("b/two") == "Paused")

    # Each pipeline's control routes take its own token only; /status stays open.
    assert fleet.call("a/one", "/pause", token="token-two")[0] == 401
    assert fleet.call("a/one", "/pause")[0] == 401
    assert fleet.call("a/one", "/pause", token="token-one")[0] == 202
    assert fleet.call("b/two", "/start", token="token-two")[0] == 202
    wait_for("one Paused, two Running", lambda: (fleet.runtime_status("a/one"), fleet.runtime_status("b/two"))
             == ("Paused", "Running"))
    assert fleet.call("a/one", "/debug/nothing-here", token="token-one")[0] == 404
    # The registration API is not on a pipeline's address: the pipeline itself answers (its debug routes echo a
    # path no route serves).
    assert fleet.call("a/one", "/fleet/pipelines") == (200, {
        "method": "GET", "path": "/fleet/pipelines", "query": "", "content_type": None, "authorized": False,
        "body": ""})

    # Suspending one writes a checkpoint into its storage only.
    assert fleet.call("a/one", "/suspend", "POST", token="token-one")[0] == 202
    wait_for("one Suspended", lambda: fleet.runtime_status("a/one") == "Suspended")
    assert len(list((tmp_path / "s1" / "checkpoints").glob("*.json"))) == 1
    assert not (tmp_path / "s2" / "checkpoints").exists()
    assert fleet.runtime_status("b/two") == "Running"

    # Registered again on the same storage (a restarted pod), it replays its checkpoint.
    fleet.register("a/one", tmp_path / "s1", "token-three")
    assert fleet.call("a/one", "/pause", token="token-one")[0] == 401  # the old instance's token is gone
    seen: list[str | None] = []
    wait_for("one Running after a replay", lambda: seen.append(fleet.runtime_status("a/one")) or seen[-1] == "Running")
    assert "Replaying" in seen, seen
    assert fleet.addresses["a/one"] != fleet.addresses["b/two"]
    assert fleet.served() == {"a/one": {"address": fleet.addresses["a/one"], "listening": True, "exit_code": None},
                              "b/two": {"address": fleet.addresses["b/two"], "listening": True, "exit_code": None}}


def test_a_pipeline_that_exits_or_is_killed_is_gone_and_the_others_stay(fleet, tmp_path):
    fleet.register("ns/crash", tmp_path / "s1", "t1")
    fleet.register("ns/stay", tmp_path / "s2", "t2")
    fleet.register("ns/late", tmp_path / "s3", "t3", PIPELINE_BIND_DELAY_SECONDS="2")
    wait_for("crash and stay Running", lambda: fleet.runtime_status("ns/crash") == fleet.runtime_status("ns/stay")
             == "Running")
    assert fleet.served()["ns/late"] == {"address": fleet.addresses["ns/late"], "listening": False, "exit_code": None}
    assert unreachable(fleet, "ns/late")  # not listening yet
    assert fleet.call("ns/crash", "/debug/fail?mode=exit", "POST", token="t1")[0] == 202
    wait_for("crash to have exited", lambda: fleet.served().get("ns/crash", {}).get("exit_code") == 70)
    assert unreachable(fleet, "ns/crash")
    assert fleet.runtime_status("ns/stay") == "Running"
    wait_for("late Running", lambda: fleet.runtime_status("ns/late") == "Running", timeout=10)

    # A hung pipeline answers nothing until it is killed; then its connections close.
    assert fleet.call("ns/stay", "/debug/fail?mode=hang", "POST", token="t2")[0] == 202
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        urllib.request.urlopen(f"{fleet.addresses['ns/stay']}/status", timeout=1)
    assert http_json(f"{fleet.url}/fleet/pipelines/ns/stay", "DELETE")[0] == 204
    assert unreachable(fleet, "ns/stay")
    assert http_json(f"{fleet.url}/fleet/pipelines/ns/stay", "DELETE")[0] == 404
    assert set(fleet.served()) == {"ns/crash", "ns/late"}
    assert fleet.runtime_status("ns/late") == "Running"


# -- the operator and the fleet ---------------------------------------------------------------------


@pytest.mark.apiserver
def test_the_operator_runs_several_pipelines_on_one_fleet_process(cluster, crd_installed, namespace, operators,
                                                                   pipelines, tmp_path):
    process = FleetProcess(tmp_path / "fleet")
    kubelet = FleetKubelet(cluster.kubeconfig, namespace, tmp_path / "kubelet", process.url, interval=0.2)
    kubelet.start()
    try:
        op = operators(namespace, "--backend", "kubernetes", "--pipeline-image", "registry.example/pipeline:1",
                       "--pipeline-image-prefix", "registry.example/")
        env = [{"name": k, "value": v} for k, v in QUICK.items()]
        for name in ("alpha", "beta", "gamma"):
            pipelines.create(name, {"desiredStatus": "Provisioned", "program": {"sql": "CREATE TABLE t (x INT);"},
                                    "deployment": {"env": env}})
        for name in ("alpha", "beta", "gamma"):
            pipelines.wait_status(name, op, timeout=90, deploymentStatus="Running")
        served: Callable[[], dict[str, Any]] = process.served
        assert set(served()) == {f"{namespace}/{n}" for n in ("alpha", "beta", "gamma")}

        # Each pipeline got its own token, from its own Secret: the operator's pause reaches only it.
        pipelines.patch_spec("beta", {"runtimeDesiredStatus": "Paused"})
        pipelines.wait_status("beta", op, timeout=60, deploymentRuntimeStatus="Paused")
        assert process.runtime_status(f"{namespace}/alpha") == "Running"
        assert process.call(f"{namespace}/alpha", "/pause", token="not-its-token")[0] == 401

        # Stopping one removes its workload only.
        pipelines.patch_spec("gamma", {"desiredStatus": "Stopped"})
        pipelines.wait_status("gamma", op, timeout=90, deploymentStatus="Stopped")
        wait_for("gamma's workload to be gone", lambda: f"{namespace}/gamma" not in served(), timeout=30)
        assert pipelines.a_later_pass("alpha", op)["deploymentStatus"] == "Running"
        assert process.runtime_status(f"{namespace}/beta") == "Paused"
        assert max(kubelet.max_workloads.values()) == 1 and max(kubelet.max_registrations.values()) == 1
    finally:
        kubelet.stop()
        process.stop()
    assert not kubelet.errors, kubelet.errors
    assert os.path.isdir(tmp_path / "kubelet" / "volumes")
