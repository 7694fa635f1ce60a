"""A real, local Kubernetes control plane: etcd + kube-apiserver, plus kubectl and helm.

There is no kubelet, controller-manager or scheduler: this is the "envtest" shape of a
cluster, which is what an operator needs to be tested against a real API server (real
schema validation, real ``/status`` subresource, real RBAC and authentication).

The binaries come from :mod:`.binaries` (built or fetched once, cached by version).

An existing cluster (``KUBECONFIG``) can be used instead of starting one; see
:func:`existing_cluster`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import io
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from cryptography import x509  # the dev extra: `pip install 'pipeline-operator[dev]'`
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from .builds import Binaries, Progress, _stderr_progress, ensure_binaries


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass(frozen=True)
class User:
    """A user known to the API server through its static token file."""
    name: str
    token: str
    groups: tuple[str, ...] = ()


def _write_pki(folder: Path) -> tuple[Path, Path, Path, Path, Path]:
    """A CA, a serving certificate for 127.0.0.1/localhost, and a service-account key pair."""
    now = datetime.datetime.now(datetime.UTC)
    later = now + datetime.timedelta(days=365)

    def pem_key(key) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pipeline-operator-test-ca")])
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(later)
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False,
                                            encipher_only=False, decipher_only=False), critical=True)
               .sign(ca_key, hashes.SHA256()))
    srv_key = ec.generate_private_key(ec.SECP256R1())
    srv_cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
                .issuer_name(ca_name).public_key(srv_key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(later)
                .add_extension(x509.SubjectAlternativeName([
                    x509.DNSName("localhost"), x509.DNSName("kubernetes.default.svc"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("10.0.0.1"))]), critical=False)
                .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .sign(ca_key, hashes.SHA256()))
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    ca_path, crt_path, key_path = folder / "ca.crt", folder / "apiserver.crt", folder / "apiserver.key"
    sa_pub, sa_priv = folder / "sa.pub", folder / "sa.key"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    crt_path.write_bytes(srv_cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(pem_key(srv_key))
    sa_priv.write_bytes(pem_key(sa_key))
    sa_pub.write_bytes(sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return ca_path, crt_path, key_path, sa_pub, sa_priv


def write_kubeconfig(path: Path, server: str, token: str, ca_file: Path | None,
                     user: str = "admin") -> Path:
    cluster: dict[str, object] = {"server": server}
    if ca_file is not None:
        cluster["certificate-authority"] = str(ca_file)
    config = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "local", "cluster": cluster}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": "local", "user": user}}],
        "current-context": user,
    }
    path.write_text(json.dumps(config, indent=2))  # JSON is valid YAML
    path.chmod(0o600)
    return path


class ControlPlane:
    """etcd + kube-apiserver on free loopback ports, with static-token users.

    ``admin`` is in ``system:masters``; ``alice`` and ``bob`` are ordinary authenticated
    users with no permissions until a test grants them some through RBAC.
    """

    def __init__(self, binaries: Binaries, workdir: Path | None = None,
                 progress: Progress = _stderr_progress) -> None:
        self.binaries = binaries
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="pipeline-operator-cp-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.progress = progress
        self.users = {
            "admin": User("admin", secrets.token_hex(16), ("system:masters",)),
            "alice": User("alice", secrets.token_hex(16), ("dev",)),
            "bob": User("bob", secrets.token_hex(16), ("dev",)),
        }
        self._procs: list[subprocess.Popen] = []
        self._logs: list[io.TextIOBase] = []
        # The command lines are kept so that a component can be stopped and started again with the
        # same address, data dir, certificates and token file (fault-injection tests do this).
        self._commands: dict[str, list[str]] = {}
        self._named: dict[str, subprocess.Popen] = {}
        self.etcd_url = ""
        self.server = ""
        self.ca_file: Path | None = None
        self.kubeconfig: Path | None = None
        self.started_in: float | None = None

    # -- lifecycle --------------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> ControlPlane:
        started = time.monotonic()
        self.progress("starting etcd")
        self._start_etcd(timeout)
        self.progress("starting kube-apiserver")
        self._start_apiserver(timeout)
        self.started_in = time.monotonic() - started
        self.progress(f"control plane ready at {self.server} in {self.started_in:.1f}s")
        return self

    def stop(self) -> None:
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self._procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()
        self._named.clear()
        for log in self._logs:
            log.close()
        self._logs.clear()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- stopping and starting one component (fault injection) -------------------------

    def stop_apiserver(self, *, kill: bool = False) -> None:
        """Stop kube-apiserver (SIGTERM, or SIGKILL with ``kill``); etcd keeps running.

        Clients see connection refused on the same address until :meth:`start_apiserver`.
        """
        self._terminate("kube-apiserver", kill=kill)

    def start_apiserver(self, timeout: float = 90.0) -> None:
        """Start kube-apiserver again after :meth:`stop_apiserver`, with the same port, certificates,
        token file and flags (so existing kubeconfigs and tokens stay valid); returns once ready."""
        self._relaunch("kube-apiserver", timeout)

    def stop_etcd(self, *, kill: bool = False) -> None:
        """Stop etcd (SIGTERM, or SIGKILL with ``kill``); kube-apiserver keeps running and fails its
        storage calls until :meth:`start_etcd`."""
        self._terminate("etcd", kill=kill)

    def start_etcd(self, timeout: float = 90.0) -> None:
        """Start etcd again with the same data dir and ports; returns once it reports healthy."""
        self._relaunch("etcd", timeout)

    def restart_etcd(self, timeout: float = 90.0, *, kill: bool = False) -> None:
        """Stop and start etcd (same data, same ports): what a crash-restart of the store looks like."""
        self.stop_etcd(kill=kill)
        self.start_etcd(timeout)

    def restart_apiserver(self, timeout: float = 90.0, *, kill: bool = False) -> None:
        self.stop_apiserver(kill=kill)
        self.start_apiserver(timeout)

    def is_running(self, name: str) -> bool:
        """Whether ``etcd`` or ``kube-apiserver`` is running (as a process; not necessarily ready)."""
        proc = self._named.get(name)
        return proc is not None and proc.poll() is None

    def _terminate(self, name: str, *, kill: bool) -> None:
        proc = self._named.get(name)
        if proc is None:
            raise RuntimeError(f"{name} was never started on this control plane; call start() first")
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _relaunch(self, name: str, timeout: float) -> None:
        old = self._named.get(name)
        if old is None or name not in self._commands:
            raise RuntimeError(f"{name} was never started on this control plane; call start() first")
        if old.poll() is None:
            raise RuntimeError(f"{name} is still running (pid {old.pid}); stop it before starting it again")
        proc = self._spawn(name, self._commands[name], replace=old)
        if name == "etcd":
            self._wait_until(name, proc, self._etcd_healthy, timeout)
        else:
            self._wait_until(name, proc, self._apiserver_ready, timeout)

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, name: str, cmd: list[str], replace: subprocess.Popen | None = None) -> subprocess.Popen:
        """Start a component; ``replace`` is its previous (exited) process when it is started again,
        whose place in the stop order it takes, and whose log it continues."""
        log = open(self.workdir / f"{name}.log", "a" if replace is not None else "w")
        self._logs.append(log)
        self._commands[name] = cmd
        # A new session: a Ctrl-C on the terminal goes to us, and we stop the children in order.
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        if replace is not None and replace in self._procs:
            self._procs[self._procs.index(replace)] = proc
        else:
            self._procs.append(proc)
        self._named[name] = proc
        return proc

    def _wait_until(self, what: str, proc: subprocess.Popen, check: Callable[[], bool],
                    timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {proc.returncode}; log:\n{self.log_tail(what)}")
            try:
                if check():
                    return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{what} not ready after {timeout:.0f}s; log:\n{self.log_tail(what)}")

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.workdir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _start_etcd(self, timeout: float) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        proc = self._spawn("etcd", [
            str(self.binaries.etcd), "--data-dir", str(self.workdir / "etcd-data"),
            "--listen-client-urls", self.etcd_url, "--advertise-client-urls", self.etcd_url,
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"default=http://127.0.0.1:{peer}",
            "--unsafe-no-fsync", "--log-level", "warn",
        ])
        self._wait_until("etcd", proc, self._etcd_healthy, timeout)

    def _etcd_healthy(self) -> bool:
        with urllib.request.urlopen(f"{self.etcd_url}/health", timeout=2) as r:
            return bool(json.load(r).get("health") == "true")

    def _start_apiserver(self, timeout: float) -> None:
        pki = self.workdir / "pki"
        pki.mkdir(exist_ok=True)
        ca, crt, key, sa_pub, sa_key = _write_pki(pki)
        self.ca_file = ca
        tokens = self.workdir / "tokens.csv"
        tokens.write_text("".join(
            f'{u.token},{u.name},{u.name},"{",".join(u.groups)}"\n' for u in self.users.values()))
        port = free_port()
        self.server = f"https://127.0.0.1:{port}"
        proc = self._spawn("kube-apiserver", [
            str(self.binaries.kube_apiserver),
            f"--etcd-servers={self.etcd_url}",
            f"--cert-dir={pki}", f"--tls-cert-file={crt}", f"--tls-private-key-file={key}",
            f"--client-ca-file={ca}",
            f"--secure-port={port}", "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            "--service-cluster-ip-range=10.0.0.0/24",
            f"--service-account-issuer=https://127.0.0.1:{port}",
            # The operator's API accepts tokens for the audience `pipeline-operator`: the token-file
            # users are audience-agnostic, so they are valid for every audience listed here.
            f"--api-audiences=https://127.0.0.1:{port},pipeline-operator",
            f"--service-account-key-file={sa_pub}", f"--service-account-signing-key-file={sa_key}",
            "--authorization-mode=RBAC", f"--token-auth-file={tokens}",
            "--disable-admission-plugins=ServiceAccount", "--allow-privileged=true",
            "--enable-priority-and-fairness=false", "--profiling=false",
        ])
        self._wait_until("kube-apiserver", proc, self._apiserver_ready, timeout)
        self.kubeconfig = write_kubeconfig(self.workdir / "kubeconfig", self.server, self.users["admin"].token, ca)

    def _apiserver_ready(self) -> bool:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        req = urllib.request.Request(f"{self.server}/readyz",
                                     headers={"Authorization": f"Bearer {self.users['admin'].token}"})
        try:
            with urllib.request.urlopen(req, timeout=2, context=context) as r:
                return bool(r.status == 200)
        except urllib.error.HTTPError:
            return False

    # -- helpers for tests and tools ---------------------------------------------------

    def kubeconfig_for(self, user: str) -> Path:
        """A kubeconfig that authenticates as one of the token-file users."""
        u = self.users[user]
        return write_kubeconfig(self.workdir / f"kubeconfig-{user}", self.server, u.token,
                                self.ca_file, user=user)

    def kubectl(self, *args: str, user: str = "admin", input: str | None = None,
                check: bool = True) -> subprocess.CompletedProcess:
        return run_kubectl(self.binaries.kubectl, self.kubeconfig_for(user) if user != "admin"
                           else self.kubeconfig, *args, input=input, check=check)


def run_kubectl(kubectl: Path, kubeconfig: Path | None, *args: str, input: str | None = None,
                check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    res = subprocess.run([str(kubectl), *args], input=input, capture_output=True, text=True, env=env)
    if check and res.returncode != 0:
        raise subprocess.CalledProcessError(res.returncode, res.args, res.stdout, res.stderr)
    return res


def wait_established(kubectl: Callable[..., subprocess.CompletedProcess], crd: str = "pipelines.dataflow.dev",
                     timeout: float = 60.0) -> None:
    """Wait until a CRD is Established. (``kubectl wait --for=condition=Established`` right after
    the CRD is created can fail at once with "<nil> is of the type <nil>" while its status is
    still empty, so this polls the condition instead.)"""
    deadline = time.monotonic() + timeout
    query = '{.status.conditions[?(@.type=="Established")].status}'
    while True:
        res = kubectl("get", "crd", crd, "-o", f"jsonpath={query}", check=False)
        if res.returncode == 0 and res.stdout.strip() == "True":
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"CRD {crd} is not Established after {timeout:.0f}s: {res.stdout or res.stderr}")
        time.sleep(0.2)


# The signals that end `control-plane up`: Ctrl-C, `kill` (and service managers), a closed terminal.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _StopSignal(Exception):
    """Raised by the signal handler of :func:`run_until_signalled`: one of STOP_SIGNALS arrived."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def run_until_signalled(binaries: Binaries, progress: Progress = _stderr_progress) -> int:
    """Start a control plane, print its KUBECONFIG and keep it running until SIGINT, SIGTERM or SIGHUP;
    then stop kube-apiserver and etcd (they run in sessions of their own, so no signal reaches them
    but ours) and return 0. A signal during the start stops what was started so far."""
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        if not stopping:  # the first one only: a second signal must not cut the stop short
            stopping = True
            raise _StopSignal(signum)

    def say(message: str) -> None:
        with contextlib.suppress(OSError):  # after SIGHUP the terminal may be gone
            progress(message)

    previous = {signum: signal.signal(signum, on_signal) for signum in STOP_SIGNALS}
    plane = ControlPlane(binaries, progress=say)
    try:
        plane.start()
        print(f"export KUBECONFIG={plane.kubeconfig}", flush=True)
        while True:
            signal.pause()
    except _StopSignal as stop:
        say(f"{stop}: stopping the control plane")
    finally:
        stopping = True
        running = [(name, proc.pid) for name, proc in reversed(plane._named.items()) if proc.poll() is None]
        plane.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if running:
            say("stopped " + " and ".join(f"{name} (pid {pid})" for name, pid in running))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline_operator_dev.controlplane [fetch|up]``."""
    import argparse
    parser = argparse.ArgumentParser(prog="pipeline-operator control-plane")
    parser.add_argument("action", choices=["fetch", "up"], help="fetch: build or find the binaries; "
                        "up: also start a control plane and keep it running until Ctrl-C, SIGTERM or SIGHUP")
    args = parser.parse_args(argv)
    binaries = ensure_binaries()
    print(json.dumps(binaries.as_dict(), indent=2))
    if args.action == "up":
        return run_until_signalled(binaries)
    return 0


if __name__ == "__main__":
    sys.exit(main())
