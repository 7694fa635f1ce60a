"""The operator's image: its size, what it holds, and how fast it starts.

    .venv/bin/python bench/image_bench.py [--runs 5]      (as root: runc and mmdebstrap)

Builds the image as ``make image`` does (nothing is rebuilt while the inputs are unchanged), then
prints its size compressed (the layer as a registry stores it) and uncompressed (what a node
unpacks), against the budget of 150 MB uncompressed; the number of Debian packages and Python
distributions in it; and the start-up time of its containers under runc with the chart's security
context: ``pipeline-operator --version``, and ``pipeline-operator run`` (Kubernetes backend, a real
kube-apiserver) from ``runc run`` until ``/healthz`` and ``/readyz`` answer 200. The same two are
timed from this checkout's virtualenv for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests import oci  # noqa: E402

from pipeline_operator_dev import builds, controlplane  # noqa: E402

BUDGET_MB = 150.0


def median(values: list[float]) -> float:
    return statistics.median(values)


def operator_args(namespace: str, port: int) -> list[str]:
    return ["run", f"--namespace={namespace}", "--backend=kubernetes", f"--api-listen=127.0.0.1:{port}",
            "--event-store=/var/lib/pipeline-operator/events.sqlite", "--state-dir=/var/lib/pipeline-operator/state"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="start-ups timed per measurement (default 5)")
    args = parser.parse_args()
    reason = oci.unavailable_reason()
    if reason:
        sys.exit(f"error: {reason}")
    binaries = builds.ensure_binaries()
    work = Path(tempfile.mkdtemp(prefix="image-bench-"))
    image = oci.built_image(work, str(binaries.helm))
    builder = oci.builder()
    compressed, uncompressed = builder.layer_sizes(image.outputs.layout)
    document = json.loads(image.outputs.sbom.read_text())
    debs = sum(1 for p in document["packages"] if p["SPDXID"].startswith("SPDXRef-deb-"))
    dists = sum(1 for p in document["packages"] if p["SPDXID"].startswith("SPDXRef-pypi-"))
    site = image.rootfs / "opt/pipeline-operator/lib/python3.11/site-packages"
    kubernetes_mb = sum(f.stat().st_size for f in (site / "kubernetes").rglob("*") if f.is_file()) / 1e6
    python_mb = sum(f.stat().st_size for f in (image.rootfs / "opt").rglob("*") if f.is_file()) / 1e6
    print(f"image {image.outputs.archive.name}")
    print(f"  compressed     {compressed / 1e6:7.1f} MB   (the layer, gzip)")
    print(f"  uncompressed   {uncompressed / 1e6:7.1f} MB   budget {BUDGET_MB:.0f} MB: "
          f"{uncompressed / 1e6 / BUDGET_MB:.2f}x the budget")
    print(f"    of which     {python_mb:7.1f} MB   /opt/pipeline-operator (the virtualenv; the kubernetes "
          f"client alone {kubernetes_mb:.1f} MB)")
    print(f"                 {uncompressed / 1e6 - python_mb:7.1f} MB   Debian ({debs} packages)")
    print(f"  contents       {debs} Debian packages, {dists} Python distributions")

    versions = []
    for _ in range(args.runs):
        started = time.monotonic()
        code, out = image.run(["pipeline-operator", "--version"], timeout=60)
        versions.append(time.monotonic() - started)
        assert code == 0, out
    host_versions = []
    for _ in range(args.runs):
        started = time.monotonic()
        subprocess.run([str(REPO / ".venv/bin/pipeline-operator"), "--version"], check=True, capture_output=True)
        host_versions.append(time.monotonic() - started)

    plane = controlplane.ControlPlane(binaries)
    plane.start()
    try:
        plane.kubectl("apply", "-f", str(REPO / "crds" / "pipelines.dataflow.dev.yaml"))
        controlplane.wait_established(plane.kubectl)
        secrets = work / "serviceaccount"
        secrets.mkdir()
        (secrets / "token").write_text(plane.users["admin"].token)
        (secrets / "ca.crt").write_bytes(Path(plane.ca_file).read_bytes())
        (secrets / "namespace").write_text("default")
        env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": plane.server.rsplit(":", 1)[1]}
        healthz, readyz = [], []
        for _ in range(args.runs):
            port = controlplane.free_port()
            started = time.monotonic()
            container = image.container(["pipeline-operator", *operator_args("default", port)], env=env,
                                        binds=[(secrets, "/var/run/secrets/kubernetes.io/serviceaccount", True)],
                                        name="operator").start()
            try:
                oci.wait_http(f"http://127.0.0.1:{port}/healthz", 120, container)
                healthz.append(time.monotonic() - started)
                oci.wait_http(f"http://127.0.0.1:{port}/readyz", 120, container)
                readyz.append(time.monotonic() - started)
            finally:
                container.stop()
        host_healthz = []
        for _ in range(args.runs):
            port = controlplane.free_port()
            state = Path(tempfile.mkdtemp(dir=work))
            started = time.monotonic()
            proc = subprocess.Popen([str(REPO / ".venv/bin/pipeline-operator"), "run", "--namespace=default",
                                     "--backend=kubernetes", f"--api-listen=127.0.0.1:{port}",
                                     f"--event-store={state}/events.sqlite", f"--state-dir={state}/state"],
                                    env={**os.environ, "KUBECONFIG": str(plane.kubeconfig)},
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                oci.wait_http(f"http://127.0.0.1:{port}/healthz", 120)
                host_healthz.append(time.monotonic() - started)
            finally:
                proc.terminate()
                proc.wait(60)
    finally:
        plane.stop()
    print(f"start-up, median of {args.runs} (runc, the chart's security context; this machine's virtualenv beside)")
    print(f"  --version               {median(versions):6.2f} s   (virtualenv {median(host_versions):.2f} s, "
          f"{median(versions) / median(host_versions):.2f}x)")
    print(f"  run -> /healthz 200     {median(healthz):6.2f} s   (virtualenv {median(host_healthz):.2f} s, "
          f"{median(healthz) / median(host_healthz):.2f}x)")
    print(f"  run -> /readyz 200      {median(readyz):6.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
