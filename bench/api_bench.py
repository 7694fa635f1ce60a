"""HTTP API benchmark: the events endpoint under load, and reconciliation beside it.

    .venv/bin/python bench/api_bench.py [--pipelines 100] [--events 720] [--seconds 20] [--connections 16]

A real kube-apiserver and operator (local backend, Stopped pipelines), the event store filled
with 720 events per pipeline, then a separate process drives ``GET /v0/pipelines/{name}/events``
(both selectors, pipelines at random) with authentication on (a real user's token: the
TokenReview and SubjectAccessReview are cached). It prints p50/p99 latency and requests per
second, and the operator's reconciliation latency (a spec change -> the status write that
observes it, seen on a watch) measured without and with that load.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import kubernetes

from pipeline_operator.core.emission import UuidV7, make_event
from pipeline_operator.identity import PipelineKey
from pipeline_operator.models import EventStatus, ProgramStatus, ResourcesDesiredStatus, ResourcesStatus, StorageStatus
from pipeline_operator.store.sqlite import SqliteEventStore
from pipeline_operator_dev import builds, controlplane

REPO = Path(__file__).resolve().parent.parent
SQL = "CREATE TABLE t (x INT);"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def load(url: str, token: str, namespace: str, names: list[str], seconds: float, connections: int,
         out: multiprocessing.Queue) -> None:
    """The load generator, in its own process."""
    import aiohttp

    async def main() -> None:
        latencies: list[float] = []
        errors = 0
        deadline = time.monotonic() + seconds
        headers = {"Authorization": f"Bearer {token}", "Feldera-Tenant": namespace}
        async with aiohttp.ClientSession(headers=headers) as session:
            async def worker() -> None:
                nonlocal errors
                while time.monotonic() < deadline:
                    name = random.choice(names)
                    selector = random.choice(("all", "status"))
                    started = time.perf_counter()
                    async with session.get(f"{url}/v0/pipelines/{name}/events?selector={selector}") as r:
                        body = await r.read()
                        if r.status != 200 or len(json.loads(body)) < 700:
                            errors += 1
                    latencies.append(time.perf_counter() - started)
            await asyncio.gather(*(worker() for _ in range(connections)))
        out.put((latencies, errors))
    asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pipelines", type=int, default=100)
    parser.add_argument("--events", type=int, default=720)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    binaries = builds.ensure_binaries()
    with controlplane.ControlPlane(binaries) as plane, tempfile.TemporaryDirectory() as td:
        plane.kubectl("apply", "-f", str(REPO / "crds" / "pipelines.dataflow.dev.yaml"))
        controlplane.wait_established(plane.kubectl)
        ns = "bench"
        plane.kubectl("create", "namespace", ns)
        plane.kubectl("create", "role", "reader", "-n", ns, "--verb=get,list", "--resource=pipelines.dataflow.dev")
        plane.kubectl("create", "rolebinding", "reader", "-n", ns, "--role=reader", "--user=alice")
        configuration = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(str(plane.kubeconfig), client_configuration=configuration)
        api = kubernetes.client.CustomObjectsApi(kubernetes.client.ApiClient(configuration))
        names = [f"p{i}" for i in range(args.pipelines)]
        keys = []
        for name in names:
            obj = api.create_namespaced_custom_object("dataflow.dev", "v1alpha1", ns, "pipelines", {
                "apiVersion": "dataflow.dev/v1alpha1", "kind": "Pipeline", "metadata": {"name": name},
                "spec": {"desiredStatus": "Stopped", "program": {"sql": SQL}}})
            keys.append(PipelineKey(ns, name, obj["metadata"]["uid"]))
        print(f"filling the store with {args.pipelines} x {args.events} events ...", flush=True)
        store = SqliteEventStore(Path(td) / "events.sqlite", retention=args.events)
        ids = UuidV7()
        status = EventStatus(deployment_resources_status=ResourcesStatus.STOPPED,
                             deployment_resources_desired_status=ResourcesDesiredStatus.STOPPED,
                             program_status=ProgramStatus.SUCCESS, storage_status=StorageStatus.CLEARED)
        t0 = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
        for key in keys:
            store.append(key, [make_event(status, ids(t0 + dt.timedelta(seconds=10 * i)),
                                          t0 + dt.timedelta(seconds=10 * i)) for i in range(args.events)])
        store.close()

        port = controlplane.free_port()
        log = open(Path(td) / "operator.log", "w")
        operator = subprocess.Popen(
            [sys.executable, "-m", "pipeline_operator.cli", "run", "-n", ns, "--state-dir", f"{td}/state",
             "--event-store", f"{td}/events.sqlite", "--events-retention", str(args.events),
             "--api-listen", f"127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "KUBECONFIG": str(plane.kubeconfig)})
        url = f"http://127.0.0.1:{port}"
        try:
            observed: dict[str, int] = {}

            def watch() -> None:
                try:
                    for ev in kubernetes.watch.Watch().stream(api.list_namespaced_custom_object, "dataflow.dev",
                                                              "v1alpha1", ns, "pipelines", timeout_seconds=3600):
                        obj = ev["object"]
                        observed[obj["metadata"]["name"]] = (obj.get("status") or {}).get("observedGeneration", 0)
                except Exception:
                    pass
            threading.Thread(target=watch, daemon=True).start()
            deadline = time.monotonic() + 120
            while sum(1 for n in names if observed.get(n, 0) >= 1) < len(names):
                if time.monotonic() > deadline:
                    raise SystemExit("the operator did not observe every pipeline in time")
                time.sleep(0.5)
            time.sleep(3)

            def reconcile_latency(rounds: int) -> list[float]:
                values = []
                for _ in range(rounds):
                    name = random.choice(names)
                    obj = api.get_namespaced_custom_object("dataflow.dev", "v1alpha1", ns, "pipelines", name)
                    mode = "Force" if obj["spec"].get("stopMode") != "Force" else "Graceful"
                    started = time.monotonic()
                    patched = api.patch_namespaced_custom_object("dataflow.dev", "v1alpha1", ns, "pipelines", name,
                                                                 {"spec": {"stopMode": mode}})
                    generation = patched["metadata"]["generation"]
                    while observed.get(name, 0) < generation:
                        if time.monotonic() - started > 30:
                            raise SystemExit(f"{name}: generation {generation} not observed within 30 s")
                        time.sleep(0.002)
                    values.append(time.monotonic() - started)
                    time.sleep(0.1)
                return values

            quiet = reconcile_latency(40)
            print(f"reconciliation latency without load: p50 {percentile(quiet, 50) * 1000:.0f} ms, "
                  f"p99 {percentile(quiet, 99) * 1000:.0f} ms", flush=True)
            queue: multiprocessing.Queue = multiprocessing.Queue()
            generator = multiprocessing.Process(target=load, args=(url, plane.users["alice"].token, ns, names,
                                                                   args.seconds, args.connections, queue))
            generator.start()
            time.sleep(1)
            busy = reconcile_latency(max(10, int(args.seconds / 0.5) - 4))
            latencies, errors = queue.get(timeout=args.seconds + 120)
            generator.join()
            print(f"events endpoint ({args.events} events, both selectors, {args.pipelines} pipelines, "
                  f"{args.connections} connections, {args.seconds:.0f} s): {len(latencies) / args.seconds:.0f} "
                  f"requests/s, p50 {percentile(latencies, 50) * 1000:.1f} ms, "
                  f"p99 {percentile(latencies, 99) * 1000:.1f} ms, {errors} errors")
            print(f"reconciliation latency under that load: p50 {percentile(busy, 50) * 1000:.0f} ms, "
                  f"p99 {percentile(busy, 99) * 1000:.0f} ms")
        finally:
            operator.send_signal(signal.SIGTERM)
            operator.wait(60)
            log.close()


if __name__ == "__main__":
    main()
