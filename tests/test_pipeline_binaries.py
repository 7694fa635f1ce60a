"""Program binaries on the Kubernetes backend (``--compiler feldera``): the pod's launcher downloads its binary
from the operator with its pipeline's control token, checks its sha256 and execs it with Feldera's arguments.

Fast: a stand-in for Feldera's SQL compiler (tests/test_launch.py) and, as the "binary" in the store, a shell
script padded to 96 MB that execs the reference pipeline process with the arguments it is given (what a real
pipeline binary is started with). tests/test_feldera_engine.py runs Feldera's own binary the same way.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from pipeline_operator.feldera.compiler import binary_key
from pipeline_operator.feldera.launcher import LaunchError, download

from .operator_harness import wait_for
from .test_launch import _fake_sql_compiler
from .test_operator_lifecycle import FAST_PIPELINE

pytestmark = pytest.mark.apiserver
SQL = "CREATE TABLE t (x INT);"
PADDING = 96 << 20  # the stand-in binary's size (Feldera's orders binary is 320 MB)


def stand_in_binary(path: Path, tag: str = "") -> str:
    """A shell script that runs the reference pipeline process with its arguments, padded to PADDING bytes (the
    shell reads no further than the exec); its sha256."""
    head = f"#!/bin/sh\n# {tag}\nexec {sys.executable} -m pipeline_operator.cli pipeline-process \"$@\"\n".encode()
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(PADDING)
    path.chmod(0o755)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _get(url: str, token: str | None) -> tuple[int, dict[str, Any] | None, int]:
    """Status, the JSON error (if any) and the number of body bytes of ``GET url``."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60) as response:
            size = 0
            while chunk := response.read(1 << 20):
                size += len(chunk)
            return response.status, None, size
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), 0


def _reset_peak(pid: int) -> None:
    """Reset the process's peak resident size (VmHWM) to its current one (Linux's clear_refs, value 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def _vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def _token(cluster: Any, namespace: str, pipeline: str) -> str:
    secrets = json.loads(cluster.kubectl("get", "secrets", "-n", namespace, "-o", "json").stdout)["items"]
    (secret,) = [s for s in secrets if s["metadata"]["name"].startswith(f"{pipeline}-")
                 and s["metadata"]["name"].endswith("-token")]
    return base64.b64decode(secret["data"]["token"]).decode()


@pytest.fixture
def binary_operator(operators, cluster, namespace, kubelet, tmp_path):
    store = tmp_path / "binaries"
    store.mkdir()
    sha = stand_in_binary(store / binary_key("0.306.0", SQL))
    jar = tmp_path / "sql2dbsp.jar"
    jar.write_text("stand-in")
    other = f"{namespace}-b"[:63]
    cluster.kubectl("create", "namespace", other)
    op = operators(namespace, "--namespace", other, "--backend", "kubernetes", "--compiler", "feldera",
                   "--feldera-sql-compiler", str(jar), "--java", str(_fake_sql_compiler(tmp_path, {
                       "inputs": [], "outputs": []})), "--program-binaries", str(store),
                   "--pipeline-image", "registry.example/pipeline:1", process=True)  # its memory is measured
    return op, store, sha, other


def test_a_pod_downloads_its_binary_with_its_own_token_only(binary_operator, pipelines, namespace, cluster, kubelet):
    op, store, sha, other = binary_operator
    spec = {"desiredStatus": "Provisioned", "program": {"sql": SQL}, "deployment": {"env": FAST_PIPELINE}}
    pipelines.create("a", spec)
    pipelines.create("b", spec)
    cluster.apply({"apiVersion": "dataflow.dev/v1alpha1", "kind": "Pipeline",
                   "metadata": {"name": "a", "namespace": other}, "spec": spec})
    pipelines.wait_status("a", op, deploymentStatus="Running", timeout=90)
    pipelines.wait_status("b", op, deploymentStatus="Running", timeout=90)
    # The pod runs the launcher, which ran the binary of the store (its sha256 as compiled) with Feldera's arguments.
    sts = json.loads(cluster.kubectl("get", "statefulsets", "-n", namespace, "-o", "json").stdout)["items"]
    command = next(s for s in sts if s["metadata"]["name"].startswith("a-"))["spec"]["template"]["spec"][
        "containers"][0]["command"]
    assert command[:6] == ["pipeline-operator", "launch-pipeline", "--binary-url",
                           f"{op.api_url}/pipeline-binaries/{namespace}/a", "--sha256", sha], command
    assert command[6:9] == ["--", "--config-file", "/config/config.yaml"], command
    pod = next(p for p in (kubelet.workdir / "pods").iterdir() if p.name.startswith("a-"))
    assert (pod / f"program_{sha[:16]}").stat().st_size == PADDING
    assert f"launcher: running program_{sha[:16]} (sha256 {sha})" in (pod / "log").read_text()

    # Who gets it: the pipeline's own token only.
    url = f"{op.api_url}/pipeline-binaries/{namespace}/a"
    token_a, token_b = _token(cluster, namespace, "a"), _token(cluster, namespace, "b")
    wait_for("the other namespace's token Secret", lambda: _token_or_none(cluster, other, "a"), 60)
    token_other = _token(cluster, other, "a")
    assert len({token_a, token_b, token_other}) == 3
    # Streamed: a download of 96 MB grows the operator's peak memory by far less than the binary.
    _reset_peak(op.proc.pid)
    before = _vm_hwm_kib(op.proc.pid)
    assert _get(url, token_a)[::2] == (200, PADDING)
    grown = _vm_hwm_kib(op.proc.pid) - before
    assert grown < 24 * 1024, f"the operator's peak RSS grew by {grown} KiB serving the binary"
    for who, target, token, status, code in (
            ("no token", url, None, 401, "Unauthorized"),
            ("an empty token", url, "", 401, "Unauthorized"),
            ("a wrong token", url, "x" * 43, 403, "Forbidden"),
            ("b's token (same namespace)", url, token_b, 403, "Forbidden"),
            ("the other namespace's a's token", url, token_other, 403, "Forbidden"),
            ("a's token for the other namespace's a", f"{op.api_url}/pipeline-binaries/{other}/a", token_a, 403,
             "Forbidden"),
            ("a's token for a pipeline that does not exist", f"{op.api_url}/pipeline-binaries/{namespace}/zz",
             token_a, 403, "Forbidden")):
        got, error, _ = _get(target, token)
        assert (got, (error or {}).get("error_code")) == (status, code), who
        assert error is not None and error["message"] and "details" in error, who
    # The other namespace's pipeline gets its own with its own token (it exists, and the route serves it).
    assert _get(f"{op.api_url}/pipeline-binaries/{other}/a", token_other)[0] == 200
    # The launcher's command is the operator's: changed, it is put back as it was (binary URL and digest included).
    sts_name = pod.name
    cluster.kubectl("patch", "statefulset", sts_name, "-n", namespace, "--type=json", "-p", json.dumps([
        {"op": "replace", "path": "/spec/template/spec/containers/0/command/3", "value": "http://elsewhere/b"}]))
    wait_for("the launcher's command put back", lambda: json.loads(cluster.kubectl(
        "get", "statefulset", sts_name, "-n", namespace, "-o", "json").stdout)["spec"]["template"]["spec"][
        "containers"][0]["command"] == command, 30, operator=op)
    # After an operator restart (which provisioned nothing), a restarted container still gets its binary: the
    # compiled artifact of its pipeline's program, to its token only.
    op.stop()
    op.start()
    for old in pod.glob("program_*"):
        old.unlink()  # the container starts with nothing to reuse
    kubelet.kill_pod(pod.name)
    wait_for("a new download", lambda: (pod / "log").read_text().count("launcher: running") == 2, 60, operator=op)
    assert _get(url, token_b)[0] == 403
    pipelines.wait_status("a", op, deploymentStatus="Running", timeout=60)
    # A stopped pipeline's token is worth nothing.
    pipelines.patch_spec("b", {"desiredStatus": "Stopped", "stopMode": "Force"})
    pipelines.wait_status("b", op, deploymentStatus="Stopped", timeout=60)
    assert _get(f"{op.api_url}/pipeline-binaries/{namespace}/b", token_b)[0] == 403

    # A binary changed in the store since it was compiled: a new pod's launcher refuses to run it.
    pipelines.patch_spec("a", {"desiredStatus": "Stopped", "stopMode": "Force"})
    pipelines.wait_status("a", op, deploymentStatus="Stopped", timeout=60)
    stand_in_binary(store / binary_key("0.306.0", SQL), tag="changed")
    for old in pod.glob("program_*"):
        old.unlink()  # a new pod: a fresh working directory
    pipelines.patch_spec("a", {"desiredStatus": "Provisioned"})
    message = wait_for("the launcher's refusal", lambda: "not run" in (pod / "log").read_text()
                       and (pod / "log").read_text(), 60, operator=op)
    assert f"not {sha} as compiled: it changed in the operator's binary store" in message
    assert not list(pod.glob("program_*")) and not (pod / "port").exists()


def _token_or_none(cluster: Any, namespace: str, pipeline: str) -> str | None:
    try:
        return _token(cluster, namespace, pipeline)
    except ValueError:
        return None


class _Serving(http.server.BaseHTTPRequestHandler):
    body = b""
    status = 200

    def do_GET(self) -> None:  # noqa: N802
        type(self).seen = self.headers.get("Authorization")
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Serving)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd, f"http://127.0.0.1:{httpd.server_address[1]}/pipeline-binaries/ns/p"
    httpd.shutdown()


def test_the_launcher_checks_the_digest_and_keeps_nothing_it_would_not_run(server, tmp_path):
    _, url = server
    _Serving.body, _Serving.status = b"#!/bin/sh\necho changed\n", 200
    target = tmp_path / "program_x"
    with pytest.raises(LaunchError, match="has sha256 .* not 0{64} as compiled"):
        download(url, "tok", "0" * 64, target)
    assert list(tmp_path.iterdir()) == []  # nothing left to run
    assert _Serving.seen == "Bearer tok"
    download(url, "tok", hashlib.sha256(_Serving.body).hexdigest(), target)
    assert target.read_bytes() == _Serving.body and os.access(target, os.X_OK)
    # The operator's refusal is final and says why.
    _Serving.body = json.dumps({"message": "no", "error_code": "Forbidden", "details": {}}).encode()
    _Serving.status = 403
    with pytest.raises(LaunchError, match="refused the program binary at .*: 403 Forbidden: no"):
        download(url, "tok", "0" * 64, tmp_path / "program_y")


def test_where_pods_reach_the_operator(tmp_path):
    from pipeline_operator.settings import OperatorSettings
    jar = tmp_path / "sql2dbsp.jar"
    jar.write_text("stand-in")
    base = {"backend": "kubernetes", "compiler": "feldera", "feldera_sql_compiler": jar, "java": sys.executable,
            "program_binaries": tmp_path, "api_listen": "0.0.0.0:9090"}
    assert OperatorSettings(**base, operator_namespace="ops").pipeline_binaries_url() == \
        "http://pipeline-operator.ops.svc:9090"
    cert = tmp_path / "c.pem"
    assert OperatorSettings(**base, operator_namespace="ops", api_tls_cert=cert, api_tls_key=cert
                            ).pipeline_binaries_url() == "https://pipeline-operator.ops.svc:9090"
    assert OperatorSettings(**base, operator_namespace="").pipeline_binaries_url() == "http://127.0.0.1:9090"
    assert OperatorSettings(**base, operator_url="http://op.example:80/").pipeline_binaries_url() == \
        "http://op.example:80"
    with pytest.raises(ValueError, match="--api-listen cannot be off"):
        OperatorSettings(**{**base, "api_listen": "off"})
    with pytest.raises(ValueError, match="operator_url"):
        OperatorSettings(**base, operator_url="http://op.example/path?x")
