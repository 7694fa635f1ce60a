"""Running the real operator (``pipeline-operator run``) against the test API server."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .conftest import Cluster

_LOGS = itertools.count(1)


def fresh_log_path(directory: Path) -> Path:
    """A log file no other process of this test run writes to: two operators started in the same
    millisecond must not share (and overwrite) one file."""
    return directory / f"operator-{int(time.time() * 1000)}-{os.getpid()}-{next(_LOGS)}.log"


FAST = ["--monitor-interval", "0.5", "--transition-monitor-interval", "0.25", "--pipeline-debug-routes"]


class OperatorProcess:
    """One ``pipeline-operator run`` process, its log file and its state directory."""

    def __init__(self, cluster: Cluster | None, namespace: str | None, state_dir: Path, args: list[str],
                 kubeconfig: Path | None = None) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.state_dir = state_dir
        self.args = args
        self.kubeconfig = kubeconfig or cluster.kubeconfig  # type: ignore[union-attr]
        self.log_path = fresh_log_path(state_dir)
        self.proc: subprocess.Popen | None = None
        from pipeline_operator_dev.controlplane import free_port
        self.api_port = free_port()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start(self) -> OperatorProcess:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = fresh_log_path(self.state_dir)
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        scope = ["--namespace", self.namespace] if self.namespace else ["--all-namespaces"]
        cmd = [sys.executable, "-m", "pipeline_operator.cli", "run", *scope,
               "--state-dir", str(self.state_dir), "--event-store", str(self.state_dir / "events.sqlite"),
               "--api-listen", f"127.0.0.1:{self.api_port}", *FAST, *self.args]
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"operator did not stop within {timeout}s after {sig}:\n{self.log()[-3000:]}") from None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def assert_alive(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, f"operator exited:\n{self.log()[-4000:]}"

    def pipeline_processes(self, uid: str) -> list[int]:
        """Live pipeline processes of one pipeline (found by their configuration file, in the pipeline's
        folder, whose name holds its uid)."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if b"--config-file" in cmdline and any(uid.encode() in arg for arg in cmdline) and state != "Z":
                found.append(int(entry.name))
        return found


class InProcessOperator(OperatorProcess):
    """The operator run in this test process: the settings ``pipeline-operator run`` makes of the same
    arguments, given to the same ``run`` the command calls, on an event loop of its own thread, and
    stopped through its stop flag (as SIGTERM stops the process). Its log lines go to its log file.

    For the tests that are not about the process: no interpreter to start for each operator, and its
    failures show in the test's own traceback. Signals, SIGKILL, exit codes of the command, another
    kubeconfig (a service account's) and the process's memory need :class:`OperatorProcess`.
    """

    _count = itertools.count(1)

    def start(self) -> InProcessOperator:
        import asyncio
        import logging
        import threading

        import kubernetes

        from pipeline_operator import cli
        from pipeline_operator.controller import wiring

        if self.cluster is None or self.kubeconfig != self.cluster.kubeconfig:
            raise ValueError("an operator with another kubeconfig runs as a process (OperatorProcess)")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = fresh_log_path(self.state_dir)
        scope = ["--namespace", self.namespace] if self.namespace else ["--all-namespaces"]
        argv = [*scope, "--state-dir", str(self.state_dir), "--event-store", str(self.state_dir / "events.sqlite"),
                "--api-listen", f"127.0.0.1:{self.api_port}", *FAST, *self.args]
        with cli.run.make_context("run", argv) as context:
            settings = cli.load_settings(**context.params)
        # The client reads the kubeconfig named here when it is made (the test cluster's, as the
        # process gets it through KUBECONFIG).
        kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION = str(self.kubeconfig)
        self._handler = logging.FileHandler(self.log_path)
        self._handler.setFormatter(cli.log_formatter(settings))
        root = logging.getLogger()
        root.addHandler(self._handler)
        if root.level > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)
        verbose = settings.verbose  # as cli.setup_logging, without replacing the test run's own handlers
        if verbose:
            root.setLevel(logging.DEBUG)
        for noisy in ("kopf.objects", "kopf._core", "kopf._cogs", "aiohttp.access", "urllib3"):
            logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)
        logging.getLogger("urllib3.connectionpool").setLevel(logging.DEBUG if verbose else logging.ERROR)
        logging.getLogger("aiohttp.server").setLevel(logging.DEBUG if verbose else logging.CRITICAL)
        self.code: int | None = None
        factory = cli._loop_factory(settings.event_loop)  # uvloop unless --event-loop asyncio, as the command
        self._loop = factory() if factory is not None else asyncio.new_event_loop()
        self._stop_flag: asyncio.Event | None = None
        started = threading.Event()

        def main() -> None:
            asyncio.set_event_loop(self._loop)

            async def operate() -> None:
                self._stop_flag = asyncio.Event()
                started.set()
                await wiring.run(settings, stop_flag=self._stop_flag)
            try:
                self._loop.run_until_complete(operate())
                self.code = 0
            except wiring.LeadershipLost:
                self.code = 3
            except BaseException:  # noqa: BLE001 - reported as the process reports it: a traceback, exit 1
                logging.getLogger("pipeline_operator").exception("the operator failed")
                self.code = 1
            finally:
                started.set()
                self._loop.run_until_complete(self._loop.shutdown_asyncgens())
                self._loop.close()

        self._thread = threading.Thread(target=main, name=f"operator-{next(self._count)}", daemon=True)
        self._thread.start()
        started.wait(30)
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if sig not in (signal.SIGTERM, signal.SIGINT):
            raise ValueError(f"an operator in the test process stops as on SIGTERM, not on {sig}")
        if self._thread.is_alive() and self._stop_flag is not None:
            self._loop.call_soon_threadsafe(self._stop_flag.set)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"operator did not stop within {timeout}s after {sig}:\n{self.log()[-3000:]}")
        self._detach_log()
        assert self.code is not None
        return self.code

    def _detach_log(self) -> None:
        import logging
        if self._handler in logging.getLogger().handlers:
            logging.getLogger().removeHandler(self._handler)
            self._handler.close()

    def kill(self) -> None:
        raise TypeError("an operator in the test process cannot be killed: start it as an OperatorProcess")

    def running(self) -> bool:
        return self._thread.is_alive()

    def assert_alive(self) -> None:
        assert self._thread.is_alive(), f"operator exited:\n{self.log()[-4000:]}"


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 30.0, interval: float = 0.2,
             operator: OperatorProcess | None = None) -> Any:
    """Poll ``probe`` until it returns something truthy; fail with the last value and the log."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        if operator is not None:
            operator.assert_alive()
        time.sleep(interval)
    tail = operator.log()[-4000:] if operator is not None else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}\n{tail}")


class Pipelines:
    """Pipelines of one namespace through kubectl."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        self.cluster = cluster
        self.namespace = namespace

    def create(self, name: str, spec: dict[str, Any], annotations: dict[str, str] | None = None) -> dict:
        obj = {"apiVersion": "dataflow.dev/v1alpha1", "kind": "Pipeline",
               "metadata": {"name": name, "namespace": self.namespace, "annotations": annotations or {}},
               "spec": spec}
        self.cluster.kubectl("create", "-f", "-", input=json.dumps(obj))
        return self.get(name)

    def get(self, name: str) -> dict:
        return self.cluster.get("pipeline", name, self.namespace)

    def status(self, name: str) -> dict:
        return self.get(name).get("status") or {}

    def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        self.cluster.kubectl("patch", "pipeline", name, "-n", self.namespace, "--type=merge",
                             "-p", json.dumps({"spec": spec}))

    def annotate(self, name: str, key: str, value: str) -> None:
        self.cluster.kubectl("annotate", "--overwrite", "pipeline", name, "-n", self.namespace, f"{key}={value}")

    def delete(self, name: str, wait: bool = True) -> None:
        self.cluster.kubectl("delete", "pipeline", name, "-n", self.namespace, f"--wait={str(wait).lower()}",
                             "--timeout=60s")

    def wait_status(self, name: str, operator: OperatorProcess | None = None, timeout: float = 30.0,
                    **expected: Any) -> dict:
        """Wait until every ``expected`` status field (camelCase) has the given value."""
        def reached(obj: dict | None) -> dict | None:
            status = (obj or {}).get("status") or {}
            return status if all(status.get(k) == v for k, v in expected.items()) else None
        return self.watch(name, reached, f"{name} to have {expected}", timeout, operator)

    def watch(self, name: str, until: Callable[[dict | None], Any], what: str, timeout: float = 30.0,
              operator: OperatorProcess | None = None) -> Any:
        """Wait on a watch of the Pipeline until ``until(object)`` is truthy (None while it does not exist)."""
        return self.cluster.watch_until("pipeline", name, self.namespace, until, what, timeout,
                                        alive=operator.assert_alive if operator is not None else None,
                                        tail=(lambda: operator.log()[-4000:]) if operator is not None else str)

    def a_later_pass(self, name: str, operator: OperatorProcess, timeout: float = 30.0) -> dict:
        """Prove that ``operator`` is alive and has decided about ``name`` after this moment.

        Sets ``spec.description`` to a new value: a new generation that changes only client
        metadata, to which the lifecycle does not react (no restart, no dismissal of an error, no
        release of a stop the system set, no recompilation). Waits until the status, and each of
        its conditions, says that generation was observed: a monitoring pass ran after this call,
        with everything that happened before it in view. A "nothing happened" check made after
        this cannot pass merely because the operator was slow or dead. Returns that status.
        """
        marker = f"looked at {time.time_ns()}"
        patched = self.cluster.kubectl("patch", "pipeline", name, "-n", self.namespace, "--type=merge", "-o", "json",
                                       "-p", json.dumps({"spec": {"description": marker}}))
        generation = json.loads(patched.stdout)["metadata"]["generation"]

        def observed(obj: dict | None) -> dict | None:
            status = (obj or {}).get("status") or {}
            generations = [status.get("observedGeneration") or 0,
                           *((c.get("observedGeneration") or 0) for c in status.get("conditions") or [])]
            return status if min(generations) >= generation else None
        return self.watch(name, observed, f"a monitoring pass of {name} that observes generation {generation}",
                          timeout, operator)

    def changes_since(self, name: str, resource_version: str, until: Callable[[dict], bool],
                      timeout: float = 30.0) -> list[dict]:
        """Every stored version of the Pipeline after ``resource_version``, oldest first, up to and
        including the first for which ``until`` holds (a watch from that resource version)."""
        import kubernetes
        configuration = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(str(self.cluster.kubeconfig), client_configuration=configuration)
        with kubernetes.client.ApiClient(configuration) as client:
            api = kubernetes.client.CustomObjectsApi(client)
            seen: list[dict] = []
            watch = kubernetes.watch.Watch()
            for event in watch.stream(api.list_namespaced_custom_object, "dataflow.dev", "v1alpha1", self.namespace,
                                      "pipelines", field_selector=f"metadata.name={name}",
                                      resource_version=resource_version, timeout_seconds=int(timeout)):
                seen.append(event["object"])
                if until(event["object"]):
                    watch.stop()
                    return seen
        raise AssertionError(f"no version of {name} after {resource_version} satisfied the condition within "
                             f"{timeout}s; saw {len(seen)}: {[o['metadata']['resourceVersion'] for o in seen]}")


def sequence(history: list[dict], *fields: str) -> list[tuple]:
    """The history oldest first, as tuples of the given fields, consecutive duplicates removed."""
    out: list[tuple] = []
    for entry in reversed(history):
        row = tuple(entry.get(f) for f in fields)
        if not out or out[-1] != row:
            out.append(row)
    return out
