"""Operator benchmark on the real API server, with 50 real pipeline processes (local backend).

    .venv/bin/python bench/reconcile_bench.py [--pipelines 50] [--idle-seconds 660]

It prints:
- reconciliation latency: the time from patching a Pipeline's ``desiredStatus`` to the
  operator's next status write (the watch delivering ``deploymentResourcesDesiredStatus``
  = Provisioned), p50 and p99 over every pipeline, with the operator's default intervals;
- API write requests per idle Provisioned pipeline per hour: the API server's own
  ``apiserver_request_total`` counters (POST, PUT, PATCH, DELETE on pipelines, pipelines/status
  and events) over an idle window, divided by pipelines and scaled to an hour. With the default
  10-minute heartbeat the emission rules allow 6 events an hour, each one status write plus one
  write to the aggregated heartbeat Event: 12 writes.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import kubernetes

from pipeline_operator_dev import builds, controlplane

REPO = Path(__file__).resolve().parent.parent
SQL = "CREATE TABLE t (x INT); CREATE VIEW v AS SELECT x FROM t;"
WRITE_VERBS = ("POST", "PUT", "PATCH", "DELETE")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def write_counters(plane: controlplane.ControlPlane) -> dict[tuple[str, str], float]:
    context = ssl.create_default_context(cafile=str(plane.ca_file))
    request = urllib.request.Request(f"{plane.server}/metrics",
                                     headers={"Authorization": f"Bearer {plane.users['admin'].token}"})
    with urllib.request.urlopen(request, context=context, timeout=10) as r:
        text = r.read().decode()
    counts: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
        if labels.get("verb") not in WRITE_VERBS:
            continue
        resource = labels.get("resource", "")
        if resource not in ("pipelines", "events"):
            continue
        what = resource + ("/" + labels["subresource"] if labels.get("subresource") else "")
        key = (what, labels["verb"])
        counts[key] = counts.get(key, 0) + float(line.rsplit(" ", 1)[1])
    return counts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pipelines", type=int, default=50)
    parser.add_argument("--idle-seconds", type=float, default=660.0)
    args = parser.parse_args()
    n = args.pipelines
    binaries = builds.ensure_binaries()
    with controlplane.ControlPlane(binaries) as plane, tempfile.TemporaryDirectory() as td:
        kubectl = lambda *a, **kw: plane.kubectl(*a, **kw)  # noqa: E731
        kubectl("apply", "-f", str(REPO / "crds" / "pipelines.dataflow.dev.yaml"))
        controlplane.wait_established(kubectl)
        kubectl("create", "namespace", "bench")
        env = {**os.environ, "KUBECONFIG": str(plane.kubeconfig)}
        log = open(Path(td) / "operator.log", "w")
        operator = subprocess.Popen([sys.executable, "-m", "pipeline_operator.cli", "run", "-n", "bench",
                                     "--state-dir", f"{td}/state", "--event-store", f"{td}/events.sqlite"],
                                    stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            configuration = kubernetes.client.Configuration()
            kubernetes.config.load_kube_config(str(plane.kubeconfig), client_configuration=configuration)
            api = kubernetes.client.CustomObjectsApi(kubernetes.client.ApiClient(configuration))
            seen: dict[str, float] = {}
            statuses: dict[str, dict] = {}
            stop = threading.Event()

            def watch() -> None:
                try:
                    follow()
                except Exception:  # the control plane stops at the end
                    if not stop.is_set():
                        raise

            def follow() -> None:
                w = kubernetes.watch.Watch()
                for ev in w.stream(api.list_namespaced_custom_object, "dataflow.dev", "v1alpha1", "bench",
                                   "pipelines", timeout_seconds=3600):
                    obj = ev["object"]
                    name = obj["metadata"]["name"]
                    status = obj.get("status") or {}
                    statuses[name] = status
                    if status.get("deploymentResourcesDesiredStatus") == "Provisioned" and name not in seen:
                        seen[name] = time.monotonic()
                    if stop.is_set():
                        w.stop()
            threading.Thread(target=watch, daemon=True).start()

            print(f"creating {n} Stopped pipelines ...", flush=True)
            for i in range(n):
                api.create_namespaced_custom_object("dataflow.dev", "v1alpha1", "bench", "pipelines", {
                    "apiVersion": "dataflow.dev/v1alpha1", "kind": "Pipeline", "metadata": {"name": f"p{i}"},
                    "spec": {"desiredStatus": "Stopped", "program": {"sql": SQL}}})
            def wait_all(field: str, value: str, timeout: float, what: str) -> None:
                deadline = time.monotonic() + timeout
                while sum(1 for s in statuses.values() if s.get(field) == value) < n:
                    if time.monotonic() > deadline:
                        raise SystemExit(f"pipelines did not {what} in time")
                    time.sleep(0.5)

            wait_all("programStatus", "Success", 120, "compile")
            time.sleep(3)

            print(f"patching desiredStatus of {n} pipelines, one at a time ...", flush=True)
            latencies = []
            for i in range(n):
                name = f"p{i}"
                started = time.monotonic()
                api.patch_namespaced_custom_object("dataflow.dev", "v1alpha1", "bench", "pipelines", name,
                                                   {"spec": {"desiredStatus": "Provisioned"}})
                while name not in seen:
                    if time.monotonic() - started > 30:
                        raise SystemExit(f"{name}: no status write within 30 s")
                    time.sleep(0.002)
                latencies.append(seen[name] - started)
                time.sleep(0.2)
            print(f"reconciliation latency (patch desiredStatus -> next status write seen on a watch), "
                  f"{n} pipelines: p50 {percentile(latencies, 50) * 1000:.0f} ms, "
                  f"p99 {percentile(latencies, 99) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms")

            wait_all("deploymentStatus", "Running", 180, "reach Running")
            time.sleep(5)
            before = write_counters(plane)
            print(f"all {n} Running; counting API writes over {args.idle_seconds:.0f} s idle ...", flush=True)
            time.sleep(args.idle_seconds)
            after = write_counters(plane)
            stop.set()
            diff = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) - before.get(k, 0)}
            total = sum(diff.values())
            per_hour = total / n / args.idle_seconds * 3600
            print(f"API writes while idle: {total:.0f} in {args.idle_seconds:.0f} s for {n} pipelines = "
                  f"{per_hour:.1f} per pipeline per hour")
            for (what, verb), count in sorted(diff.items()):
                print(f"  {verb} {what}: {count:.0f}")
        finally:
            operator.send_signal(signal.SIGTERM)
            operator.wait(60)
            log.close()
            subprocess.run(["pkill", "-f", f"{td}/state"], check=False)


if __name__ == "__main__":
    main()
