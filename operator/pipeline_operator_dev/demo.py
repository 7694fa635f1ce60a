"""``pipeline-operator demo``: the main job in one command.

With no cluster configured it starts the embedded control plane (building or reusing the
binaries, with progress), installs the CRD, runs the operator with the local backend, applies the
sample Pipeline and shows it going Stopped -> Provisioning -> Provisioned/Running, with its
monitor events as a table the way ``fda events`` prints them. It keeps running (printing new
events) until Ctrl-C, or exits once the sample is Running with ``--exit-when-running``. With
``KUBECONFIG`` pointing at a cluster it uses that cluster instead.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.resources
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from pipeline_operator.backends.local import processes_under
from pipeline_operator.controller import crd

from . import builds, controlplane

COLUMNS = ("time", "resources", "runtime", "program", "storage", "error")


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


def events_table(events: list[dict[str, Any]], now: dt.datetime | None = None) -> str:
    """Events (newest first, selector ``all``) as a text table, as ``fda events`` prints them."""
    now = now or dt.datetime.now(dt.UTC)
    rows = [COLUMNS]
    for event in events:
        at = dt.datetime.fromisoformat(event["recorded_at"].replace("Z", "+00:00"))
        ago = max(0, int((now - at).total_seconds()))
        runtime = event.get("deployment_runtime_status") or "-"
        if event.get("deployment_runtime_desired_status"):
            runtime += f" (desired {event['deployment_runtime_desired_status']})"
        error = (event.get("deployment_error") or {}).get("error_code", "") if event.get("deployment_has_error") else ""
        rows.append((f"{at.strftime('%H:%M:%S')} ({ago}s ago)",
                     f"{event['deployment_resources_status']} (desired {event['deployment_resources_desired_status']})",
                     runtime, event["program_status"], event["storage_status"], error or "-"))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


@contextlib.contextmanager
def _cluster(workdir: Path) -> Iterator[tuple[Path, Path]]:
    """(kubeconfig, kubectl): the user's cluster, or an embedded control plane."""
    if os.environ.get("KUBECONFIG"):
        kubeconfig = Path(os.environ["KUBECONFIG"])
        say(f"using the cluster in KUBECONFIG ({kubeconfig})")
        binaries = builds.ensure_binaries()
        yield kubeconfig, binaries.kubectl
        return
    say("no KUBECONFIG: starting an embedded control plane (etcd + kube-apiserver)")
    binaries = builds.ensure_binaries()
    with controlplane.ControlPlane(binaries, workdir / "control-plane") as plane:
        assert plane.kubeconfig is not None
        yield plane.kubeconfig, binaries.kubectl


def run(namespace: str = "default", exit_when_running: bool = False, timeout: float = 180.0,
        example: Path | None = None) -> int:
    if example is None:  # the repository's examples/, or the copy installed with the package
        example = Path(__file__).resolve().parents[2] / "examples" / "orders.yaml"
        if not example.exists():
            example = Path(str(importlib.resources.files("pipeline_operator") / "data" / "example-pipeline.yaml"))
    sample = yaml.safe_load(example.read_text())
    name = sample["metadata"]["name"]
    with tempfile.TemporaryDirectory(prefix="pipeline-operator-demo-") as td, \
            _cluster(Path(td)) as (kubeconfig, kubectl):
        workdir = Path(td)
        env = {**os.environ, "KUBECONFIG": str(kubeconfig)}

        def k(*args: str, input: str | None = None) -> str:
            return controlplane.run_kubectl(kubectl, kubeconfig, *args, input=input).stdout

        say("installing the Pipeline CRD")
        k("apply", "-f", "-", input=crd.to_yaml())
        controlplane.wait_established(
            lambda *args, check=True: controlplane.run_kubectl(kubectl, kubeconfig, *args, check=check))
        port = controlplane.free_port()
        say(f"starting the operator (local backend, namespace {namespace}, API on 127.0.0.1:{port})")
        log_path = workdir / "operator.log"
        with open(log_path, "w") as log:
            operator = subprocess.Popen(
                [sys.executable, "-m", "pipeline_operator.cli", "run", "--namespace", namespace, "--backend",
                 "local", "--state-dir", str(workdir / "state"), "--event-store", str(workdir / "events.sqlite"),
                 "--api-listen", f"127.0.0.1:{port}", "--api-auth", "none", "--api-default-namespace", namespace],
                stdout=log, stderr=subprocess.STDOUT, env=env)
        api = f"http://127.0.0.1:{port}"
        try:
            say(f"applying {example.name}: Pipeline '{name}'")
            sample["metadata"]["namespace"] = namespace
            k("apply", "-f", "-", input=json.dumps(sample))
            seen = ""
            deadline = time.monotonic() + timeout
            running = False
            printed: set[str] = set()
            while True:
                if operator.poll() is not None:
                    print(log_path.read_text()[-3000:], file=sys.stderr)
                    say(f"the operator exited with {operator.returncode}")
                    return 1
                status = json.loads(k("get", "pipeline", name, "-n", namespace, "-o", "json")).get("status") or {}
                shown = f"{status.get('deploymentStatus', 'Stopped')} (program {status.get('programStatus', '-')}, " \
                        f"storage {status.get('storageStatus', '-')})"
                if shown != seen:
                    say(f"{name}: {shown}")
                    seen = shown
                if status.get("deploymentError"):
                    error = status["deploymentError"]
                    say(f"{name}: error {error['errorCode']}: {error['message']}")
                if status.get("deploymentStatus") == "Running" and not running:
                    running = True
                    with contextlib.suppress(urllib.error.URLError, OSError):
                        events = _get_json(f"{api}/v0/pipelines/{name}/events?selector=all")
                        printed.update(e["event_id"] for e in events)
                        say(f"monitor events of '{name}' (newest first):")
                        print(events_table(events), flush=True)
                    if exit_when_running:
                        say("the sample is Running; stopping (--exit-when-running)")
                        return 0
                    say("running until Ctrl-C; new monitor events are printed as they come")
                elif running:
                    with contextlib.suppress(urllib.error.URLError, OSError):
                        new = [e for e in _get_json(f"{api}/v0/pipelines/{name}/events?selector=all")
                               if e["event_id"] not in printed]
                        if new:
                            printed.update(e["event_id"] for e in new)
                            print(events_table(new), flush=True)
                if not running and time.monotonic() > deadline:
                    say(f"'{name}' did not reach Running within {timeout:.0f}s; operator log:")
                    print(log_path.read_text()[-3000:], file=sys.stderr)
                    return 1
                time.sleep(0.5 if not running else 2.0)
        except KeyboardInterrupt:
            say("Ctrl-C: stopping")
            return 0
        finally:
            operator.send_signal(signal.SIGTERM)
            try:
                operator.wait(30)
            except subprocess.TimeoutExpired:
                operator.kill()
            _stop_pipeline_processes(workdir / "state")


def _stop_pipeline_processes(state: Path) -> None:
    """The demo's pipeline processes go with it (an operator leaves pipelines running by design)."""
    for pid in processes_under(state):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
