"""The control-plane harness: binaries from the cache or KUBEBUILDER_ASSETS, clean start and stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline_operator_dev import builds, controlplane

from .conftest import Cluster


@pytest.mark.apiserver
def test_cached_binaries_are_reused_without_building(binaries, monkeypatch):
    def no_build(*args, **kwargs):
        raise AssertionError("a cached binary was built again")
    monkeypatch.setattr(builds, "build_etcd", no_build)
    monkeypatch.setattr(builds, "build_kube_apiserver", no_build)
    monkeypatch.setattr(builds, "fetch_kubectl_and_helm", no_build)
    monkeypatch.delenv("KUBEBUILDER_ASSETS", raising=False)
    assert builds.ensure_binaries() == binaries


@pytest.mark.apiserver
def test_kubebuilder_assets_folder_is_used_first(binaries, tmp_path, monkeypatch):
    for path in binaries.as_dict().values():
        (tmp_path / Path(path).name).symlink_to(path)
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(tmp_path))
    found = builds.ensure_binaries()
    assert found.kube_apiserver == tmp_path / "kube-apiserver" and found.etcd == tmp_path / "etcd"


@pytest.mark.apiserver
def test_binaries_report_the_pinned_versions(binaries):
    out = subprocess.run([str(binaries.kube_apiserver), "--version"], capture_output=True, text=True).stdout
    assert out.strip() == f"Kubernetes v{builds.K8S_VERSION}"
    out = subprocess.run([str(binaries.etcd), "--version"], capture_output=True, text=True).stdout
    assert f"etcd Version: {builds.ETCD_VERSION}" in out
    assert "v3." in subprocess.run([str(binaries.helm), "version", "--short"], capture_output=True, text=True).stdout


@pytest.mark.apiserver
def test_control_plane_starts_and_stops_without_leftover_processes(binaries):
    plane = controlplane.ControlPlane(binaries)
    plane.start()
    pids = [p.pid for p in plane._procs]
    workdir = plane.workdir
    try:
        version = json.loads(plane.kubectl("version", "-o", "json").stdout)
        assert version["serverVersion"]["gitVersion"] == f"v{builds.K8S_VERSION}"
    finally:
        plane.stop()
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    assert not workdir.exists()


@pytest.mark.apiserver
def test_token_users_authenticate_and_rbac_applies(cluster: Cluster):
    assert cluster.kubectl("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}").stdout == "admin"
    alice = cluster.kubectl("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}", user="alice")
    assert alice.stdout == "alice"
    res = cluster.kubectl("get", "namespaces", user="bob", check=False)
    assert res.returncode != 0 and "forbidden" in res.stderr.lower()
    bad = cluster.plane.kubeconfig_for("alice").read_text().replace(cluster.plane.users["alice"].token, "wrong")
    wrong = cluster.plane.workdir / "kubeconfig-wrong"
    wrong.write_text(bad)
    res = controlplane.run_kubectl(cluster.binaries.kubectl, wrong, "get", "pods", check=False)
    assert res.returncode != 0 and "Unauthorized" in res.stderr


@pytest.mark.apiserver
def test_service_account_tokens_can_be_issued(cluster: Cluster, namespace: str):
    """TokenRequest works on this control plane, so the operator can run with its own RBAC."""
    cluster.kubectl("create", "serviceaccount", "op", "-n", namespace)
    token = cluster.kubectl("create", "token", "op", "-n", namespace).stdout.strip()
    assert token.count(".") == 2
    kubeconfig = controlplane.write_kubeconfig(cluster.plane.workdir / f"kc-{namespace}", cluster.plane.server,
                                               token, cluster.plane.ca_file, user="op")
    who = controlplane.run_kubectl(cluster.binaries.kubectl, kubeconfig, "auth", "whoami", "-o",
                                   "jsonpath={.status.userInfo.username}")
    assert who.stdout == f"system:serviceaccount:{namespace}:op"


@pytest.mark.apiserver
def test_fetch_command_prints_where_the_binaries_are(binaries):
    env = {k: v for k, v in os.environ.items() if k != "KUBEBUILDER_ASSETS"}
    res = subprocess.run([sys.executable, "-m", "pipeline_operator.cli", "control-plane", "fetch"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    rows = dict(line.split("\t") for line in res.stdout.splitlines())
    assert rows["kube_apiserver"] == str(binaries.kube_apiserver)


@pytest.mark.apiserver
@pytest.mark.parametrize("name", ["etcd", "kube-apiserver"])
def test_a_failing_binary_is_reported_with_its_log(tmp_path, binaries, name):
    fake = tmp_path / name
    fake.write_text("#!/bin/sh\necho 'cannot start: broken on purpose' >&2\nexit 3\n")
    fake.chmod(0o755)
    broken = builds.Binaries(**{**{k: Path(v) for k, v in binaries.as_dict().items()},
                                      name.replace("-", "_"): fake})
    plane = controlplane.ControlPlane(broken)
    with pytest.raises(RuntimeError, match="broken on purpose"):
        plane.start(timeout=20)
    plane.stop()


def cli_without(modules: tuple[str, ...], *args: str) -> subprocess.CompletedProcess:
    """``pipeline-operator ARGS`` in a process where ``modules`` cannot be imported, as if not installed."""
    code = (f"import sys\nfor name in {modules!r}:\n    sys.modules[name] = None\n"
            f"from pipeline_operator.cli import main\nmain({list(args)!r}, prog_name='pipeline-operator')\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("command", [["control-plane", "fetch"], ["control-plane", "up"], ["demo"]])
def test_without_the_dev_extra_the_development_commands_say_what_to_install(command):
    res = cli_without(("cryptography",), *command)
    assert res.returncode == 1 and res.stdout == "", res.stdout + res.stderr
    assert res.stderr == (
        f"Error: `pipeline-operator {' '.join(command)}` needs the module 'cryptography', which is not installed "
        "(development commands need the dev extra, the operator does not); install it with: "
        "pip install 'pipeline-operator[dev]'\n")


def test_the_operator_needs_nothing_of_the_dev_extra():
    """The operator's modules import without the development tooling and its dependencies (PyYAML
    still comes with kopf and kubernetes, so only cryptography and the dev package are hidden)."""
    code = ("import sys\nfor name in ('cryptography', 'pipeline_operator_dev'):\n    sys.modules[name] = None\n"
            "import pipeline_operator.cli, pipeline_operator.controller.wiring\n"
            "import pipeline_operator.reconcile.reconciler\n"
            "from pipeline_operator.cli import main\nmain(['run', '--help'], prog_name='pipeline-operator')\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "--backend" in res.stdout, res.stderr


@pytest.mark.apiserver
def test_apiserver_and_etcd_can_be_stopped_and_started_again_keeping_address_data_and_users(binaries):
    """Fault-injection tests take the API server away and bring it back: the same address, the same
    certificates and users (existing kubeconfigs keep working), and etcd's data survive."""
    plane = controlplane.ControlPlane(binaries)
    plane.start()
    try:
        server, kubeconfig = plane.server, plane.kubeconfig
        plane.kubectl("create", "configmap", "survivor", "--from-literal=k=v")
        plane.stop_apiserver()
        assert not plane.is_running("kube-apiserver") and plane.is_running("etcd")
        down = plane.kubectl("get", "configmap", "survivor", "--request-timeout=5s", check=False)
        assert down.returncode != 0 and "refused" in down.stderr
        plane.start_apiserver()
        with pytest.raises(RuntimeError, match="kube-apiserver is still running"):
            plane.start_apiserver()
        assert plane.server == server and plane.kubeconfig == kubeconfig
        assert plane.kubectl("get", "configmap", "survivor", "-o", "jsonpath={.data.k}").stdout == "v"
        assert plane.kubectl("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}",
                             user="alice").stdout == "alice"

        etcd_pid = plane._named["etcd"].pid
        plane.restart_etcd(kill=True)
        assert plane._named["etcd"].pid != etcd_pid and plane.is_running("etcd")
        # The API server reconnects to the same etcd address; the data written before is still there.
        deadline = time.monotonic() + 60
        while True:
            res = plane.kubectl("get", "configmap", "survivor", "-o", "jsonpath={.data.k}", check=False)
            if res.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert res.returncode == 0 and res.stdout == "v", res.stderr
        plane.kubectl("create", "configmap", "after-restart")
        pids = [p.pid for p in plane._procs]
        assert len(pids) == 2
    finally:
        plane.stop()
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()


def test_a_component_that_was_never_started_cannot_be_started_again(tmp_path):
    plane = controlplane.ControlPlane(builds.Binaries(*(tmp_path / n for n in ("e", "a", "k", "h"))),
                                      workdir=tmp_path)
    with pytest.raises(RuntimeError, match="never started on this control plane; call start"):
        plane.start_apiserver()
    with pytest.raises(RuntimeError, match="etcd was never started"):
        plane.stop_etcd()


def _children(pid: int) -> dict[int, str]:
    """The live child processes of ``pid`` (a scan of /proc by parent pid), each with its program's name."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv0 = (entry / "cmdline").read_bytes().split(b"\0")[0].decode()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state, ppid, ...
        if int(fields[1]) == pid and fields[0] != "Z":
            found[int(entry.name)] = Path(argv0).name
    return found


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.apiserver
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name)
def test_control_plane_up_stops_etcd_and_apiserver_on_a_signal(binaries, signum):
    """`pipeline-operator control-plane up` as a real process: SIGTERM (kill, service managers), SIGHUP (a
    closed terminal) and SIGINT (Ctrl-C) each stop kube-apiserver and etcd, remove the working folder, say
    what was stopped and exit 0 (before, SIGTERM and SIGHUP killed it and left both running)."""
    up = subprocess.Popen([str(Path(sys.executable).parent / "pipeline-operator"), "control-plane", "up"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    children: dict[int, str] = {}
    try:
        assert up.stdout is not None and up.stderr is not None
        kubeconfig = ""
        for line in up.stdout:  # the binaries as JSON, then the KUBECONFIG once both are ready
            if line.startswith("export KUBECONFIG="):
                kubeconfig = line.strip().partition("=")[2]
                break
        assert kubeconfig and Path(kubeconfig).is_file(), up.stderr.read() if up.poll() is not None else ""
        children = _children(up.pid)
        assert sorted(children.values()) == ["etcd", "kube-apiserver"], children
        up.send_signal(signum)
        out, err = up.communicate(timeout=60)
        assert up.returncode == 0, err
        deadline = time.monotonic() + 30
        while not all(_gone(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert all(_gone(pid) for pid in children), {pid: name for pid, name in children.items() if not _gone(pid)}
        assert not Path(kubeconfig).parent.exists()
        pids = {name: pid for pid, name in children.items()}
        assert f"{signum.name}: stopping the control plane" in err, err
        assert f"stopped kube-apiserver (pid {pids['kube-apiserver']}) and etcd (pid {pids['etcd']})" in err, err
    finally:
        for pid in [up.pid, *children]:
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)
        up.wait(timeout=30)
