"""The container image: built from the repository's files only, running as non-root, and its
entrypoint starts the operator from an installed wheel (there is no Docker engine here). What the
image installs (the wheel without extras) carries none of the development tooling's dependencies."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest

from pipeline_operator_dev import builds, controlplane

from .conftest import Cluster

REPO = Path(__file__).resolve().parent.parent


def stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's stages, each a list of (instruction, arguments)."""
    out: list[list[tuple[str, str]]] = []
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        if instruction.upper() == "FROM":
            out.append([])
        out[-1].append((instruction.upper(), args.strip()))
    return out


def test_dockerfile_is_slim_non_root_and_built_from_the_repository():
    build, final = stages()
    assert build[0][1] == "debian:bookworm-slim AS build" and final[0][1] == "debian:bookworm-slim"
    user = [args for instruction, args in final if instruction == "USER"]
    assert user and user[-1].split(":")[0].isdigit() and int(user[-1].split(":")[0]) >= 1000
    final_text = " ".join(args for _, args in final)
    for tool in ("gcc", "build-essential", "python3-pip", "python3-venv", "git "):
        assert tool not in final_text
    assert "apt-get install -y --no-install-recommends python3.11 ca-certificates" in final_text
    assert "rm -rf /var/lib/apt/lists/*" in final_text  # no package lists left behind
    # The wheels are mounted for one step, not copied into a layer; image/install.sh installs them
    # from the folder only (--no-index), each dependency checked against its pinned hash.
    assert "--mount=type=bind,from=build,source=/wheels,target=/wheels sh /wheels/install.sh /wheels" in final_text
    install = (REPO / "image" / "install.sh").read_text()
    assert install.count("--no-index") == 2 and "--require-hashes" in install and "[" not in install.split("pip()")[1]
    copies = [args for instruction, args in build if instruction == "COPY"]
    assert copies == ["image/ /src/image/", "pyproject.toml README.md /src/", "operator/ /src/operator/"]
    entrypoint = json.loads(next(args for instruction, args in final if instruction == "ENTRYPOINT"))
    assert entrypoint == ["pipeline-operator"]
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert ignored[1] == "*" and "!operator/" in ignored and "!image/" in ignored


def test_image_pins_every_dependency_at_pyprojects_version_with_hashes():
    """image/requirements.txt (``make lock``) pins what pyproject.toml asks for, every distribution
    with the hashes pip checks (--require-hashes) when the image is built."""
    import re
    pins_text = (REPO / "image" / "requirements.txt").read_text()
    pins = dict(re.findall(r"(?m)^([a-z0-9][a-z0-9._-]*)==(\S+)", pins_text))
    for requirement in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]:
        name, version = requirement.split("==")
        assert pins[re.sub(r"[-_.]+", "-", name).lower()] == version, requirement
    entries = re.split(r"(?m)^(?=[a-z0-9])", pins_text)[1:]
    assert len(entries) == len(pins) and all("--hash=sha256:" in e for e in entries)
    assert "cryptography" not in pins and "pytest" not in pins  # no extra: the image has no dev tooling
    assert re.search(r"(?m)^pip==\S+ \\\n    --hash=sha256:", (REPO / "image" / "pip.txt").read_text())


def wheelhouse() -> Path:
    """Wheels of the runtime dependencies and of the build backend, downloaded once from PyPI (the
    only network use) and kept in the control-plane cache, keyed by the pins: later runs are offline."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    wanted = sorted(pyproject["project"]["dependencies"]) + sorted(pyproject["build-system"]["requires"])
    key = hashlib.sha256("\n".join([sys.implementation.cache_tag, *wanted]).encode()).hexdigest()[:16]
    folder = builds.cache_root() / "wheelhouse" / key
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix="download-") as td:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "-d", td, *wanted],
                       check=True, timeout=300)
        try:
            os.rename(td, folder)
        except OSError:  # a parallel run got there first
            if not folder.is_dir():
                raise
        else:
            os.mkdir(td)  # for TemporaryDirectory's cleanup
    return folder


@pytest.fixture(scope="module")
def built_wheel(tmp_path_factory) -> Path:
    """The project's wheel, built offline from what the Dockerfile copies (pyproject.toml, README.md,
    operator/), not from the checkout, whose build/ folder may hold modules that no longer exist."""
    context = tmp_path_factory.mktemp("context")
    shutil.copy2(REPO / "pyproject.toml", context)
    shutil.copy2(REPO / "README.md", context)
    shutil.copytree(REPO / "operator", context / "operator",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-index", "--find-links",
                    str(wheelhouse()), "-w", str(dist), str(context)], check=True, timeout=300)
    return next(dist.glob("pipeline_operator-*.whl"))


@pytest.fixture(scope="module")
def runtime_env(built_wheel: Path, tmp_path_factory) -> Path:
    """A fresh virtualenv where the wheel is installed as the image installs it: no extras, only
    from a folder of wheels (``--no-index``). Its ``bin`` folder is returned. (This environment's pip
    installs into it: quicker than a pip of its own; no bytecode compiled, for the same reason.)"""
    venv = tmp_path_factory.mktemp("runtime") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-compile", "--disable-pip-version-check", "--no-index", "--find-links", str(wheelhouse()),
                    str(built_wheel)], check=True, timeout=300)
    return venv / "bin"


def in_runtime_env(bin_dir: Path, *cmd: str) -> subprocess.CompletedProcess:
    """A command in the runtime environment, with nothing of the checkout's (no PYTHONPATH, no venv)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run([str(bin_dir / cmd[0]), *cmd[1:]], capture_output=True, text=True, env=env,
                          cwd=bin_dir.parent, timeout=120)


# What the runtime environment holds, from its own interpreter: installed distributions, each with
# what it requires, and whether the development tooling's modules can be imported.
_INVENTORY = """
import importlib.metadata as m, importlib.util as u, json, re
name = lambda d: re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower()
print(json.dumps({
    "requires": {name(d): d.requires or [] for d in m.distributions()},
    "importable": {mod: u.find_spec(mod) is not None for mod in ("cryptography", "yaml", "pipeline_operator_dev")},
}))
"""


def test_runtime_install_runs_the_operator_without_the_development_tooling(runtime_env: Path):
    """The wheel installed without extras (as in the image): the operator's commands work, the
    development tooling's dependencies are absent, and its commands say in one line what to install."""
    version = in_runtime_env(runtime_env, "pipeline-operator", "--version")
    assert version.returncode == 0 and "0.1.0" in version.stdout, version.stderr
    run_help = in_runtime_env(runtime_env, "pipeline-operator", "run", "--help")
    assert run_help.returncode == 0 and "--backend" in run_help.stdout, run_help.stderr
    imported = in_runtime_env(runtime_env, "python", "-c", "import pipeline_operator.controller.wiring, sys; "
                              "print(sys.modules['pipeline_operator'].__file__, 'cryptography' in sys.modules)")
    assert imported.returncode == 0, imported.stderr
    where, crypto_loaded = imported.stdout.split()
    # the wheel's code, not the checkout's
    assert where.startswith(str(runtime_env.parent)) and crypto_loaded == "False"

    inventory = json.loads(in_runtime_env(runtime_env, "python", "-c", _INVENTORY).stdout)
    installed = inventory["requires"]
    assert "pipeline-operator" in installed and "python-json-logger" in installed
    assert "cryptography" not in installed and not inventory["importable"]["cryptography"]
    # PyYAML is no dependency of ours outside the dev extra; kopf and kubernetes require it themselves,
    # so the runtime environment (and the image) has it through them only.
    ours = [r for r in installed["pipeline-operator"] if r.lower().startswith("pyyaml")]
    assert ours and all('extra == "dev"' in r for r in ours)
    through = {dist for dist, reqs in installed.items() if dist != "pipeline-operator"
               and any(r.lower().startswith("pyyaml") and "extra ==" not in r for r in reqs)}
    assert through <= {"kopf", "kubernetes"}, through
    assert inventory["importable"]["pipeline_operator_dev"]  # the package ships; its dependencies do not

    for command, options in ((["control-plane", "fetch"], []), (["control-plane", "up"], []),
                             (["demo"], ["--exit-when-running"])):
        res = in_runtime_env(runtime_env, "pipeline-operator", *command, *options)
        assert res.returncode == 1 and res.stdout == "", res.stdout + res.stderr
        assert res.stderr == (
            f"Error: `pipeline-operator {' '.join(command)}` needs the module 'cryptography', which is not "
            "installed (development commands need the dev extra, the operator does not); install it with: "
            "pip install 'pipeline-operator[dev]'\n"), res.stderr


@pytest.mark.apiserver
def test_entrypoint_starts_the_operator_from_an_installed_wheel(crd_installed: Cluster, namespace, tmp_path,
                                                                built_wheel):
    wheel = built_wheel
    # --target installs beside the environment without touching it (--prefix would first uninstall
    # the environment's own copy of the project).
    site = tmp_path / "installed"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--ignore-installed", "-q", "--target",
                    str(site), str(wheel)], check=True, timeout=300)
    entrypoint = site / "bin" / "pipeline-operator"
    env = {**os.environ, "PYTHONPATH": str(site), "KUBECONFIG": str(crd_installed.kubeconfig)}
    where = subprocess.run([sys.executable, "-c", "import pipeline_operator, sys; print(pipeline_operator.__file__)"],
                           env=env, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(site))  # the wheel's code, not the checkout's
    port = controlplane.free_port()
    log = tmp_path / "operator.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(entrypoint), "run", "--namespace", namespace, "--backend", "local",
                                 "--state-dir", str(tmp_path / "state"), "--event-store", str(tmp_path / "e.sqlite"),
                                 "--api-listen", f"127.0.0.1:{port}"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30
        ready = False
        while time.monotonic() < deadline and not ready:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    ready = r.status == 200
            except OSError:
                time.sleep(0.3)
        assert ready, log.read_text()[-3000:]
        assert "watching pipelines.dataflow.dev" in log.read_text()
        assert "(event loop: uvloop)" in log.read_text()  # the installed operator's default
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()[-3000:]
