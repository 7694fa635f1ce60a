"""The operator's image under a real OCI runtime (runc), for the image tests and bench/image_bench.py.

``built_image()`` builds the image with ``make image``'s builder (image/build_image.py; nothing is
rebuilt while its inputs are unchanged) and unpacks it once with umoci into a runtime bundle. Each
``Image.container(...)`` is a runc container of that root filesystem with the security context the
Helm chart gives the operator's container, read from the chart itself (``helm template``): its user
and group, a read-only root filesystem, no capabilities at all, no privilege escalation
(``noNewPrivileges``), and emptyDir stand-ins (tmpfs) at the chart's writable mounts. The container
shares the host's network namespace, as a pod with ``hostNetwork`` would: the test API server and
the pipeline processes listen on this machine's loopback. Not applied: the seccomp profile
``RuntimeDefault``, which is the container runtime's own profile (runc ships none).
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .fake_kubelet import ContainerRuntime

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "pipeline-operator"


def builder():
    """image/build_image.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("build_image", REPO / "image" / "build_image.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("build_image", module)
    spec.loader.exec_module(module)
    return module


def unavailable_reason() -> str | None:
    """Why the image cannot be built and run here, or None."""
    if sys.platform != "linux":
        return "the image tests need Linux"
    if os.geteuid() != 0:
        return ("the image tests run runc and mmdebstrap as root (this machine runs containers as root; "
                "`sudo make test` or run them in CI)")
    return None


@dataclass
class SecurityContext:
    """What the chart's Deployment asks of the operator's container."""

    uid: int
    gid: int
    read_only_root: bool
    capabilities: list[str]
    no_new_privileges: bool
    writable: list[str]  # mount paths of emptyDir/PVC volumes

    @classmethod
    def from_chart(cls, helm: str) -> SecurityContext:
        rendered = subprocess.run([helm, "template", "po", str(CHART), "--set",
                                   "image.repository=localhost/pipeline-operator"],
                                  capture_output=True, text=True, check=True, timeout=60).stdout
        deployment = next(d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "Deployment")
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        pod_ctx, ctx = pod.get("securityContext", {}), container.get("securityContext", {})
        dropped = ctx.get("capabilities", {}).get("drop", [])
        # What a runtime grants by default (runc's and containerd's set); "ALL" dropped leaves none.
        default_caps = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
                        "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
                        "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]
        caps = [] if "ALL" in dropped else [c for c in default_caps if c.removeprefix("CAP_") not in dropped]
        return cls(uid=int(ctx.get("runAsUser", pod_ctx["runAsUser"])),
                   gid=int(ctx.get("runAsGroup", pod_ctx["runAsGroup"])),
                   read_only_root=bool(ctx.get("readOnlyRootFilesystem")),
                   capabilities=caps,
                   no_new_privileges=ctx.get("allowPrivilegeEscalation") is False,
                   writable=[m["mountPath"] for m in container.get("volumeMounts", []) if not m.get("readOnly")])


_ids = itertools.count(1)


class Container:
    """One ``runc run`` in the foreground: runc forwards signals to the container's process and
    exits with its exit code."""

    def __init__(self, image: Image, bundle: Path, name: str, log: Path) -> None:
        self.image, self.bundle, self.name, self.log = image, bundle, name, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> Container:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(["runc", "--root", str(self.image.state), "run", "--bundle", str(self.bundle),
                                          self.name], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        return self

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        """Send ``sig`` (runc forwards it); SIGKILL after ``timeout``. The exit code, or None if killed."""
        if self.proc is None:
            return None
        code: int | None = None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                code = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                subprocess.run(["runc", "--root", str(self.image.state), "kill", self.name, "KILL"],
                               capture_output=True, timeout=30)
                self.proc.wait(30)
        else:
            code = self.proc.returncode
        subprocess.run(["runc", "--root", str(self.image.state), "delete", "--force", self.name],
                       capture_output=True, timeout=30)
        return code

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Image:
    """The built image, unpacked once into a runtime bundle whose root filesystem every container shares
    (read-only)."""

    def __init__(self, outputs: Any, workdir: Path, security: SecurityContext) -> None:
        self.outputs = outputs
        self.workdir = workdir
        self.security = security
        self.state = workdir / "runc-state"
        self.state.mkdir(parents=True, exist_ok=True)
        self.unpacked = workdir / "unpacked"
        subprocess.run(["umoci", "unpack", "--image", f"{outputs.layout}:{outputs.version}", str(self.unpacked)],
                       check=True, capture_output=True, timeout=600)
        self.rootfs = self.unpacked / "rootfs"
        self.base_config = json.loads((self.unpacked / "config.json").read_text())

    def image_config(self) -> dict:
        """The image's configuration (user, entrypoint, labels, ...), as skopeo reads the docker-archive."""
        out = subprocess.run(["skopeo", "--insecure-policy", "inspect", "--config",
                              f"docker-archive:{self.outputs.archive}"], capture_output=True, text=True, check=True,
                             timeout=120).stdout
        return json.loads(out)

    def container(self, args: list[str] | None = None, *, env: dict[str, str] | None = None,
                  binds: list[tuple[Path, str, bool]] = (), writable: list[str] | None = None,
                  cwd: str | None = None, name: str = "c") -> Container:
        """A container of the image: ``args`` replaces the entrypoint and command (None: the image's
        own), ``env`` adds to the image's environment, ``binds`` are (host path, container path,
        read-only) bind mounts, ``writable`` the paths given a tmpfs owned by the container's user
        (default: the chart's writable mounts)."""
        sec = self.security
        config = json.loads(json.dumps(self.base_config))
        process = config["process"]
        process["terminal"] = False
        if args is not None:
            process["args"] = args
        process["user"] = {"uid": sec.uid, "gid": sec.gid}
        process["env"] = [e for e in process["env"] if not e.startswith("TERM=")] + \
            [f"{k}={v}" for k, v in (env or {}).items()]
        if cwd:
            process["cwd"] = cwd
        process["capabilities"] = {k: list(sec.capabilities)
                                   for k in ("bounding", "effective", "inheritable", "permitted", "ambient")}
        process["noNewPrivileges"] = sec.no_new_privileges
        config["root"] = {"path": str(self.rootfs), "readonly": sec.read_only_root}
        config["hostname"] = name
        config["linux"]["namespaces"] = [n for n in config["linux"]["namespaces"] if n["type"] != "network"]
        for path in (sec.writable if writable is None else writable):
            config["mounts"].append({"destination": path, "type": "tmpfs", "source": "tmpfs",
                                     "options": ["nosuid", "nodev", "mode=0755", f"uid={sec.uid}", f"gid={sec.gid}"]})
        for host, inside, read_only in binds:
            config["mounts"].append({"destination": inside, "type": "bind", "source": str(host),
                                     "options": ["rbind", "ro" if read_only else "rw"]})
        unique = f"{name}-{os.getpid()}-{next(_ids)}"
        bundle = self.workdir / "bundles" / unique
        bundle.mkdir(parents=True)
        (bundle / "config.json").write_text(json.dumps(config, indent=1))
        return Container(self, bundle, unique, bundle / "output.log")

    def run(self, args: list[str], timeout: float = 120, **kwargs: Any) -> tuple[int, str]:
        """Run a container to its end: (exit code, output)."""
        container = self.container(args, **kwargs).start()
        try:
            code = container.wait(timeout)
        finally:
            container.stop(signal.SIGKILL, timeout=5)
        return code, container.output()


def built_image(workdir: Path, helm: str) -> Image:
    """``make image``'s outputs (built now if missing or stale), unpacked for runc."""
    build_image = builder()
    build_image.ensure_debian_packages({**build_image.TOOLS, "runc": "runc"})
    outputs = build_image.build(f"localhost/pipeline-operator:{build_image.project_version()}",
                                REPO / "dist" / "image", [])
    return Image(outputs, workdir, SecurityContext.from_chart(helm))


def wait_http(url: str, timeout: float, container: Container | None = None) -> float:
    """Seconds until ``url`` answers 200; fails early if ``container`` exits."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if container is not None and container.proc is not None and container.proc.poll() is not None:
            raise AssertionError(f"the container exited ({container.proc.returncode}):\n{container.output()[-3000:]}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"{url} did not answer within {timeout} s:\n"
                         f"{container.output()[-3000:] if container else ''}")


class RuncPods(ContainerRuntime):
    """For tests/fake_kubelet.py: a pipeline pod's container runs from the image under runc, with the
    kubelet's files (program, port file, volume) bind-mounted at the same paths and owned by the
    container's user, and the pod's environment (the image's PATH, not this machine's)."""

    def __init__(self, image: Image) -> None:
        self.image = image
        self.containers: dict[int, Container] = {}

    def start(self, argv: list[str], env: dict[str, str], paths: list[Path], log: Path,
              cwd: Path | None = None) -> subprocess.Popen:
        for path in paths:
            for folder, _, files in os.walk(path):
                for entry in [folder, *(os.path.join(folder, f) for f in files)]:
                    os.chown(entry, self.image.security.uid, self.image.security.gid)
        pod_env = {k: v for k, v in env.items() if k != "PATH"}
        container = self.image.container(argv, env=pod_env, binds=[(p, str(p), False) for p in paths],
                                         writable=["/tmp"], cwd=str(cwd) if cwd else "/", name="pipeline")
        container.log = log
        proc = container.start().proc
        assert proc is not None
        self.containers[proc.pid] = container
        return proc

    def kill(self, proc: subprocess.Popen) -> None:
        container = self.containers.pop(proc.pid, None)
        if container is not None:
            container.stop(signal.SIGKILL, timeout=10)
