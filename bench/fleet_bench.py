"""Fleet benchmark: many Pipelines on the real API server, against the no-op Kopf floor.

    .venv/bin/python bench/fleet_bench.py [--pipelines 1000] [--idle-seconds 120] [--json PATH]

Everything runs on this machine: its own etcd + kube-apiserver, PostgreSQL (as the unprivileged
``postgres`` user, tests/postgres.py), the reference pipeline process in fleet mode serving every
pipeline (``bench/fleet_process.py``), and a stand-in kubelet for it (tests/fake_kubelet.py
``FleetKubelet``): the operator (``pipeline-operator run --backend kubernetes``, default intervals)
creates each pipeline's StatefulSet, PVC, ConfigMap, Service and Secret as in a cluster, and reaches
the pipeline at its pod's IP: the loopback address the fleet serves it at.

Phases, in one run:

1. ``--pipelines`` Pipelines are created at once (desired Provisioned); the time until all are Running.
2. Idle: with every pipeline Running and the kubelet paused, over ``--idle-seconds``: the operator's CPU
   (seconds per minute, from /proc/<pid>/stat) and RSS (largest VmRSS), and the API server's
   ``apiserver_request_total`` (reads: GET and LIST; watches apart; writes: the other verbs), per
   pipeline-hour; the operator's own counters over the window.
3. Spec change -> status write: ``spec.description`` of ``--latency-samples`` pipelines, one at a time
   (a new generation the lifecycle does not act on), timed from the patch's answer to the first watch
   event whose ``status.observedGeneration`` is the new generation; p50/p99.
4. The Kopf floor (bench/fleet_kopf_floor.py: a no-op 2.5 s timer per object), run alone (the operator
   stopped) against the same Pipelines over the same window length: CPU, RSS and API requests.
5. Failover: two operators with ``--leader-election`` and the PostgreSQL event store; once the leader
   has observed every pipeline, it is SIGKILLed while one ``spec.description`` per second is patched:
   the time until the standby's first status write (a watch event whose status changed). Afterwards,
   per pipeline: events in PostgreSQL duplicated (same id, or same time and statuses), events of
   ``status.history`` missing from PostgreSQL (lost), and whether any Pipeline ever had two
   StatefulSets or two running workloads.

It prints a table of the figures (and ratios to the floor), and writes them as JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import kubernetes

from pipeline_operator_dev import builds, controlplane

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests import postgres  # noqa: E402
from tests.fake_kubelet import FleetKubelet  # noqa: E402

NAMESPACE = "fleet"
GROUP, VERSION, PLURAL = "dataflow.dev", "v1alpha1", "pipelines"
SQL = "CREATE TABLE t (x INT); CREATE VIEW v AS SELECT x FROM t;"
READ_VERBS = ("GET", "LIST")
WATCH_VERBS = ("WATCH", "WATCHLIST")
# What the API server itself does while nothing else runs, left out of the measured process's figures
# and shown apart: its endpoints reconciler and identity Lease (every 10 s; the operators of the failover
# phase use a Lease too, but no idle window runs them), and its own informers' cluster-wide requests
# (re-watches every 5-10 minutes): the processes measured watch one namespace, they make no
# cluster-scoped request.
APISERVER_OWN = frozenset({"endpoints", "endpointslices", "leases"})
EMISSION_MINIMUM = 12  # writes per idle pipeline-hour: 6 heartbeats (10 min), each a status write and an Event
HEARTBEAT_SECONDS = 600.0  # the operator's default --heartbeat-interval
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# The fleet mode of the reference pipeline process, bound to loopback with its port in a file.
FLEET_MAIN = [sys.executable, str(REPO / "bench" / "fleet_process.py"), "--log-info"]


def image_env(name: str) -> str:
    """An ``ENV`` the image sets (the Dockerfile's last stage): the benchmark runs the operator as shipped."""
    found = [line.split("=", 1)[1].strip() for line in (REPO / "Dockerfile").read_text().splitlines()
             if line.startswith(f"ENV {name}=")]
    if not found:
        raise SystemExit(f"the Dockerfile sets no {name}")
    return found[-1]


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def wait_until(what: str, probe: Callable[[], Any], timeout: float, every: float = 0.5,
               progress: Callable[[], str] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    shown = time.monotonic()
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}"
                             + (f" ({progress()})" if progress else ""))
        if progress is not None and time.monotonic() - shown >= 10:
            say(f"  ... {progress()}")
            shown = time.monotonic()
        time.sleep(every)


class FleetControlPlane(controlplane.ControlPlane):
    """The tests' control plane with room for a Service per pipeline: their /24 of ClusterIPs holds 253."""

    SERVICE_CIDR = "10.0.0.0/16"

    def _spawn(self, name: str, cmd: list[str], replace: subprocess.Popen | None = None) -> subprocess.Popen:
        cmd = [f"--service-cluster-ip-range={self.SERVICE_CIDR}" if a.startswith("--service-cluster-ip-range=")
               else a for a in cmd]
        return super()._spawn(name, cmd, replace)


# -- measuring -------------------------------------------------------------------------------------


def api_requests(plane: controlplane.ControlPlane) -> dict[tuple[str, str, str], float]:
    """``apiserver_request_total`` summed by (verb, resource[/subresource], scope), resource requests only."""
    context = ssl.create_default_context(cafile=str(plane.ca_file))
    request = urllib.request.Request(f"{plane.server}/metrics",
                                     headers={"Authorization": f"Bearer {plane.users['admin'].token}"})
    with urllib.request.urlopen(request, context=context, timeout=30) as r:
        text = r.read().decode()
    counts: dict[tuple[str, str, str], float] = {}
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
        if not labels.get("resource"):
            continue  # /metrics, /readyz, discovery: not the operator's work
        what = labels["resource"] + ("/" + labels["subresource"] if labels.get("subresource") else "")
        key = (labels.get("verb", ""), what, labels.get("scope", ""))
        counts[key] = counts.get(key, 0) + float(line.rsplit(" ", 1)[1])
    return counts


def request_rates(before: dict[tuple[str, str, str], float], after: dict[tuple[str, str, str], float],
                  pipelines: int, seconds: float) -> dict[str, Any]:
    """Requests of a window per pipeline-hour: reads, watches, writes, and each (verb, resource)."""
    every = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) - before.get(k, 0) > 0}
    diff = {k: v for k, v in every.items() if k[1] not in APISERVER_OWN and k[2] != "cluster"}
    scale = 3600 / seconds / pipelines

    def total(verbs: Callable[[str], bool]) -> float:
        return sum(v for (verb, _, _), v in diff.items() if verbs(verb))
    reads = total(lambda v: v in READ_VERBS)
    watches = total(lambda v: v in WATCH_VERBS)
    writes = total(lambda v: v not in READ_VERBS and v not in WATCH_VERBS)
    return {"reads": reads, "watches": watches, "writes": writes,
            "reads_per_pipeline_hour": reads * scale, "watches_per_pipeline_hour": watches * scale,
            "writes_per_pipeline_hour": writes * scale,
            "by_request": {f"{verb} {what}": count for (verb, what, _), count in sorted(diff.items())},
            "apiserver_own": {f"{verb} {what} ({scope})": count for (verb, what, scope), count
                              in sorted(every.items()) if (verb, what, scope) not in diff}}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def idle_window(plane: controlplane.ControlPlane, pid: int, pipelines: int, seconds: float,
                metrics_url: str | None = None) -> dict[str, Any]:
    """CPU, RSS and API requests of process ``pid`` over ``seconds`` (nothing else talks to the API server)."""
    counters_before = operator_counters(metrics_url) if metrics_url else {}
    before = api_requests(plane)
    cpu_before, started = cpu_seconds(pid), time.monotonic()
    rss = [rss_mb(pid)]
    while (left := seconds - (time.monotonic() - started)) > 0:
        time.sleep(min(5.0, left))
        rss.append(rss_mb(pid))
    elapsed = time.monotonic() - started
    cpu = cpu_seconds(pid) - cpu_before
    after = api_requests(plane)
    result = {"seconds": elapsed, "cpu_seconds": cpu, "cpu_seconds_per_minute": cpu / elapsed * 60,
              "rss_mb_max": max(rss), "rss_mb_end": rss[-1], **request_rates(before, after, pipelines, elapsed)}
    if metrics_url:
        counters_after = operator_counters(metrics_url)
        result["operator_counters"] = {k: v - counters_before.get(k, 0) for k, v in counters_after.items()
                                       if v - counters_before.get(k, 0)}
    return result


def operator_metrics(url: str, wanted: Callable[[str], bool]) -> dict[str, float]:
    """The series of the operator's /metrics whose name is ``wanted`` (empty if it does not answer)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            text = r.read().decode()
    except (urllib.error.URLError, OSError):
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if not line.startswith("#") and wanted(name):
            out[line.rsplit(" ", 1)[0]] = float(line.rsplit(" ", 1)[1])
    return out


def operator_counters(url: str) -> dict[str, float]:
    """The operator's own counters (``*_total`` of its /metrics)."""
    return operator_metrics(url, lambda name: name.endswith("_total"))


def wait_for_events_posted(url: str, timeout: float) -> float:
    """Seconds until the operator has no Kubernetes Event left to post (the start's Events are not idle writes)."""
    started = time.monotonic()
    queued = "pipeline_operator_kubernetes_events_queued"
    wait_until("the start's Kubernetes Events to be posted",
               lambda: operator_metrics(url, lambda name: name == queued).get(queued) == 0, timeout,
               progress=lambda: f"{operator_metrics(url, lambda name: name == queued).get(queued)} Events queued")
    return time.monotonic() - started


# -- the Pipelines, as a watch sees them ---------------------------------------------------------


class Watcher(threading.Thread):
    """Every version of the namespace's Pipelines, as they arrive, with the time they arrived."""

    def __init__(self, api: kubernetes.client.CustomObjectsApi) -> None:
        super().__init__(daemon=True, name="pipeline-watch")
        self.api = api
        self.objects: dict[str, dict[str, Any]] = {}
        self.observed_at: dict[tuple[str, int], float] = {}  # (name, observedGeneration) -> first seen
        self.status_writes: list[tuple[float, str]] = []  # (when, name) of every version whose status changed
        self.lock = threading.Lock()
        self.stop_flag = threading.Event()
        self.events = 0
        self.restarts = 0
        self.last_error = ""

    def run(self) -> None:
        version = ""
        while not self.stop_flag.is_set():
            try:
                if not version:
                    listed = self.api.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL)
                    for obj in listed["items"]:
                        self._see(obj)
                    version = listed["metadata"]["resourceVersion"]
                stream = kubernetes.watch.Watch().stream(
                    self.api.list_namespaced_custom_object, GROUP, VERSION, NAMESPACE, PLURAL,
                    resource_version=version, timeout_seconds=300, allow_watch_bookmarks=True)
                for event in stream:
                    obj = event["object"]
                    if event["type"] == "ERROR":
                        version = ""
                        break
                    version = obj["metadata"]["resourceVersion"]
                    self.events += 1
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._see(obj)
                    if self.stop_flag.is_set():
                        return
            except Exception as exc:  # noqa: BLE001 - a broken watch is started again (from a fresh list)
                if self.stop_flag.is_set():
                    return
                self.restarts += 1
                self.last_error = repr(exc)[:200]
                version = ""
                time.sleep(1)

    def _see(self, obj: dict[str, Any]) -> None:
        now = time.monotonic()
        name = obj["metadata"]["name"]
        status = obj.get("status") or {}
        with self.lock:
            old = self.objects.get(name)
            self.objects[name] = obj
            if old is not None and (old.get("status") or {}) != status:
                self.status_writes.append((now, name))
            generation = status.get("observedGeneration")
            if generation is not None:
                self.observed_at.setdefault((name, generation), now)

    def health(self) -> str:
        return f"watch: {self.events} events, {self.restarts} restarts, last error {self.last_error or 'none'}"

    def count(self, **expected: Any) -> int:
        with self.lock:
            return sum(1 for o in self.objects.values()
                       if all((o.get("status") or {}).get(k) == v for k, v in expected.items()))


# -- processes --------------------------------------------------------------------------------------


class Process:
    """A child process with its log, stopped by its own pid only."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        self.out = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self.out, stderr=subprocess.STDOUT, env=env)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> tuple[float, bool]:
        """Stop it with ``sig`` (SIGKILL after ``timeout``): the seconds it took, and whether it was killed."""
        started, killed = time.monotonic(), False
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                killed = True
        self.out.close()
        return time.monotonic() - started, killed

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def readyz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


# -- the benchmark ----------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, plane: controlplane.ControlPlane, db: postgres.PostgresServer,
                 workdir: Path) -> None:
        self.args = args
        self.n = args.pipelines
        self.plane = plane
        self.db = db
        self.workdir = workdir
        configuration = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(str(plane.kubeconfig), client_configuration=configuration)
        configuration.connection_pool_maxsize = 16
        client = kubernetes.client.ApiClient(configuration)
        self.api = kubernetes.client.CustomObjectsApi(client)
        self.coordination = kubernetes.client.CoordinationV1Api(client)
        self.watcher = Watcher(self.api)
        self.processes: list[Process] = []
        self.kubelet: FleetKubelet | None = None
        self.results: dict[str, Any] = {"pipelines": self.n, "idle_seconds": args.idle_seconds}
        self.event_store = db.url("fleet_events")
        # MALLOC_ARENA_MAX as the image sets it (Dockerfile), for the operator and the floor alike.
        self.env = {**os.environ, "KUBECONFIG": str(plane.kubeconfig), "PGPASSWORD": db.password,
                    "MALLOC_ARENA_MAX": image_env("MALLOC_ARENA_MAX")}

    def start(self, name: str, cmd: list[str], **env: str) -> Process:
        process = Process(name, cmd, {**self.env, **env}, self.workdir / f"{name}.log")
        self.processes.append(process)
        return process

    def operator(self, name: str, *extra: str) -> tuple[Process, int]:
        port = controlplane.free_port()
        assert self.kubelet is not None
        cmd = [sys.executable, "-m", "pipeline_operator.cli", "run", "--namespace", NAMESPACE,
               "--backend", "kubernetes", "--pipeline-image", "registry.example/pipeline:1",
               "--pipeline-image-prefix", "registry.example/",
               "--state-dir", str(self.workdir / name), "--event-store", self.event_store,
               # /metrics without a TokenReview per scrape: the API server's requests are what is measured.
               "--api-listen", f"127.0.0.1:{port}", "--metrics-auth", "none", *extra]
        source = {"PYTHONPATH": str(self.args.operator_source / "operator")} if self.args.operator_source else {}
        return self.start(name, cmd, POD_NAME=name, **source), port

    def setup(self) -> None:
        kubectl = self.plane.kubectl
        kubectl("apply", "-f", str(REPO / "crds" / "pipelines.dataflow.dev.yaml"))
        controlplane.wait_established(kubectl)
        kubectl("create", "namespace", NAMESPACE)
        import psycopg
        with psycopg.connect(host=self.db.host, port=self.db.port, user=postgres.ROLE, password=self.db.password,
                             dbname="postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE fleet_events")
        port_file = self.workdir / "fleet.port"
        fleet = self.start("fleet", [*FLEET_MAIN, str(port_file)])
        wait_until("the fleet process to listen", port_file.exists, 60)
        fleet_url = f"http://127.0.0.1:{port_file.read_text().strip()}"
        say(f"fleet process {fleet.pid} at {fleet_url}")
        self.fleet = fleet
        self.kubelet = FleetKubelet(self.plane.kubeconfig, NAMESPACE, self.workdir / "kubelet", fleet_url,
                                    interval=self.args.kubelet_interval)
        self.kubelet.start()
        self.watcher.start()

    @staticmethod
    def alive(process: Process) -> bool:
        if not process.alive():
            raise SystemExit(f"{process.name} exited ({process.proc.returncode}):\n{process.tail()}")
        return True

    def check_kubelet(self) -> None:
        assert self.kubelet is not None
        if self.kubelet.errors:
            raise SystemExit(f"the stand-in kubelet failed: {self.kubelet.errors[:5]}")

    # -- 1. creation -------------------------------------------------------------------------------

    def create_and_run(self) -> None:
        self.main, self.main_port = self.operator("operator")
        wait_until("the operator to be ready", lambda: self.alive(self.main) and readyz(self.main_port) == 200, 120)
        say(f"operator {self.main.pid} ready; creating {self.n} Pipelines (desired Provisioned) ...")
        started = time.monotonic()

        def create(i: int) -> None:
            self.api.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, {
                "apiVersion": f"{GROUP}/{VERSION}", "kind": "Pipeline", "metadata": {"name": f"p{i:04d}"},
                "spec": {"desiredStatus": "Provisioned", "program": {"sql": SQL}}})
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(create, range(self.n)))
        created = time.monotonic() - started
        say(f"created {self.n} in {created:.1f}s; waiting until all are Running ...")

        def progress() -> str:
            self.check_kubelet()
            self.alive(self.main)
            return (f"{self.watcher.count(deploymentStatus='Running')}/{self.n} Running, "
                    f"{len(self.kubelet.ready) if self.kubelet else 0} pods ready, "
                    f"{time.monotonic() - started:.0f}s")
        wait_until(f"{self.n} Pipelines to be Running",
                   lambda: self.watcher.count(deploymentStatus="Running") == self.n,
                   self.args.running_timeout, progress=progress)
        self.results["create_seconds"] = created
        self.results["all_running_seconds"] = time.monotonic() - started
        say(f"all {self.n} Running {self.results['all_running_seconds']:.1f}s after the first create")

    # -- 2. and 3. idle and spec change -> status write -------------------------------------------

    def idle_and_latency(self) -> None:
        assert self.kubelet is not None
        say(f"settling {self.args.settle_seconds:.0f}s (details events of the start), then pausing the kubelet")
        time.sleep(self.args.settle_seconds)
        metrics = f"http://127.0.0.1:{self.main_port}/metrics"
        self.results["events_posted_after_settle_seconds"] = wait_for_events_posted(metrics, 900)
        say(f"the start's Kubernetes Events all posted {self.results['events_posted_after_settle_seconds']:.1f}s "
            "after the settling")
        self.check_kubelet()
        self.kubelet.pause()
        say(f"idle window: {self.args.idle_seconds:.0f}s, only the operator talks to the API server ...")
        self.results["operator_idle"] = idle_window(self.plane, self.main.pid, self.n, self.args.idle_seconds,
                                                    metrics)
        self.results["spec_change_to_status_ms"] = self.spec_change_latency()

    def spec_change_latency(self) -> dict[str, float]:
        samples = min(self.args.latency_samples, self.n)
        step = max(1, self.n // samples)
        say(f"spec change -> status write: spec.description of {samples} pipelines, one at a time ...")
        latencies = []
        missed = 0
        for i in range(samples):
            name = f"p{i * step:04d}"
            marker = f"latency sample {i} at {time.time_ns()}"
            patched = self.api.patch_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name,
                                                              {"spec": {"description": marker}})
            answered = time.monotonic()
            generation = patched["metadata"]["generation"]
            while (seen := self.watcher.observed_at.get((name, generation))) is None:
                if time.monotonic() - answered > self.args.latency_timeout:
                    missed += 1
                    say(f"  {name}: generation {generation} not observed within {self.args.latency_timeout:.0f}s "
                        f"({self.watcher.health()})")
                    seen = time.monotonic()  # counted as the timeout: a lower bound
                    break
                time.sleep(0.002)
            latencies.append((seen - answered) * 1000)
            time.sleep(0.2)
        say(f"  p50 {percentile(latencies, 50):.0f} ms, p99 {percentile(latencies, 99):.0f} ms, {missed} missed")
        return {"samples": samples, "p50": percentile(latencies, 50), "p99": percentile(latencies, 99),
                "max": max(latencies), "missed": missed}

    # -- 4. the Kopf floor -----------------------------------------------------------------------

    def floor(self) -> None:
        say("stopping the operator (SIGTERM); the no-op Kopf floor runs alone against the same Pipelines")
        took, killed = self.main.stop()
        self.results["shutdown"] = {"seconds": took, "killed": killed}
        say(f"  the operator stopped in {took:.1f}s" + (" (killed after 60 s)" if killed else ""))
        floor = self.start("kopf-floor", [sys.executable, "-m", "kopf", "run", "--standalone", "--namespace",
                                          NAMESPACE, str(REPO / "bench" / "fleet_kopf_floor.py")])
        warmup = max(20.0, self.n / 50)
        say(f"floor {floor.pid} warming up {warmup:.0f}s (every timer started) ...")
        time.sleep(warmup)
        if not floor.alive():
            raise SystemExit(f"the Kopf floor exited:\n{floor.tail()}")
        say(f"floor window: {self.args.idle_seconds:.0f}s ...")
        self.results["floor_idle"] = idle_window(self.plane, floor.pid, self.n, self.args.idle_seconds)
        floor.stop()

    # -- 5. failover -------------------------------------------------------------------------------

    def failover(self) -> None:
        assert self.kubelet is not None
        self.kubelet.resume()
        election = ["--leader-election", "--leader-election-namespace", NAMESPACE]
        replicas = [self.operator(f"replica-{i}", *election)[0] for i in range(2)]
        # The Lease names the leader (a standby may be ready too: it serves the API).
        leader = wait_until("a leader", lambda: next((p for p in replicas
                                                      if self.alive(p) and self.lease_holder() == p.name), None), 120)
        standby = next(p for p in replicas if p is not leader)
        say(f"leader {leader.name} ({leader.pid}); making sure it observed every pipeline ...")
        generations = {}
        for i in range(self.n):  # one new generation each: the leader has looked at all once it observed them
            patched = self.api.patch_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, f"p{i:04d}",
                                                              {"spec": {"description": "before the failover"}})
            generations[f"p{i:04d}"] = patched["metadata"]["generation"]
        wait_until("the leader to observe every pipeline",
                   lambda: all(self.watcher.observed_at.get(k) for k in generations.items()), 600,
                   progress=lambda: f"{sum(1 for k in generations.items() if self.watcher.observed_at.get(k))}"
                                    f"/{self.n} observed")
        time.sleep(self.args.settle_seconds)
        stop = threading.Event()
        patches: list[tuple[float, str, int]] = []

        def keep_changing() -> None:
            i = 0
            while not stop.is_set():
                name = f"p{i % self.n:04d}"
                patched = self.api.patch_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name,
                                                                  {"spec": {"description": f"failover {i}"}})
                patches.append((time.monotonic(), name, patched["metadata"]["generation"]))
                i += 1
                stop.wait(1.0)
        changer = threading.Thread(target=keep_changing, daemon=True)
        changer.start()
        time.sleep(3)
        say(f"SIGKILL the leader {leader.name} ({leader.pid}) ...")
        killed = time.monotonic()
        leader.proc.send_signal(signal.SIGKILL)
        leader.proc.wait()
        first = wait_until("the standby's first status write",
                           lambda: next((t for t, _ in list(self.watcher.status_writes) if t > killed), None), 120,
                           every=0.05)
        leads = wait_until("the standby to hold the Lease",
                           lambda: self.lease_holder() == standby.name and time.monotonic(), 120)
        stop.set()
        changer.join()
        self.results["failover"] = {"first_status_write_seconds": first - killed,
                                    "lease_taken_seconds": leads - killed}
        say(f"first status write {first - killed:.1f}s after the SIGKILL; checking every patch was observed ...")
        last = {name: generation for _, name, generation in patches}
        deadline = time.monotonic() + 300
        while not all(self.watcher.observed_at.get(k) for k in last.items()):
            if not standby.alive() or time.monotonic() > deadline:
                # Recorded, not fatal: what is in the store and the statuses is still worth checking.
                why = (f"exited ({standby.proc.returncode})" if not standby.alive() else
                       "did not observe every patch within 300 s")
                self.results["failover"]["new_leader_failed"] = why
                say(f"the new leader {why}:\n{standby.tail(5)}")
                break
            time.sleep(0.5)
        time.sleep(self.args.settle_seconds)
        self.results["failover"].update(self.events_check())
        self.results["failover"]["max_statefulsets_per_pipeline"] = max(self.kubelet.max_workloads.values())
        self.results["failover"]["max_workloads_per_pipeline"] = max(self.kubelet.max_registrations.values())
        standby.stop()

    def lease_holder(self) -> str:
        """The operator process holding the Lease (its identity is ``$POD_NAME`` and a suffix), or ""."""
        try:
            lease = self.coordination.read_namespaced_lease("pipeline-operator", NAMESPACE)
        except kubernetes.client.exceptions.ApiException:
            return ""
        return str(lease.spec.holder_identity or "").rsplit("_", 1)[0]

    def events_check(self) -> dict[str, int]:
        """Events duplicated in PostgreSQL, and events of ``status.history`` missing from it."""
        import psycopg
        with psycopg.connect(self.event_store, password=self.db.password) as conn:
            rows = conn.execute("SELECT pipeline_uid, event_id::text, recorded_at, event_status FROM monitor_event "
                                "WHERE namespace = %s", (NAMESPACE,)).fetchall()
        ids: dict[tuple[str, str], int] = {}
        contents: dict[tuple[str, Any, str], int] = {}
        for uid, event_id, recorded_at, event_status in rows:
            ids[(uid, event_id)] = ids.get((uid, event_id), 0) + 1
            statuses = {k: v for k, v in json.loads(event_status).items() if k not in ("event_id", "recorded_at")}
            key = (uid, recorded_at, json.dumps(statuses, sort_keys=True))
            contents[key] = contents.get(key, 0) + 1
        duplicated = sum(c - 1 for c in ids.values()) + sum(c - 1 for c in contents.values())
        listed = self.api.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL)["items"]
        lost = 0
        history = 0
        for obj in listed:
            uid = obj["metadata"]["uid"]
            for entry in (obj.get("status") or {}).get("history") or []:
                history += 1
                if (uid, entry["eventId"]) not in ids:
                    lost += 1
        return {"events_in_store": len(rows), "events_in_history": history, "events_duplicated": duplicated,
                "events_lost": lost}

    def stop(self) -> None:
        """Stop everything started, each step whatever happened to the one before."""
        self.watcher.stop_flag.set()
        steps: list[Callable[[], None]] = [self.kubelet.stop] if self.kubelet is not None else []
        steps += [process.stop for process in reversed(self.processes)]
        for step in steps:
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - reported, and the next step still runs
                say(f"while stopping: {exc!r}")


# -- the report ---------------------------------------------------------------------------------------


def report(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(figure, value, ratio to the floor, target) rows."""
    ours, floor = results.get("operator_idle", {}), results.get("floor_idle", {})
    rows: list[tuple[str, str, str, str]] = []

    def ratio(key: str) -> str:
        return f"{ours[key] / floor[key]:.2f}x" if floor.get(key) else "-"
    if "all_running_seconds" in results:
        rows.append((f"{results['pipelines']} new Pipelines -> all Running", f"{results['all_running_seconds']:.1f} s",
                     "-", "-"))
    if "events_posted_after_settle_seconds" in results:
        rows.append(("the start's Kubernetes Events posted (after settling)",
                     f"{results['events_posted_after_settle_seconds']:.1f} s", "-", "before the idle window"))
    if ours:
        rows += [
            ("operator CPU, idle Running", f"{ours['cpu_seconds_per_minute']:.2f} s/min",
             ratio("cpu_seconds_per_minute"), "<= 1.5x floor"),
            ("operator RSS, idle Running (max)", f"{ours['rss_mb_max']:.0f} MB", ratio("rss_mb_max"), "< 300 MB"),
            ("API writes per idle pipeline-hour" + (" (window < heartbeat: 0 expected)"
                                                    if ours["seconds"] < HEARTBEAT_SECONDS else ""),
             f"{ours['writes_per_pipeline_hour']:.2f}", ratio("writes_per_pipeline_hour"), f"= {EMISSION_MINIMUM}"),
            ("API reads per idle pipeline-hour (GET+LIST)", f"{ours['reads_per_pipeline_hour']:.2f}",
             ratio("reads_per_pipeline_hour"), "<= 1 beyond watches"),
            ("API watches per idle pipeline-hour", f"{ours['watches_per_pipeline_hour']:.3f}",
             ratio("watches_per_pipeline_hour"), "-"),
        ]
    if floor:
        rows += [
            ("Kopf floor CPU", f"{floor['cpu_seconds_per_minute']:.2f} s/min", "1x", "-"),
            ("Kopf floor RSS (max)", f"{floor['rss_mb_max']:.0f} MB", "1x", "-"),
            ("Kopf floor writes / reads / watches per pipeline-hour",
             f"{floor['writes_per_pipeline_hour']:.2f} / {floor['reads_per_pipeline_hour']:.2f} / "
             f"{floor['watches_per_pipeline_hour']:.3f}", "1x", "writes 0"),
        ]
    latency = results.get("spec_change_to_status_ms")
    if latency:
        rows.append((f"spec change -> status write ({latency['samples']} samples, {latency['missed']} timed out)",
                     f"p50 {latency['p50']:.0f} ms, p99 {latency['p99']:.0f} ms", "-", "p99 < 300 ms"))
    shutdown = results.get("shutdown")
    if shutdown:
        rows.append(("operator SIGTERM -> exited", f"{shutdown['seconds']:.1f} s"
                     + (" (killed after 60 s)" if shutdown["killed"] else ""), "-", "-"))
    failover = results.get("failover")
    if failover:
        rows.append(("failover: SIGKILL -> standby's first status write",
                     f"{failover['first_status_write_seconds']:.1f} s", "-", "< 20 s"))
        rows.append(("failover: SIGKILL -> standby holds the Lease", f"{failover['lease_taken_seconds']:.1f} s",
                     "-", "-"))
        if "new_leader_failed" in failover:
            rows.append(("failover: the new leader afterwards", failover["new_leader_failed"], "-", "keeps leading"))
        if "events_lost" in failover:
            rows.append(("events lost / duplicated", f"{failover['events_lost']} / {failover['events_duplicated']}",
                         "-", "0 / 0"))
            rows.append(("most StatefulSets / workloads for one Pipeline",
                         f"{failover['max_statefulsets_per_pipeline']} / {failover['max_workloads_per_pipeline']}",
                         "-", "1 / 1"))
    return rows


def print_report(results: dict[str, Any]) -> None:
    rows = [("figure", "value", "vs floor", "target"), *report(results)]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    print()
    for i, row in enumerate(rows):
        print("  ".join(cell.ljust(widths[j]) for j, cell in enumerate(row)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    for phase in ("operator_idle", "floor_idle"):
        if phase in results:
            print(f"\n{phase}: API requests over {results[phase]['seconds']:.0f} s")
            for what, count in results[phase]["by_request"].items():
                print(f"  {what}: {count:.0f}")
            own = ", ".join(f"{what} {count:.0f}" for what, count in results[phase]["apiserver_own"].items())
            print(f"  (left out, the API server's own: {own or 'none'})")
    counters = results.get("operator_idle", {}).get("operator_counters")
    if counters:
        print("\noperator's own counters over the idle window:")
        for name, value in sorted(counters.items()):
            print(f"  {name}: {value:.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipelines", type=int, default=1000)
    parser.add_argument("--idle-seconds", type=float, default=120.0,
                        help="length of each idle window (>= 600, the heartbeat interval, to see the idle writes)")
    parser.add_argument("--latency-samples", type=int, default=50)
    parser.add_argument("--latency-timeout", type=float, default=120.0,
                        help="seconds a spec change may go unobserved; a sample that times out counts as this long")
    parser.add_argument("--settle-seconds", type=float, default=15.0,
                        help="pause after a phase before measuring (the details events of a start)")
    parser.add_argument("--running-timeout", type=float, default=3600.0)
    parser.add_argument("--kubelet-interval", type=float, default=1.0,
                        help="seconds between the stand-in kubelet's rounds (each lists every StatefulSet and PVC)")
    parser.add_argument("--skip-failover", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--operator-source", type=Path,
                        help="run the operators from this copy of the repository (e.g. 'git archive HEAD operator "
                        "| tar -x -C DIR'), not from the installed package")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs) afterwards")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped: everything started is stopped too
    workdir = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    say(f"work directory {workdir}")
    binaries = builds.ensure_binaries()
    db = postgres.start()
    bench: Bench | None = None
    try:
        with FleetControlPlane(binaries) as plane:
            bench = Bench(args, plane, db, workdir)
            try:
                bench.setup()
                bench.create_and_run()
                bench.idle_and_latency()
                bench.floor()
                if not args.skip_failover:
                    bench.failover()
            finally:
                bench.stop()
                if args.json:
                    args.json.write_text(json.dumps(bench.results, indent=2, default=str))
                print_report(bench.results)
    finally:
        db.remove()
        if not args.keep:
            import shutil
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
