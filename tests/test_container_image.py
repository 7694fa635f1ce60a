"""The operator's image as `make image` builds it, run under a real OCI runtime (runc) with the
security context the Helm chart sets: the user the chart names, a read-only root filesystem, no
capabilities, no privilege escalation (tests/oci.py says what is and is not applied).

The image is built once (image/build_image.py; skipped while its inputs are unchanged) and
unpacked with umoci; each test runs containers of it as the cluster would: `--version`, the
reference pipeline process answering `/status`, and the operator with deploy/'s arguments and a
service-account token bound to deploy/'s RBAC, mounted where the kubelet mounts it, taking a
Pipeline to Running while its pods (stood in for by tests/fake_kubelet.py) run from the same image.
It also checks that the Dockerfile describes the same image, that the bill of materials lists
exactly what the image holds, and that skopeo accepts the archive.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from pipeline_operator_dev import controlplane

from . import oci
from .fake_kubelet import FakeKubelet
from .test_operator_lifecycle import FAST_PIPELINE, SQL

pytestmark = [pytest.mark.apiserver, pytest.mark.image]
REPO = Path(__file__).resolve().parent.parent
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


@pytest.fixture(scope="module")
def image(binaries, tmp_path_factory) -> oci.Image:
    reason = oci.unavailable_reason()
    if reason:
        pytest.skip(reason)
    return oci.built_image(tmp_path_factory.mktemp("image"), str(binaries.helm))


def image_python(image: oci.Image, code: str) -> tuple[int, str]:
    return image.run(["python3", "-c", code], timeout=60)


# --- what the image is -----------------------------------------------------------------------------

def test_make_image_as_the_readme_prints_it(image):
    """`make image`, verbatim, from the repository: the image the fixture built is up to date, and the
    three files the README names are there."""
    res = subprocess.run(["make", "image"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr
    version = oci.builder().project_version()
    assert f"dist/image/pipeline-operator-{version}.tar is up to date (localhost/pipeline-operator:{version})" \
        in res.stdout, res.stdout
    for name in (f"pipeline-operator-{version}.tar", "oci/index.json", f"pipeline-operator-{version}.spdx.json"):
        assert (REPO / "dist" / "image" / name).is_file(), name


def test_the_archive_is_accepted_by_skopeo_and_carries_the_dockerfiles_configuration(image, tmp_path):
    built = oci.builder()
    declared = built.dockerfile_config()
    config = image.image_config()["config"]
    assert config["User"] == declared.user == "10001:10001"
    assert config["Entrypoint"] == declared.entrypoint == ["pipeline-operator"]
    assert config["Cmd"] == declared.cmd == ["run", "--all-namespaces", "--backend", "kubernetes"]
    assert config["WorkingDir"] == declared.workdir
    assert sorted(config["ExposedPorts"]) == declared.exposed == ["8080/tcp"]
    assert dict(e.split("=", 1) for e in config["Env"]) == declared.env
    assert config["Labels"] == declared.labels
    assert declared.labels["org.opencontainers.image.version"] == built.project_version()
    # skopeo copies it into another format and reads back the same image
    copy = tmp_path / "copy.oci.tar"
    subprocess.run(["skopeo", "--insecure-policy", "copy", "--quiet", f"docker-archive:{image.outputs.archive}",
                    f"oci-archive:{copy}:{built.project_version()}"], check=True, timeout=300)
    inspected = json.loads(subprocess.run(["skopeo", "--insecure-policy", "inspect", "--config", f"oci-archive:{copy}"],
                                          capture_output=True, text=True, check=True, timeout=120).stdout)
    assert inspected["rootfs"]["diff_ids"] == image.image_config()["rootfs"]["diff_ids"]
    manifest = json.loads(subprocess.run(["tar", "-xOf", str(image.outputs.archive), "manifest.json"],
                                         capture_output=True, check=True).stdout)
    assert manifest[0]["RepoTags"] == [f"localhost/pipeline-operator:{built.project_version()}"]


def test_dockerfile_and_make_image_install_the_same_python_and_distributions(image):
    """Both ways install Debian bookworm's python3.11 and, through image/install.sh, exactly the
    distributions pinned in image/requirements.txt plus the project; the image has what they say."""
    declared = oci.builder().dockerfile_config()
    assert declared.base == "debian:bookworm-slim" and "python3.11" in declared.packages
    assert any("install.sh" in run for run in declared.runs)
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "-r /src/image/requirements.txt" in dockerfile and "--require-hashes" in dockerfile

    code, out = image_python(image, "import sys, importlib.metadata as m, json, re; print(json.dumps("
                             "[sys.version.split()[0], sys.executable, sys.prefix, {re.sub(r'[-_.]+', '-', "
                             "d.metadata['Name']).lower(): d.version for d in m.distributions()}]))")
    assert code == 0, out
    version, executable, prefix, installed = json.loads(out.strip().splitlines()[-1])
    dpkg = {p["name"]: p["version"] for p in oci.builder().debian_packages(image.rootfs)}
    assert version.startswith("3.11.") and dpkg["python3.11"].startswith(version)
    assert prefix == "/opt/pipeline-operator" and executable == "/opt/pipeline-operator/bin/python3"
    pins = dict(re.findall(r"(?m)^([a-z0-9][a-z0-9._-]*)==(\S+)", (REPO / "image" / "requirements.txt").read_text()))
    assert installed == {**pins, "pipeline-operator": oci.builder().project_version()}
    assert "pip" not in installed and "setuptools" not in installed


def test_image_holds_no_compilers_package_manager_caches_or_development_tooling(image):
    root = image.rootfs
    for tool in ("gcc", "cc", "c++", "make", "pip", "pip3", "apt-get"):
        assert not (root / "usr/bin" / tool).exists(), tool
    assert not list(root.glob("var/lib/apt/lists/*_Packages*"))
    assert not list(root.glob("var/cache/apt/**/*.deb"))
    assert not (root / "root/.cache").exists()
    site = root / "opt/pipeline-operator/lib/python3.11/site-packages"
    assert not (site / "pip").exists() and not (site / "cryptography").exists()
    assert (root / "var/lib/dpkg/status").exists()  # scanners read the package database
    passwd = (root / "etc/passwd").read_text()
    assert "operator:x:10001:10001:" in passwd


def test_sbom_lists_every_debian_package_and_distribution_with_its_version(image):
    built = oci.builder()
    document = json.loads(image.outputs.sbom.read_text())
    assert document["spdxVersion"] == "SPDX-2.3" and document["dataLicense"] == "CC0-1.0"
    ids = [p["SPDXID"] for p in document["packages"]]
    assert len(ids) == len(set(ids)) and all(re.fullmatch(r"SPDXRef-[A-Za-z0-9.-]+", i) for i in ids)
    listed = {p["externalRefs"][0]["referenceLocator"].split("@")[0]: p["versionInfo"]
              for p in document["packages"][1:]}
    debs = {f"pkg:deb/debian/{p['name']}": p["version"] for p in built.debian_packages(image.rootfs)}
    dists = {f"pkg:pypi/{re.sub(r'[-_.]+', '-', d['name']).lower()}": d["version"]
             for d in built.python_distributions(image.rootfs)}
    assert listed == {**debs, **dists}
    assert len(debs) > 50 and "pkg:pypi/kopf" in dists and "pkg:deb/debian/python3.11" in debs
    contained = {r["relatedSpdxElement"] for r in document["relationships"] if r["relationshipType"] == "CONTAINS"}
    assert contained == set(ids[1:]) and document["documentDescribes"] == ["SPDXRef-Image"]
    digest = json.loads((image.outputs.layout / "index.json").read_text())["manifests"][0]["digest"]
    assert document["packages"][0]["checksums"][0]["checksumValue"] == digest.removeprefix("sha256:")


# --- running it --------------------------------------------------------------------------------------

def test_version_runs_as_the_charts_user_without_capabilities_on_a_read_only_root(image):
    code, out = image.run(["pipeline-operator", "--version"])
    assert code == 0 and out.strip() == f"pipeline-operator, version {oci.builder().project_version()}", out
    assert image.security.uid == 10001 and image.security.read_only_root and image.security.capabilities == []
    code, out = image_python(image, "import os\n"
                             "s = open('/proc/self/status').read()\n"
                             "print(os.getuid(), os.getgid(), [l.split()[1] for l in s.splitlines() "
                             "if l.startswith(('CapEff', 'CapPrm', 'NoNewPrivs'))])\n"
                             "try:\n    open('/opt/x', 'w')\nexcept OSError as e:\n    print(e.strerror)\n")
    assert code == 0, out
    assert out.splitlines() == ["10001 10001 ['0000000000000000', '0000000000000000', '1']",
                                "Read-only file system"], out


def test_pipeline_process_from_the_image_answers_status(image, tmp_path):
    from pipeline_operator.feldera.launch import config_files, launch_args, new_deployment_id, pipeline_config
    from pipeline_operator.models import BootstrapPolicy, RuntimeDesiredStatus
    port = controlplane.free_port()
    # Feldera's launch contract, as the Kubernetes backend runs it: the config mounted, a writable working directory.
    for name, text in config_files(pipeline_config("0", "image", None, "/tmp/storage", {"digest": "d"})).items():
        (tmp_path / name).write_text(text)
    tmp_path.chmod(0o755)  # readable by the image's user, as a mounted ConfigMap is (pytest makes it 0700)
    args = launch_args("/config/config.yaml", "127.0.0.1", RuntimeDesiredStatus.RUNNING, new_deployment_id(),
                       BootstrapPolicy.ALLOW, False, default_port=port)
    container = image.container(["pipeline-operator", "pipeline-process", *args], env={"PIPELINE_INIT_SECONDS": "0.5"},
                                binds=[(tmp_path, "/config", True)], cwd="/tmp", name="pipeline").start()
    try:
        oci.wait_http(f"http://127.0.0.1:{port}/status", 60, container)
        seen = []
        for _ in range(100):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as response:
                status = json.loads(response.read())
            seen.append(status["runtime_status"])
            if status["runtime_status"] == "Running":
                break
            time.sleep(0.1)
        assert seen[-1] == "Running" and status["runtime_desired_status"] == "Running", (seen, status)
        assert set(seen) <= {"Initializing", "Running"}, seen
    finally:
        code = container.stop(signal.SIGTERM)
    assert code == 0, container.output()[-2000:]


def deploy_objects(cluster) -> list[dict]:
    rendered = cluster.kubectl("kustomize", str(REPO / "deploy")).stdout
    return [o for o in yaml.safe_load_all(rendered) if o]


def test_operator_from_the_image_takes_a_pipeline_to_running_with_deploys_rbac(
        image, crd_installed, namespace, pipelines, tmp_path):
    cluster = crd_installed
    objects = deploy_objects(cluster)
    rbac = [o for o in objects if o["kind"] in ("Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
                                                "Role", "RoleBinding")]
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": rbac}))
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    operator_ns = deployment["metadata"]["namespace"]
    sa = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    container_spec = deployment["spec"]["template"]["spec"]["containers"][0]

    # What the kubelet mounts for the pod's service account: a token, the cluster's CA, the namespace.
    secrets = tmp_path / "serviceaccount"
    secrets.mkdir()
    token = cluster.kubectl("create", "token", sa, "-n", operator_ns, "--duration=1h").stdout.strip()
    (secrets / "token").write_text(token)
    (secrets / "ca.crt").write_bytes(Path(cluster.plane.ca_file).read_bytes())
    (secrets / "namespace").write_text(operator_ns)
    pods = oci.RuncPods(image)
    kubelet = FakeKubelet(cluster.kubeconfig, namespace, tmp_path / "kubelet", runtime=pods)
    kubelet.start()

    # deploy/'s arguments and environment, but for one namespace (other tests share this API server),
    # and an API port of its own (the container shares this machine's network, where the kubelet stand-in's
    # pods listen at their pod IPs).
    port = controlplane.free_port()
    args = []
    for arg in container_spec["args"]:
        if arg == "--all-namespaces":
            arg = f"--namespace={namespace}"
        elif arg.startswith("--api-listen="):
            arg = f"--api-listen=127.0.0.1:{port}"
        args.append(arg)
    env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": cluster.plane.server.rsplit(":", 1)[1]}
    for e in container_spec.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        elif e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            env[e["name"]] = operator_ns
    assert container_spec["image"].endswith(f":{oci.builder().project_version()}")
    operator = image.container([*container_spec.get("command", image.image_config()["config"]["Entrypoint"]), *args],
                               env=env, binds=[(secrets, SERVICE_ACCOUNT_DIR, True),
                                               (kubelet.workdir, str(kubelet.workdir), True)],
                               name="operator").start()
    try:
        oci.wait_http(f"http://127.0.0.1:{port}/readyz", 90, operator)
        pipelines.create("orders", {"desiredStatus": "Provisioned", "program": {"sql": SQL},
                                    "deployment": {"env": FAST_PIPELINE}})
        status = pipelines.wait_status("orders", None, deploymentStatus="Running", timeout=120)
        assert status["deploymentResourcesStatus"] == "Provisioned"
        assert len(kubelet.processes) == 1 and len(pods.containers) == 1  # the pod runs in a container
        pod = cluster.get("pod", f"{next(iter(kubelet.processes))}-0", namespace)
        assert pod["spec"]["containers"][0]["image"] == container_spec["image"]  # the operator's own image
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v0/pipelines/orders/events?selector=status",
                                         headers={"Authorization": f"Bearer {cluster.plane.users['admin'].token}",
                                                  "Feldera-Tenant": namespace})
        with urllib.request.urlopen(request, timeout=10) as response:  # authenticated by a TokenReview
            events = json.loads(response.read())
        assert any(e["deployment_runtime_status"] == "Running" for e in events), events
    finally:
        code = operator.stop(signal.SIGTERM, timeout=60)
        kubelet.stop()
    assert code == 0, operator.output()[-3000:]
    assert not kubelet.errors, kubelet.errors
