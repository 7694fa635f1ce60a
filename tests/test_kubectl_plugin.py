"""``kubectl pipeline``, run through real kubectl (which finds ``kubectl-pipeline`` on the PATH) against
the real API server and a real operator with real pipeline processes (local backend)."""

from __future__ import annotations

import http.server
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from .test_operator_lifecycle import debug_fail

pytestmark = pytest.mark.apiserver

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = Path(sys.executable).parent  # where `pip install` put kubectl-pipeline and kubectl_complete-pipeline
SQL = "CREATE TABLE orders (id BIGINT NOT NULL, amount DECIMAL(10, 2));\n" \
      "CREATE MATERIALIZED VIEW total AS SELECT SUM(amount) AS total FROM orders;"
FAST_PIPELINE = [{"name": "PIPELINE_INIT_SECONDS", "value": "0.5"},
                 {"name": "PIPELINE_REPLAY_SECONDS", "value": "0.5"},
                 {"name": "PIPELINE_SUSPEND_SECONDS", "value": "0.3"}]


def env_for(kubeconfig: Path) -> dict[str, str]:
    return {**os.environ, "KUBECONFIG": str(kubeconfig), "PATH": f"{SCRIPTS}{os.pathsep}{os.environ['PATH']}"}


def plugin(cluster, *args: str, kubeconfig: Path | None = None, timeout: float = 120,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``kubectl pipeline ARGS``: kubectl finds the plugin on the PATH, as a user's shell would."""
    return subprocess.run([str(cluster.binaries.kubectl), "pipeline", *args], capture_output=True, text=True,
                          env={**env_for(kubeconfig or cluster.kubeconfig), **(env or {})}, timeout=timeout)


def table(stdout: str) -> list[list[str]]:
    """The rows of an events table, split on the runs of spaces between columns."""
    return [re.split(r"\s{3,}", line.strip()) for line in stdout.strip().splitlines()]


def expected_row(entry: dict) -> list[str]:
    runtime = entry.get("deploymentRuntimeStatus") or "-"
    if entry.get("deploymentRuntimeDesiredStatus"):
        runtime += f" ({entry['deploymentRuntimeDesiredStatus']})"
    return [f"{entry['deploymentResourcesStatus']} ({entry['deploymentResourcesDesiredStatus']})", runtime,
            entry["programStatus"], entry["storageStatus"], "yes" if entry["deploymentHasError"] else "-"]


class Lines:
    """A process's stdout, line by line, read with a deadline."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [self.queue.put(line) for line in proc.stdout], daemon=True).start()

    def until(self, predicate, timeout: float = 30.0) -> list[str]:
        seen, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.queue.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                break
            seen.append(line.rstrip("\n"))
            if predicate(seen[-1]):
                return seen
        raise AssertionError(f"no matching line within {timeout}s; saw {seen}")


def test_events_actions_and_status_through_kubectl(operators, pipelines, namespace, cluster):
    op = operators(namespace)
    pipelines.create("orders", {"desiredStatus": "Stopped", "program": {"sql": SQL},
                                "deployment": {"env": FAST_PIPELINE}})
    pipelines.wait_status("orders", op, programStatus="Success", deploymentStatus="Stopped")

    # start --wait: the spec change and the one-shot annotation, then the status reaching Running.
    started = plugin(cluster, "start", "orders", "-n", namespace, "--wait", "--timeout", "60")
    assert started.returncode == 0, started.stderr
    assert "spec.desiredStatus: Stopped -> Provisioned" in started.stdout
    assert "annotation dataflow.dev/start=" in started.stdout
    assert "Running: resources Provisioned (desired Provisioned), runtime Running" in started.stdout
    assert "waiting for orders" in started.stderr  # the progress line (one per change: not a terminal)
    obj = pipelines.get("orders")
    nonce = started.stdout.split("dataflow.dev/start=")[1].split()[0]
    assert obj["metadata"]["annotations"]["dataflow.dev/start"] == nonce
    assert obj["status"]["handledActions"]["start"]["value"] == nonce
    shown_fields = json.loads(cluster.kubectl("get", "pipeline", "orders", "-n", namespace, "-o", "json",
                                              "--show-managed-fields").stdout)
    managers = {m["manager"] for m in shown_fields["metadata"]["managedFields"]}
    assert "kubectl-pipeline" in managers

    # events: the table, newest first, is status.history as the operator recorded it.
    history = pipelines.status("orders")["history"]
    shown = plugin(cluster, "events", "orders", "-n", namespace)
    assert shown.returncode == 0, shown.stderr
    rows = table(shown.stdout)
    assert rows[0] == ["TIME", "RESOURCES", "RUNTIME", "PROGRAM", "STORAGE", "ERROR"]
    assert len(rows) - 1 >= len(history)  # the operator may have recorded more since
    newest = rows[1]
    assert newest[0].endswith(" ago") and newest[1:] == ["Provisioned (Provisioned)", "Running (Running)",
                                                          "Success", "InUse", "-"]
    recorded = [expected_row(e) for e in history]
    assert [r[1:] for r in rows[1:]][-len(recorded):] == recorded
    assert ["Stopped (Stopped)", "-", "Pending", "Cleared", "-"] == rows[-1][1:]  # created: not compiled yet
    assert ["Stopped (Stopped)", "-", "Success", "Cleared", "-"] in [r[1:] for r in rows[1:]]
    assert ["Provisioning (Provisioned)", "-", "Success", "InUse", "-"] in [r[1:] for r in rows[1:]]
    # The README's block is this command's output: the same header, the same columns, the same lifecycle.
    readme = (REPO / "README.md").read_text().split("$ kubectl pipeline events orders -n data-team\n")[1]
    readme_rows = table(readme.split("```")[0])
    assert readme_rows[0] == rows[0] and shown.stdout.splitlines()[0] == readme.splitlines()[0]
    assert [r[3:5] for r in readme_rows[-5:]] == [r[3:5] for r in rows[-5:]]  # compiling, oldest last

    as_json = json.loads(plugin(cluster, "events", "orders", "-n", namespace, "-o", "json").stdout)
    ids = [e["event_id"] for e in as_json]
    assert ids == sorted(ids, reverse=True) and set(e["eventId"] for e in history) <= set(ids)
    assert as_json[0]["deployment_resources_status"] == "Provisioned"
    assert as_json[0]["deployment_runtime_status"] == "Running"
    as_yaml = plugin(cluster, "events", "orders", "-n", namespace, "-o", "yaml").stdout
    assert f'- "event_id": "{ids[0]}"' in as_yaml

    # The operator's API serves the full history (selector all: with the details fields); an API
    # that cannot be reached falls back to status.history, saying so.
    full = plugin(cluster, "events", "orders", "-n", namespace, "-o", "json", "--api", op.api_url)
    assert full.returncode == 0, full.stderr
    full_events = json.loads(full.stdout)
    assert {e["eventId"] for e in history} <= {e["event_id"] for e in full_events}
    assert all("deployment_runtime_status_details" in e for e in full_events)
    fallback = plugin(cluster, "events", "orders", "-n", namespace, "--api", "http://127.0.0.1:1")
    assert fallback.returncode == 0 and "unreachable" in fallback.stderr and "showing status.history" in fallback.stderr
    assert table(fallback.stdout)[1][1:] == newest[1:]

    # --follow prints each new event as it is recorded; Ctrl-C ends it with exit code 0.
    follow = subprocess.Popen([str(cluster.binaries.kubectl), "pipeline", "events", "orders", "-n", namespace,
                               "--follow"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env_for(cluster.kubeconfig))
    try:
        lines = Lines(follow)
        lines.until(lambda line: "Stopped (Stopped)" in line)  # the initial table, oldest row last
        paused = plugin(cluster, "pause", "orders", "-n", namespace)
        assert paused.returncode == 0 and "spec.runtimeDesiredStatus: (unset) -> Paused" in paused.stdout
        new = lines.until(lambda line: "Paused (Paused)" in line)
        assert all(" ago" in line for line in new)
    finally:
        follow.send_signal(signal.SIGINT)
        code = follow.wait(20)
    assert code == 0 and "Traceback" not in follow.stderr.read()

    # stop --wait, through the `pipeline-operator kubectl` entry point too.
    stopped = subprocess.run([sys.executable, "-m", "pipeline_operator.cli", "kubectl", "stop", "orders", "-n",
                              namespace, "--wait", "--timeout", "60"], capture_output=True, text=True,
                             env=env_for(cluster.kubeconfig), timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    assert "spec.desiredStatus: Provisioned -> Stopped" in stopped.stdout
    assert "stopMode" not in stopped.stdout  # Graceful already: the CRD's default
    assert "waiting for orders (Stopped): Stopping" in stopped.stderr
    assert "Stopped: resources Stopped (desired Stopped)" in stopped.stdout
    st = pipelines.status("orders")
    assert st["deploymentResourcesStatus"] == "Stopped" and st["storageStatus"] == "InUse"

    # status: one screen.
    screen = plugin(cluster, "status", "orders", "-n", namespace)
    assert screen.returncode == 0, screen.stderr
    text = screen.stdout
    assert f"Pipeline:    {namespace}/orders" in text
    assert "Resources:   Stopped (desired Stopped)" in text and "Storage:     InUse" in text
    assert "Program:     Success" in text and "Error:       -" in text
    assert "Ready" in text and "Stalled" in text
    events_part = text.split("Events (last 10 of status.history):\n")[1].split("Kubernetes objects")[0]
    assert len(events_part.strip().splitlines()) == 11  # header and ten events
    assert "Stopped (Stopped)" in events_part.splitlines()[1]
    assert "none (the local backend" in text

    # A pipeline that fails: the error in the events' ERROR column and on the status screen; a start
    # dismisses it (as Feldera's /start does) and runs the pipeline again.
    assert plugin(cluster, "start", "orders", "-n", namespace, "--wait", "--timeout", "60").returncode == 0
    debug_fail(op, namespace, "orders", obj["metadata"]["uid"], "exit")
    pipelines.wait_status("orders", op, deploymentResourcesStatus="Stopped", timeout=60)
    failed = table(plugin(cluster, "events", "orders", "-n", namespace).stdout)
    assert failed[1][1:] == ["Stopped (Stopped)", "-", "Success", "InUse", "RunnerCheckError"]
    screen = plugin(cluster, "status", "orders", "-n", namespace).stdout
    message = pipelines.status("orders")["deploymentError"]["message"]
    assert f"Error:       RunnerCheckError: {message}" in screen
    restarted = plugin(cluster, "start", "orders", "-n", namespace, "--wait", "--timeout", "60")
    assert restarted.returncode == 0, restarted.stderr
    assert "annotation dataflow.dev/dismiss-error=" in restarted.stdout
    assert "deploymentError" not in pipelines.status("orders")


def test_errors_rbac_and_completion(crd_installed, pipelines, namespace, cluster, tmp_path):
    cluster = crd_installed
    pipelines.create("orders", {"program": {"sql": SQL}})
    pipelines.create("returns", {"program": {"sql": SQL}})

    missing = plugin(cluster, "events", "nothing", "-n", namespace)
    assert missing.returncode == 1
    assert missing.stderr == f'error: pipeline "nothing" not found in namespace "{namespace}"\n'

    bob = plugin(cluster, "status", "orders", "-n", namespace, kubeconfig=cluster.plane.kubeconfig_for("bob"))
    assert bob.returncode == 1 and len(bob.stderr.splitlines()) == 1
    assert bob.stderr.startswith('error: Forbidden: pipelines.dataflow.dev "orders" is forbidden: User "bob" cannot '
                                 'get resource "pipelines"')
    denied = plugin(cluster, "stop", "orders", "-n", namespace, kubeconfig=cluster.plane.kubeconfig_for("bob"))
    assert denied.returncode == 1 and "Forbidden" in denied.stderr

    nowhere = plugin(cluster, "events", "orders", kubeconfig=tmp_path / "absent")
    assert nowhere.returncode == 1
    assert nowhere.stderr == f"error: no kubeconfig found at {tmp_path / 'absent'}: set KUBECONFIG or pass " \
                             "--kubeconfig\n"

    # The context's namespace is the default, as with kubectl.
    config = json.loads(cluster.kubeconfig.read_text())
    config["contexts"][0]["context"]["namespace"] = namespace
    scoped = tmp_path / "kubeconfig"
    scoped.write_text(json.dumps(config))
    assert plugin(cluster, "events", "orders", kubeconfig=scoped).returncode == 0

    config["clusters"][0]["cluster"]["server"] = "https://127.0.0.1:1"
    unreachable = tmp_path / "unreachable"
    unreachable.write_text(json.dumps(config))
    down = plugin(cluster, "status", "orders", kubeconfig=unreachable)
    assert down.returncode == 1 and len(down.stderr.splitlines()) == 1
    assert down.stderr.startswith("error: the Kubernetes API server cannot be reached:")

    script = plugin(cluster, "completion", "bash")
    assert script.returncode == 0 and "complete -F _kubectl_pipeline kubectl-pipeline" in script.stdout
    assert "kubectl get pipelines" in script.stdout
    bash = subprocess.run(["bash", "-c", script.stdout + "\nCOMP_WORDS=(kubectl-pipeline events or); COMP_CWORD=2; "
                           "_kubectl_pipeline; echo ${COMPREPLY[@]}"],
                          capture_output=True, text=True, env={**env_for(scoped),
                                                               "PATH": f"{cluster.binaries.kubectl.parent}:"
                                                                       f"{os.environ['PATH']}"})
    assert bash.stdout.split() == ["orders"], bash.stderr
    zsh = plugin(cluster, "completion", "zsh")
    assert zsh.returncode == 0 and zsh.stdout.startswith("#compdef kubectl-pipeline")

    complete = subprocess.run([str(SCRIPTS / "kubectl_complete-pipeline"), "status", "-n", namespace, ""],
                              capture_output=True, text=True, env=env_for(cluster.kubeconfig), timeout=60)
    assert complete.stdout.splitlines() == ["orders", "returns", ":4"]
    # kubectl 1.26+ completes `kubectl pipeline ...` through kubectl_complete-pipeline on the PATH.
    through_kubectl = subprocess.run([str(cluster.binaries.kubectl), "__complete", "pipeline", "events", ""],
                                     capture_output=True, text=True, env=env_for(scoped), timeout=60)
    assert through_kubectl.stdout.splitlines() == ["orders", "returns", ":4"], through_kubectl.stderr
    commands = subprocess.run([str(SCRIPTS / "kubectl_complete-pipeline"), "st"], capture_output=True, text=True,
                              env=env_for(cluster.kubeconfig), timeout=60)
    assert commands.stdout.splitlines() == ["status", "start", "stop", ":4"]


class Recorder(http.server.ThreadingHTTPServer):
    """A loopback HTTP server that records every request's line and headers, and answers each with ``answer``
    (status, headers); with none given it answers an empty list of events."""

    def __init__(self, answer: tuple[int, dict[str, str]] | None = None) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.connections = 0
        self.answer = answer
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def setup(self) -> None:
                recorder.connections += 1
                super().setup()

            def do_GET(self) -> None:  # noqa: N802
                recorder.requests.append((self.requestline, dict(self.headers)))
                status, headers = recorder.answer or (200, {"Content-Type": "application/json"})
                body = b"[]" if status == 200 else b""
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()


@pytest.mark.parametrize("url, allowed", [
    ("http://127.0.0.1:8080", True), ("http://127.9.9.9", True), ("http://[::1]:8080/", True),
    ("http://localhost:8080", True), ("http://LocalHost.", True), ("https://operator.example", True),
    ("https://192.0.2.10:8443", True),
    ("http://192.0.2.10:8080", False), ("http://operator.invalid", False), ("http://[2001:db8::1]:8080", False),
    ("http://127.0.0.1.example", False), ("http://localhost.example", False), ("http://0.0.0.0:8080", False),
    ("ftp://127.0.0.1", False), ("127.0.0.1:8080", False), ("http://[::1", False),
])
def test_which_api_addresses_may_have_the_token(url, allowed):
    from pipeline_operator.kubectl_plugin.connection import api_url_refusal
    assert (api_url_refusal(url) is None) is allowed, api_url_refusal(url)


def test_the_token_goes_over_plain_http_only_to_a_loopback_address(crd_installed, pipelines, namespace):
    """Plain http:// (the kubeconfig's token in the clear) is refused unless the address is this machine's
    own, before any connection is made. Here every plain-http connection goes to a loopback proxy (as with
    ``http_proxy`` set): before the refusal, the token reached it; a loopback address is not sent through
    a proxy at all."""
    cluster = crd_installed
    pipelines.create("orders", {"program": {"sql": SQL}})
    with Recorder() as proxy, Recorder() as api:
        env = {"http_proxy": proxy.url, "HTTP_PROXY": proxy.url, "no_proxy": "", "NO_PROXY": ""}
        far = "http://192.0.2.10:8080"  # TEST-NET-1: not this machine (nothing is sent to it in any case)
        refused = plugin(cluster, "events", "orders", "-n", namespace, "--api", far, env=env)
        assert refused.returncode == 1 and refused.stdout == "", refused
        assert refused.stderr.splitlines() == [
            f"error: --api {far}: plain http:// would send the kubeconfig's token in the clear: use https://, "
            "or plain http:// to a loopback address only (127.0.0.0/8, ::1, localhost)"], refused.stderr
        assert proxy.connections == 0 and proxy.requests == []

        near = plugin(cluster, "events", "orders", "-n", namespace, "--api", api.url, "-o", "json", env=env)
        assert near.returncode == 0 and json.loads(near.stdout) == [], near.stderr
        assert proxy.connections == 0  # straight to the loopback address
        assert [line for line, _ in api.requests] == ["GET /v0/pipelines/orders/events?selector=all HTTP/1.1"]
        assert api.requests[0][1]["Authorization"].startswith("Bearer ")


def test_a_redirect_of_the_api_is_not_followed(crd_installed, pipelines, namespace):
    """The operator's API answering a redirect: the token would go wherever it points. Not followed: one line
    and exit code 1; the redirect's target sees nothing."""
    cluster = crd_installed
    pipelines.create("orders", {"program": {"sql": SQL}})
    with Recorder() as target, Recorder() as api:
        location = f"{target.url}/v0/pipelines/orders/events?selector=all"
        for status in (302, 307):
            api.answer = (status, {"Location": location})
            redirected = plugin(cluster, "events", "orders", "-n", namespace, "--api", api.url)
            assert redirected.returncode == 1 and redirected.stdout == "", redirected
            assert redirected.stderr.splitlines() == [
                f"error: the operator's API at {api.url} answered a redirect (HTTP {status} to {location}), which is "
                "not followed (it would take the kubeconfig's token along): give --api the address it redirects to"
            ], redirected.stderr
        assert len(api.requests) == 2 and all("Authorization" in headers for _, headers in api.requests)
        assert target.connections == 0 and target.requests == []
