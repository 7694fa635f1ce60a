"""Shared fixtures: the real control plane (etcd + kube-apiserver), kubectl, and kstatus checks."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from pipeline_operator.controller.crd import DEFAULT_PATH
from pipeline_operator_dev import builds, controlplane

from . import postgres
from .fake_kubelet import FakeKubelet
from .kstatus import KStatusTracker

REPO = Path(__file__).resolve().parent.parent
CRD_FILE = REPO / DEFAULT_PATH


# How a test names a kind (as kubectl does) -> where the API server serves it: (API path, plural, namespaced).
_KINDS: dict[str, tuple[str, str, bool]] = {
    "pipeline": ("/apis/dataflow.dev/v1alpha1", "pipelines", True),
    "statefulset": ("/apis/apps/v1", "statefulsets", True),
    "deployment": ("/apis/apps/v1", "deployments", True),
    "pod": ("/api/v1", "pods", True),
    "pvc": ("/api/v1", "persistentvolumeclaims", True),
    "configmap": ("/api/v1", "configmaps", True),
    "secret": ("/api/v1", "secrets", True),
    "service": ("/api/v1", "services", True),
    "ns": ("/api/v1", "namespaces", False),
    "namespace": ("/api/v1", "namespaces", False),
    "networkpolicy": ("/apis/networking.k8s.io/v1", "networkpolicies", True),
    "lease": ("/apis/coordination.k8s.io/v1", "leases", True),
    "crd": ("/apis/apiextensions.k8s.io/v1", "customresourcedefinitions", False),
}


class NotFound(LookupError):
    """The object a test read does not exist."""


class Cluster:
    """The API server the tests talk to, with kubectl bound to it.

    Reads and waits go to the API server directly (:meth:`get`, :meth:`watch_until`): a kubectl process
    per poll would cost a process start each time. Tests about kubectl itself use :meth:`kubectl`.
    """

    def __init__(self, binaries: builds.Binaries, plane: controlplane.ControlPlane) -> None:
        self.binaries = binaries
        self.plane = plane
        self._client: Any = None

    @property
    def client(self) -> Any:
        """A kubernetes ApiClient as the admin user (made on first use, per process)."""
        if self._client is None:
            configuration = kubernetes.client.Configuration()
            kubernetes.config.load_kube_config(str(self.kubeconfig), client_configuration=configuration)
            self._client = kubernetes.client.ApiClient(configuration)
        return self._client

    def path(self, kind: str, name: str | None = None, namespace: str | None = None) -> str:
        group, plural, namespaced = _KINDS[kind]
        where = f"{group}/namespaces/{namespace}/{plural}" if namespaced and namespace else f"{group}/{plural}"
        return f"{where}/{name}" if name else where

    def open(self, path: str, query: list[tuple[str, Any]], timeout: Any = 30) -> Any:
        """A GET of the API server, its body not read yet (a urllib3 response); :class:`NotFound` for a 404,
        :class:`kubernetes.client.ApiException` for another failure."""
        method, url, headers, _, _ = self.client.param_serialize(
            "GET", path, query_params=query, header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"])
        response = self.client.call_api(method, url, header_params=headers, _request_timeout=timeout).response
        if not 200 <= response.status < 300:
            body = response.read()
            response.release_conn()
            if response.status == 404:
                raise NotFound(path)
            raise kubernetes.client.ApiException(status=response.status, reason=body.decode(errors="replace"))
        return response

    def read(self, path: str, **query: Any) -> dict:
        """GET a path of the API server as JSON; :class:`NotFound` for a 404."""
        response = self.open(path, list(query.items()))
        try:
            return json.loads(response.read())
        finally:
            response.release_conn()

    @property
    def kubeconfig(self) -> Path:
        assert self.plane.kubeconfig is not None
        return self.plane.kubeconfig

    def kubectl(self, *args: str, user: str = "admin", input: str | None = None,
                check: bool = True) -> subprocess.CompletedProcess:
        return self.plane.kubectl(*args, user=user, input=input, check=check)

    def apply(self, obj: dict, *, check: bool = True, user: str = "admin") -> subprocess.CompletedProcess:
        return self.kubectl("apply", "-f", "-", input=json.dumps(obj), check=check, user=user)

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict:
        """One object, read from the API server (kubectl's kind names; others through ``kubectl get``)."""
        if kind in _KINDS:
            try:
                return self.read(self.path(kind, name, namespace))
            except RecursionError:  # nested deeper than json decodes (a hostile spec's managedFields, say)
                pass
        # kubectl's view (it leaves managedFields out, as a user sees the object)
        args = ["get", kind, name, "-o", "json"]
        if namespace:
            args += ["-n", namespace]
        return json.loads(self.kubectl(*args).stdout)

    def watch_until(self, kind: str, name: str, namespace: str | None, until: Callable[[dict | None], Any],
                    what: str, timeout: float = 30.0, alive: Callable[[], None] | None = None,
                    tail: Callable[[], str] = str) -> Any:
        """Wait on a watch until ``until(object)`` is truthy (the object is None while it does not
        exist) and return that value: each version of the object is looked at once, as it is stored,
        with no polling. ``alive`` is called between short watches (it raises when, e.g., the operator
        died); the failure names ``what``, the last version seen and ``tail()``."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            try:
                obj: dict | None = self.get(kind, name, namespace)
            except NotFound:
                obj = None
            result = until(obj)
            if result:
                return result
            last = obj
            rv = ((obj or {}).get("metadata") or {}).get("resourceVersion")
            if rv is None:  # not there yet: a list gives the version to watch from
                rv = self.read(self.path(kind, None, namespace), fieldSelector=f"metadata.name={name}",
                               limit=1)["metadata"]["resourceVersion"]
            while True:
                if alive is not None:
                    alive()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}\n{tail()}")
                try:
                    response = self.open(self.path(kind, None, namespace),
                                         [("watch", "true"), ("fieldSelector", f"metadata.name={name}"),
                                          ("resourceVersion", rv), ("allowWatchBookmarks", "true"),
                                          ("timeoutSeconds", max(1, min(5, int(left))))], timeout=(5, 10))
                except kubernetes.client.ApiException as exc:
                    if exc.status == 410:  # too old: read again
                        break
                    raise
                gone = False
                try:
                    for line in response:
                        try:
                            event = json.loads(line)
                        except RecursionError:  # too deep to decode here: the object as kubectl shows it
                            event = {"type": "MODIFIED", "object": self.get(kind, name, namespace)}
                        if event.get("type") == "ERROR":
                            gone = True
                            break
                        obj = event.get("object") or {}
                        rv = (obj.get("metadata") or {}).get("resourceVersion", rv)
                        if event.get("type") == "BOOKMARK":
                            continue
                        current = None if event.get("type") == "DELETED" else obj
                        result = until(current)
                        if result:
                            return result
                        last = current
                finally:
                    response.release_conn()
                if gone:
                    break


@pytest.fixture(scope="session")
def binaries() -> builds.Binaries:
    return builds.ensure_binaries()


@pytest.fixture(scope="session")
def cluster(binaries: builds.Binaries) -> Iterator[Cluster]:
    """A real etcd + kube-apiserver for the whole test session, stopped at the end."""
    plane = controlplane.ControlPlane(binaries)
    plane.start()
    try:
        yield Cluster(binaries, plane)
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def crd_installed(cluster: Cluster) -> Cluster:
    """The generated CRD, applied and Established."""
    cluster.kubectl("apply", "-f", str(CRD_FILE))
    controlplane.wait_established(cluster.kubectl)
    return cluster


_ns_counter = iter(range(1, 1_000_000))


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> str:
    """A fresh namespace per test (namespaces are never removed: there is no namespace controller)."""
    base = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40].strip("-")
    name = f"t{next(_ns_counter)}-{base}"[:63].strip("-")
    cluster.kubectl("create", "namespace", name)
    return name


@pytest.fixture
def kstatus(cluster: Cluster) -> Iterator[KStatusTracker]:
    """Every Pipeline a test registers is checked by the kstatus rules when the test ends."""
    tracker = KStatusTracker(cluster.get)
    yield tracker
    tracker.verify()


# The files that take longest (seconds of one worker, measured on a 2-core machine; docs/benchmarks.md,
# "The test suite"), longest first. The suite's workers take one file each at a time, in collection order:
# starting these first keeps one of them from being the last file left while the other workers are idle.
LONGEST_FILES = (
    "tests/test_api_fuzz.py",
    "tests/faults/test_pipeline_faults.py",
    "tests/test_feldera_sdk.py",
    "tests/faults/test_store_faults.py",
    "tests/test_monitor_events.py",
    "tests/test_kubernetes_backend.py",
    "tests/test_operator_lifecycle.py",
    "tests/test_container_image.py",
    "tests/test_api.py",
    "tests/test_api_hardening.py",
    "tests/test_outage.py",
    "tests/faults/test_control_plane_faults.py",
    "tests/test_sharding.py",
    "tests/test_store_faults.py",
    "tests/test_readme.py",
    "tests/test_controlplane.py",
    "tests/test_image.py",
    "tests/test_feldera_engine.py",
    "tests/test_leader_election.py",
)


# Fixtures that start processes of the test environment: a test using any of them (directly or through
# another fixture) is an integration test, outside `make check`'s inner loop.
INTEGRATION_FIXTURES = frozenset({"binaries", "cluster", "postgres_server", "image", "operators", "kubelet",
                                  "built_wheel", "runtime_env"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the integration tests (``-m "not integration"`` is `make check`'s quick set); the longest files
    first (:data:`LONGEST_FILES`), the others after them in their own order."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & INTEGRATION_FIXTURES or any(item.get_closest_marker(name) is not None
                                                 for name in ("apiserver", "image", "feldera", "faults")):
            item.add_marker(pytest.mark.integration)
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}

    def order(item: pytest.Item) -> int:
        return rank.get(Path(item.path).relative_to(REPO).as_posix(), len(rank))
    items.sort(key=order)  # stable: a file's tests keep their order


def pytest_report_header(config: pytest.Config) -> str:
    assets = os.environ.get("KUBEBUILDER_ASSETS", "")
    return f"control-plane cache: {builds.cache_root()} (KUBEBUILDER_ASSETS={assets})"


def _kill_pipeline_processes_under(folder: Path) -> None:
    """Pipeline processes outlive the operator by design; tests clean up theirs."""
    import signal as _signal

    from pipeline_operator.backends.local import processes_under
    for pid in processes_under(folder):
        try:
            os.kill(pid, _signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def operators(crd_installed: Cluster, tmp_path: Path):
    """Start operators: ``operators(namespace, *args)``; all are stopped afterwards. Each runs in this
    test process (:class:`~tests.operator_harness.InProcessOperator`) unless the test is about the process
    (``process=True``: signals, SIGKILL, exit codes, its memory) or gives another ``kubeconfig``."""
    from .operator_harness import InProcessOperator, OperatorProcess
    started: list[OperatorProcess] = []

    def start(namespace: str, *args: str, state_dir: Path | None = None, kubeconfig: Path | None = None,
              process: bool = False):
        kind = OperatorProcess if process or kubeconfig not in (None, crd_installed.kubeconfig) else InProcessOperator
        op = kind(crd_installed, namespace, state_dir or tmp_path / "state", list(args), kubeconfig)
        started.append(op.start())
        return op

    yield start
    for op in started:
        if op.running():
            op.stop()
        if isinstance(op, InProcessOperator):
            op._detach_log()
    _kill_pipeline_processes_under(tmp_path)


@pytest.fixture
def kubelet(cluster: Cluster, namespace: str, tmp_path: Path) -> Iterator[FakeKubelet]:
    """The stand-in kubelet for the Kubernetes backend's pods in ``namespace`` (tests/fake_kubelet.py)."""
    k = FakeKubelet(cluster.kubeconfig, namespace, tmp_path / "kubelet")
    k.start()
    yield k
    k.stop()
    assert not k.errors, k.errors


@pytest.fixture
def pipelines(crd_installed: Cluster, namespace: str):
    from .operator_harness import Pipelines
    return Pipelines(crd_installed, namespace)


# -- PostgreSQL: the event store's second backend ----------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[postgres.PostgresServer]:
    """A real PostgreSQL server for the whole test session (tests/postgres.py), removed at the end.
    Where PostgreSQL cannot run, the tests that need it are skipped, except in CI (``CI=true``): there
    that is a failure, not a silent skip."""
    try:
        server = postgres.start()
    except postgres.Unavailable as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and {exc}", pytrace=False)
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        server.remove()


_database_counter = iter(range(1, 1_000_000))


@pytest.fixture
def postgres_url(postgres_server: postgres.PostgresServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh database for one test (pytest-postgresql's janitor creates it and drops it afterwards),
    as the operator is given it: a URL without the password, which is in PGPASSWORD."""
    from pytest_postgresql.janitor import DatabaseJanitor
    name = f"events_{next(_database_counter)}"
    monkeypatch.setenv("PGPASSWORD", postgres_server.password)
    with DatabaseJanitor(user=postgres.ROLE, host=postgres_server.host, port=postgres_server.port, dbname=name,
                         password=postgres_server.password, connection_timeout=10):
        yield postgres_server.url(name)
