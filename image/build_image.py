#!/usr/bin/env python3
"""``make image``: the operator's OCI image, built without Docker or a registry.

A minimal Debian bookworm root filesystem made by mmdebstrap from Debian's packages (the
``essential`` set, merged /usr, no apt, no documentation but copyright files) with the Python the
Dockerfile's runtime stage installs; the project's wheel and every pinned dependency, checked
against the hashes in image/requirements.txt, installed by image/install.sh (the Dockerfile runs the
same script); one layer, put in an OCI layout by umoci with the user, entrypoint, command,
environment, working directory, port and labels read from the Dockerfile's last stage; then copied
by skopeo into a docker-archive tarball that ``docker load``, ``podman load``, ``kind load
image-archive`` and ``skopeo copy`` accept. A software bill of materials (SPDX 2.3, JSON) of the
Debian packages and Python distributions in the image is written beside it.

Outputs, in --out (default dist/image)::

    pipeline-operator-VERSION.tar         docker-archive, image reference --image
    oci/                                  OCI layout, tag VERSION
    pipeline-operator-VERSION.spdx.json   SBOM
    rootfs.tar                            the layer, uncompressed (for chroot checks)

Needs mmdebstrap, umoci and skopeo (installed with apt-get when missing and run as root), a
Debian package mirror (this machine's apt sources, or --mirror) and PyPI for the wheels (cached
under ~/.cache/pipeline-operator, keyed by the pins). Nothing is rebuilt while the inputs (the
Dockerfile, image/, pyproject.toml, README.md, operator/) are unchanged; --force rebuilds.

This file uses only the standard library: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SUITE = "bookworm"
PYTHON_SITE = "opt/pipeline-operator/lib/python3.11/site-packages"
TOOLS = {"mmdebstrap": "mmdebstrap", "umoci": "umoci", "skopeo": "skopeo"}
# What the image leaves out of Debian's packages (dpkg --path-exclude): manuals, documentation but
# the copyright files, translations. Nothing at run time reads them.
DPKG_FILTERS = ("path-exclude=/usr/share/man/*", "path-exclude=/usr/share/doc/*",
                "path-include=/usr/share/doc/*/copyright", "path-exclude=/usr/share/locale/*",
                "path-exclude=/usr/share/info/*", "path-exclude=/usr/share/lintian/*")


def project_version() -> str:
    return str(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"])


# --- the Dockerfile: the one description of the image's configuration -------------------------------

@dataclass
class ImageConfig:
    """What the Dockerfile's last stage declares; ``make image`` applies the same."""

    base: str = ""
    packages: list[str] = field(default_factory=list)
    args: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    user: str = ""
    workdir: str = ""
    exposed: list[str] = field(default_factory=list)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, comments dropped and continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        line = pending + line
        pending = ""
        instruction, _, args = line.partition(" ")
        out.append((instruction.upper(), args.strip()))
    return out


def _key_values(args: str, expand: dict[str, str]) -> dict[str, str]:
    out = {}
    for word in shlex.split(args):
        key, _, value = word.partition("=")
        out[key] = re.sub(r"\$\{(\w+)\}", lambda m: expand.get(m.group(1), ""), value)
    return out


def dockerfile_config(path: Path | None = None) -> ImageConfig:
    """The configuration the Dockerfile's last stage gives its image."""
    stages: list[list[tuple[str, str]]] = []
    for instruction, args in _instructions((path or REPO / "Dockerfile").read_text()):
        if instruction == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction, args))
    config = ImageConfig()
    for instruction, args in stages[-1]:
        if instruction == "FROM":
            config.base = args.split()[0]
        elif instruction == "ARG":
            config.args.update(_key_values(args, config.args))
        elif instruction == "ENV":
            config.env.update(_key_values(args, config.args))
        elif instruction == "LABEL":
            config.labels.update(_key_values(args, config.args))
        elif instruction == "USER":
            config.user = args
        elif instruction == "WORKDIR":
            config.workdir = args
        elif instruction == "EXPOSE":
            config.exposed += [p if "/" in p else f"{p}/tcp" for p in args.split()]
        elif instruction == "ENTRYPOINT":
            config.entrypoint = json.loads(args)
        elif instruction == "CMD":
            config.cmd = json.loads(args)
        elif instruction == "RUN":
            config.runs.append(args)
            match = re.search(r"apt-get install ((?:-\S+ )*)([^&;|]+)", args)
            if match:
                config.packages += match.group(2).split()
    return config


# --- tools, mirrors, wheels ----------------------------------------------------------------------

def step(message: str) -> None:
    print(f"==> {message}", flush=True)


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, **kwargs)


# apt-get waiting (up to ten minutes) for another apt-get or dpkg to finish instead of failing at once:
# the tests run in several processes, and two of them may install packages at the same time.
APT_GET = ("apt-get", "-o", "DPkg::Lock::Timeout=600")


def ensure_debian_packages(commands: dict[str, str]) -> None:
    """Each command on PATH, or its Debian package installed with apt-get (as root); else a clear error."""
    missing = sorted({package for command, package in commands.items() if shutil.which(command) is None})
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        sys.exit(f"error: {', '.join(missing)} not installed; as root: apt-get install {' '.join(missing)}")
    step(f"installing {', '.join(missing)} from Debian's packages")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*APT_GET, "install", "-y", "-q", "--no-install-recommends", *missing]
    if subprocess.run(install, env=env).returncode:
        run([*APT_GET, "update", "-q"], env=env)
        run(install, env=env)


def host_mirrors() -> list[str]:
    """This machine's apt sources for the suite (deb822 .sources or one-line .list files)."""
    candidates = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.sources")),
                  *sorted(Path("/etc/apt/sources.list.d").glob("*.list"))]
    return [str(p) for p in candidates if p.is_file() and re.search(rf"(?m)^[^#]*\b{SUITE}\b", p.read_text())]


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pipeline-operator"


def pinned_wheels(pip: list[str]) -> Path:
    """The wheels of image/requirements.txt and image/pip.txt for CPython 3.11 on x86_64 glibc,
    downloaded once (pip checks every hash) and kept in the cache, keyed by the two files."""
    pins = [REPO / "image" / "requirements.txt", REPO / "image" / "pip.txt"]
    key = hashlib.sha256(b"".join(p.read_bytes() for p in pins)).hexdigest()[:16]
    folder = cache_root() / "image-wheels" / key
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(dir=folder.parent, prefix="download-"))
    run([*pip, "download", "--quiet", "--disable-pip-version-check", "--no-deps", "--require-hashes",
         "--only-binary=:all:", "--implementation", "cp", "--python-version", "3.11", "--abi", "cp311",
         "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux2014_x86_64",
         "--dest", str(partial), *(a for p in pins for a in ("-r", str(p)))])
    os.rename(partial, folder)
    return folder


def project_wheel(pip: list[str], dest: Path) -> Path:
    """The project's wheel, from what the Dockerfile copies (not the checkout's build/ leftovers)."""
    with tempfile.TemporaryDirectory() as context:
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(REPO / name, context)
        shutil.copytree(REPO / "operator", Path(context) / "operator",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        run([*pip, "wheel", "--quiet", "--disable-pip-version-check", "--no-deps", "--wheel-dir", str(dest), context])
    return next(dest.glob("pipeline_operator-*.whl"))


def inputs_digest(image_ref: str) -> str:
    digest = hashlib.sha256(image_ref.encode())
    files = [REPO / "Dockerfile", REPO / "pyproject.toml", REPO / "README.md", *sorted((REPO / "image").rglob("*")),
             *sorted((REPO / "operator").rglob("*"))]
    for f in files:
        if f.is_file() and "__pycache__" not in f.parts and not f.name.endswith((".pyc",)) \
                and ".egg-info" not in str(f):
            digest.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()


# --- the software bill of materials --------------------------------------------------------------

def debian_packages(root: Path) -> list[dict[str, str]]:
    """Installed packages from the root filesystem's dpkg status file."""
    out = []
    for stanza in (root / "var/lib/dpkg/status").read_text().split("\n\n"):
        fields = dict(re.findall(r"(?m)^([\w-]+): (.*)$", stanza))
        if fields.get("Status", "").endswith(" installed"):
            out.append({"name": fields["Package"], "version": fields["Version"],
                        "arch": fields.get("Architecture", ""), "source": fields.get("Source", "").split(" ")[0]})
    return sorted(out, key=lambda p: p["name"])


def python_distributions(root: Path) -> list[dict[str, str]]:
    """Installed distributions from the image's virtualenv (their METADATA files)."""
    out = []
    for meta in sorted((root / PYTHON_SITE).glob("*.dist-info/METADATA")):
        header = meta.read_text(errors="replace").split("\n\n", 1)[0]
        fields = dict(re.findall(r"(?m)^([\w-]+): (.*)$", header))
        out.append({"name": fields["Name"], "version": fields["Version"],
                    "license": fields.get("License-Expression", "")})
    return sorted(out, key=lambda d: re.sub(r"[-_.]+", "-", d["name"]).lower())


def _spdx_id(kind: str, name: str) -> str:
    return f"SPDXRef-{kind}-" + re.sub(r"[^A-Za-z0-9.-]", "-", name)


def sbom(root: Path, image_ref: str, version: str, digest: str) -> dict:
    """An SPDX 2.3 document: the image, containing each Debian package and Python distribution."""
    image_id = "SPDXRef-Image"
    packages: list[dict] = [{
        "name": "pipeline-operator-image", "SPDXID": image_id, "versionInfo": version,
        "downloadLocation": "NOASSERTION", "filesAnalyzed": False, "primaryPackagePurpose": "CONTAINER",
        "checksums": [{"algorithm": "SHA256", "checksumValue": digest.removeprefix("sha256:")}],
        "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                          "referenceLocator": f"pkg:oci/pipeline-operator@{digest.replace(':', '%3A')}"
                                              f"?tag={version}"}],
        "comment": f"image reference {image_ref}",
    }]
    for p in debian_packages(root):
        purl = f"pkg:deb/debian/{p['name']}@{p['version']}?arch={p['arch']}&distro=debian-12"
        if p["source"] and p["source"] != p["name"]:
            purl += f"&upstream={p['source']}"
        packages.append({"name": p["name"], "SPDXID": _spdx_id("deb", p["name"]), "versionInfo": p["version"],
                         "supplier": "Organization: Debian", "downloadLocation": "NOASSERTION",
                         "filesAnalyzed": False, "primaryPackagePurpose": "OPERATING-SYSTEM"
                         if p["name"] == "base-files" else "LIBRARY",
                         "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                                           "referenceLocator": purl}]})
    for d in python_distributions(root):
        name = re.sub(r"[-_.]+", "-", d["name"]).lower()
        entry = {"name": d["name"], "SPDXID": _spdx_id("pypi", name), "versionInfo": d["version"],
                 "downloadLocation": "NOASSERTION", "filesAnalyzed": False,
                 "primaryPackagePurpose": "APPLICATION" if name == "pipeline-operator" else "LIBRARY",
                 "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                                   "referenceLocator": f"pkg:pypi/{name}@{d['version']}"}]}
        if d["license"]:
            entry["licenseDeclared"] = d["license"]
        packages.append(entry)
    return {
        "spdxVersion": "SPDX-2.3", "dataLicense": "CC0-1.0", "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"pipeline-operator-image-{version}",
        "documentNamespace": f"https://spdx.org/spdxdocs/pipeline-operator-image-{version}-{uuid.uuid4()}",
        "creationInfo": {"created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                         "creators": ["Tool: pipeline-operator image/build_image.py"]},
        "documentDescribes": [image_id],
        "packages": packages,
        "relationships": [{"spdxElementId": image_id, "relationshipType": "CONTAINS",
                           "relatedSpdxElement": p["SPDXID"]} for p in packages[1:]],
    }


# --- the build -----------------------------------------------------------------------------------

@dataclass
class Outputs:
    folder: Path
    version: str

    @property
    def archive(self) -> Path:
        return self.folder / f"pipeline-operator-{self.version}.tar"

    @property
    def layout(self) -> Path:
        return self.folder / "oci"

    @property
    def sbom(self) -> Path:
        return self.folder / f"pipeline-operator-{self.version}.spdx.json"

    @property
    def rootfs(self) -> Path:
        return self.folder / "rootfs.tar"

    @property
    def stamp(self) -> Path:
        return self.folder / "inputs.sha256"

    def complete(self) -> bool:
        return all(p.exists() for p in (self.archive, self.layout / "index.json", self.sbom, self.rootfs, self.stamp))


def build(image_ref: str, out: Path, mirrors: list[str], force: bool = False) -> Outputs:
    version = project_version()
    outputs = Outputs(out, version)
    digest = inputs_digest(image_ref)
    if not force and outputs.complete() and outputs.stamp.read_text().strip() == digest:
        step(f"{outputs.archive} is up to date ({image_ref}); --force rebuilds")
        return outputs
    config = dockerfile_config()
    if not config.base.startswith(f"debian:{SUITE}"):
        sys.exit(f"error: the Dockerfile's runtime stage is {config.base}; make image builds Debian {SUITE}")
    ensure_debian_packages(TOOLS)
    mirrors = mirrors or host_mirrors()
    if not mirrors:
        sys.exit(f"error: no apt source for Debian {SUITE} on this machine; pass --mirror URL")
    pip = [sys.executable, "-m", "pip"]
    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pipeline-operator-image-") as tmp:
        work = Path(tmp)
        wheels = work / "wheels"
        step("[1/5] wheels: every pinned dependency (hash-checked) and the project's own")
        shutil.copytree(pinned_wheels(pip), wheels)
        project_wheel(pip, wheels)
        for name in ("requirements.txt", "install.sh"):
            shutil.copy2(REPO / "image" / name, wheels)

        step(f"[2/5] root filesystem: Debian {SUITE} (essential, {', '.join(config.packages)}) and "
             "image/install.sh, by mmdebstrap")
        rootfs = work / "rootfs.tar"
        run(["mmdebstrap", "--quiet", "--variant=essential", f"--include={','.join(config.packages)}",
             "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
             *(f"--dpkgopt={f}" for f in DPKG_FILTERS),
             '--aptopt=Acquire::Check-Valid-Until "false"',
             f"--customize-hook=copy-in {wheels} /tmp",
             '--customize-hook=chroot "$1" sh /tmp/wheels/install.sh /tmp/wheels',
             '--customize-hook=rm -rf "$1"/tmp/wheels "$1"/var/log/apt "$1"/var/log/*.log '
             '"$1"/var/cache/debconf/*-old "$1"/var/cache/ldconfig/aux-cache',
             SUITE, str(rootfs), *mirrors])

        step("[3/5] OCI layout: one layer, the Dockerfile's configuration (umoci)")
        layout = work / "oci"
        tagged = f"{layout}:{version}"
        run(["umoci", "init", "--layout", str(layout)])
        run(["umoci", "new", "--image", tagged])
        run(["umoci", "raw", "add-layer", "--image", tagged, "--history.created_by", "make image", str(rootfs)])
        options = ["--os", "linux", "--architecture", "amd64", "--clear=config.env", "--clear=config.cmd",
                   "--clear=config.entrypoint", "--config.user", config.user, "--config.workingdir", config.workdir,
                   "--history.created_by", "make image: configuration from the Dockerfile"]
        options += [a for k, v in config.env.items() for a in ("--config.env", f"{k}={v}")]
        options += [a for k, v in config.labels.items() for a in ("--config.label", f"{k}={v}")]
        options += [a for k, v in config.labels.items() for a in ("--manifest.annotation", f"{k}={v}")]
        options += [a for p in config.exposed for a in ("--config.exposedports", p)]
        options += [a for e in config.entrypoint for a in ("--config.entrypoint", e)]
        options += [a for c in config.cmd for a in ("--config.cmd", c)]
        run(["umoci", "config", "--image", tagged, *options])
        run(["umoci", "gc", "--layout", str(layout)])

        step(f"[4/5] docker-archive {image_ref} (skopeo)")
        archive = work / outputs.archive.name
        run(["skopeo", "--insecure-policy", "copy", "--quiet", f"oci:{tagged}",
             f"docker-archive:{archive}:{image_ref}"])
        manifest_digest = json.loads((layout / "index.json").read_text())["manifests"][0]["digest"]

        step("[5/5] software bill of materials (SPDX 2.3)")
        with tempfile.TemporaryDirectory(dir=work) as unpacked:
            with tarfile.open(rootfs) as tf:
                wanted = [m for m in tf.getmembers()
                          if m.name.lstrip("./") == "var/lib/dpkg/status" or
                          (m.name.lstrip("./").startswith(PYTHON_SITE) and m.name.endswith(".dist-info/METADATA"))]
                tf.extractall(unpacked, members=wanted, filter="data")
            document = sbom(Path(unpacked), image_ref, version, manifest_digest)
        sbom_file = work / outputs.sbom.name
        sbom_file.write_text(json.dumps(document, indent=2) + "\n")

        for produced, final in ((layout, outputs.layout), (archive, outputs.archive), (sbom_file, outputs.sbom),
                                (rootfs, outputs.rootfs)):
            if final.is_dir():
                shutil.rmtree(final)
            shutil.move(produced, final)
    outputs.stamp.write_text(digest + "\n")
    report(outputs, image_ref, manifest_digest, document, time.monotonic() - started)
    return outputs


def layer_sizes(layout: Path) -> tuple[int, int]:
    """(compressed, uncompressed) bytes of the image's layers, from its OCI layout."""
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads(_blob(layout, index["manifests"][0]["digest"]).read_bytes())
    compressed = sum(layer["size"] for layer in manifest["layers"])
    uncompressed = 0
    for layer in manifest["layers"]:
        with gzip.open(_blob(layout, layer["digest"])) as f:
            while chunk := f.read(1 << 20):
                uncompressed += len(chunk)
    return compressed, uncompressed


def _blob(layout: Path, digest: str) -> Path:
    algorithm, hexdigest = digest.split(":")
    return layout / "blobs" / algorithm / hexdigest


def report(outputs: Outputs, image_ref: str, digest: str, document: dict, seconds: float) -> None:
    compressed, uncompressed = layer_sizes(outputs.layout)
    dists = sum(1 for p in document["packages"] if p["SPDXID"].startswith("SPDXRef-pypi-"))
    debs = sum(1 for p in document["packages"] if p["SPDXID"].startswith("SPDXRef-deb-"))
    print(f"built {image_ref} in {seconds:.0f} s\n"
          f"  digest        {digest}\n"
          f"  size          {compressed / 1e6:.1f} MB compressed, {uncompressed / 1e6:.1f} MB uncompressed\n"
          f"  contents      {debs} Debian packages, {dists} Python distributions\n"
          f"  archive       {outputs.archive}   (docker load -i / podman load -i / kind load image-archive)\n"
          f"  OCI layout    {outputs.layout}:{outputs.version}\n"
          f"  SBOM          {outputs.sbom}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make image", description=__doc__.split("\n\n")[0])
    version = project_version()
    parser.add_argument("--image", default=f"localhost/pipeline-operator:{version}",
                        help="the image reference written into the docker-archive (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=REPO / "dist" / "image", help="output folder (default: dist/image)")
    parser.add_argument("--mirror", action="append", default=[],
                        help="a Debian mirror URL or apt sources file (repeatable; default: this machine's "
                        "apt sources)")
    parser.add_argument("--force", action="store_true", help="rebuild even when the inputs are unchanged")
    args = parser.parse_args(argv)
    build(args.image, args.out.resolve(), args.mirror, force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
