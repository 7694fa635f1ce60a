"""Shared fixtures: the real control plane (etcd + kube-apiserver), kubectl, and kstatus checks."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline_operator.controller.crd import DEFAULT_PATH
from pipeline_operator_dev import builds, controlplane

from . import postgres
from .fake_kubelet import FakeKubelet
from .kstatus import KStatusTracker

REPO = Path(__file__).resolve().parent.parent
CRD_FILE = REPO / DEFAULT_PATH


class Cluster:
    """The API server the tests talk to, with kubectl bound to it."""

    def __init__(self, binaries: builds.Binaries, plane: controlplane.ControlPlane) -> None:
        self.binaries = binaries
        self.plane = plane

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
        args = ["get", kind, name, "-o", "json"]
        if namespace:
            args += ["-n", namespace]
        return json.loads(self.kubectl(*args).stdout)


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
    """Start real operator processes: ``operators(namespace, *args)``; all are stopped afterwards."""
    from .operator_harness import OperatorProcess
    started: list[OperatorProcess] = []

    def start(namespace: str, *args: str, state_dir: Path | None = None, kubeconfig: Path | None = None):
        op = OperatorProcess(crd_installed, namespace, state_dir or tmp_path / "state", list(args), kubeconfig)
        started.append(op.start())
        return op

    yield start
    for op in started:
        if op.proc is not None and op.proc.poll() is None:
            op.stop()
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
