"""Every code block of the README is run here, run by a named test, or listed with the reason it cannot run.

``README_BLOCKS`` accounts for each fenced block (each command line of a ``bash`` block, each
other block by its language and first line). A new block, or a changed command, that is in
neither fails ``test_every_readme_block_is_run_or_listed``, so the README and the product cannot
drift apart. The tests below read the blocks from the README itself and run them as written.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from pipeline_operator.core.transitions import RESOURCES_TRANSITIONS
from pipeline_operator.settings import ENV_PREFIX, OperatorSettings
from pipeline_operator_dev.controlplane import wait_established

from .conftest import Cluster, _kill_pipeline_processes_under
from .operator_harness import OperatorProcess, Pipelines, fresh_log_path, wait_for
from .test_helm import fresh  # noqa: F401 (a control plane of its own, for the Helm install)

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
BIN = Path(sys.executable).parent  # this installation's console scripts (pipeline-operator)

RUN = "run"              # run by the test of this file named in the entry
ELSEWHERE = "elsewhere"  # run as written by the test named as tests/<file>.py::<test>
NOT_RUN = "not run"      # cannot run here, for the reason given

# Each README item: (how, the test that runs it, or why it is not run).
README_BLOCKS: dict[str, tuple[str, str]] = {
    "mermaid: stateDiagram-v2":
        (RUN, "test_lifecycle_diagram_is_the_resources_transition_table"),
    "yaml: apiVersion: dataflow.dev/v1alpha1":
        (RUN, "test_readme_run_command_runs_the_example_pipeline_and_the_sdk_snippet"),
    'plain: The Pipeline "orders" is invalid:':
        (RUN, "test_invalid_spec_is_rejected_with_the_readme_message"),
    "yaml: runtimeConfig:":
        (RUN, "test_readme_feldera_configurations_are_accepted_with_feldera_defaults"),
    "make image":
        (ELSEWHERE, "tests/test_container_image.py::test_make_image_as_the_readme_prints_it"),
    "kind load image-archive dist/image/pipeline-operator-0.1.0.tar":
        (NOT_RUN, "it needs a kind cluster and the tarball of `make image`; the tests' control plane runs no pods"),
    "skopeo copy docker-archive:dist/image/pipeline-operator-0.1.0.tar "
    "docker://registry.example/team/pipeline-operator:0.1.0":
        (NOT_RUN, "it pushes to a registry (registry.example stands for yours)"),
    "pipeline-operator run --backend local --compiler feldera --feldera-sql-compiler "
    "/opt/feldera/sql2dbsp-jar-with-dependencies.jar --java /opt/java/bin/java --program-binaries "
    "/srv/feldera-binaries":
        (NOT_RUN, "/opt/feldera and /srv are the reader's paths; tests/test_feldera_engine.py starts the operator "
                  "with these flags and the toolchain's own paths"),
    "docker load -i dist/image/pipeline-operator-0.1.0.tar":
        (NOT_RUN, "it needs a Docker daemon and the tarball of `make image`"),
    "docker tag localhost/pipeline-operator:0.1.0 registry.example/team/pipeline-operator:0.1.0":
        (NOT_RUN, "it needs a Docker daemon with the image loaded"),
    "docker push registry.example/team/pipeline-operator:0.1.0":
        (NOT_RUN, "it pushes to a registry (registry.example stands for yours)"),
    "helm install pipeline-operator charts/pipeline-operator -n pipeline-operator-system --create-namespace "
    "--set image.repository=localhost/pipeline-operator --set image.tag=0.1.0":
        (RUN, "test_helm_install_command_installs_the_operator"),
    "kubectl apply -k deploy/overlays/local-image":
        (ELSEWHERE, "tests/test_deploy.py::test_kubectl_apply_k_local_image_overlay_runs_the_built_image"),
    "pipeline-operator run --namespace data-team":
        (RUN, "test_readme_run_command_runs_the_example_pipeline_and_the_sdk_snippet"),
    "plain: demo/orders: provisioning compute and storage -> resources Provisioning, desired Provisioned, "
    "program Success, storage InUse":
        (RUN, "test_readme_run_command_runs_the_example_pipeline_and_the_sdk_snippet"),
    "python: from feldera import FelderaClient":
        (RUN, "test_readme_run_command_runs_the_example_pipeline_and_the_sdk_snippet"),
    "make demo":
        (RUN, "test_make_demo_reaches_running"),
    "plain: ==> orders: Provisioning (program Success, storage InUse)":
        (RUN, "test_make_demo_reaches_running"),
    "make test":
        (NOT_RUN, "it runs this whole test suite, this test included: it cannot run inside itself"),
    "make crd":
        (RUN, "test_make_crd_leaves_the_checked_in_crds_unchanged"),
    "plain: $ kubectl pipeline events orders -n data-team":
        (ELSEWHERE, "tests/test_kubectl_plugin.py::test_events_actions_and_status_through_kubectl"),
}


@dataclass(frozen=True)
class Item:
    key: str
    text: str  # the command (bash) or the whole block
    line: int  # where the block starts in README.md


def readme_items(readme: str | None = None) -> list[Item]:
    """Every fenced block: one item per command of a shell block, one per other block."""
    items: list[Item] = []
    lines = (README.read_text() if readme is None else readme).splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].lstrip().startswith("```"):
            i += 1
            continue
        fence = lines[i].lstrip()
        lang = fence[3:].strip() or "plain"
        start, i = i + 1, i + 1
        body = []
        while i < len(lines) and not lines[i].lstrip().startswith("```"):
            body.append(lines[i])
            i += 1
        assert i < len(lines), f"README.md:{start}: code block is never closed"
        i += 1
        if lang in ("bash", "sh", "shell", "console"):
            command, first_line = "", 0
            for n, raw in enumerate(body, start + 1):
                part = re.sub(r"(^|\s)#.*$", "", raw).strip()
                first_line = first_line or n
                command = f"{command} {part.removesuffix(chr(92)).strip()}".strip()
                if part.endswith("\\"):
                    continue
                if command:
                    items.append(Item(" ".join(command.split()), command, first_line))
                command, first_line = "", 0
        else:
            first = next((line.strip() for line in body if line.strip()), "")
            items.append(Item(f"{lang}: {first}", "\n".join(body) + "\n", start))
    return items


def readme_item(key: str) -> Item:
    found = [item for item in readme_items() if item.key == key]
    assert len(found) == 1, f"README.md has {len(found)} blocks {key!r}; update README_BLOCKS and this test"
    assert key in README_BLOCKS
    return found[0]


# -- the index -----------------------------------------------------------------------------------


def test_every_readme_block_is_run_or_listed():
    items = readme_items()
    keys = [item.key for item in items]
    duplicates = {k for k in keys if keys.count(k) > 1}
    assert not duplicates, f"README blocks that the index cannot tell apart: {duplicates}"
    missing = [f"README.md:{item.line}: {item.key!r}" for item in items if item.key not in README_BLOCKS]
    assert not missing, ("README code blocks neither run by a test nor listed in README_BLOCKS "
                         "(tests/test_readme.py) with the reason they cannot run here:\n" + "\n".join(missing))
    stale = set(README_BLOCKS) - set(keys)
    assert not stale, f"README_BLOCKS lists blocks the README no longer has: {stale}"
    for key, (how, what) in README_BLOCKS.items():
        if how == RUN:
            assert callable(globals().get(what)) and what.startswith("test_"), f"{key!r}: no test {what} here"
        elif how == ELSEWHERE:
            path, _, test = what.partition("::")
            assert re.search(rf"^def {re.escape(test)}\(", (REPO / path).read_text(), re.M), \
                f"{key!r}: {what} does not exist"
        else:
            assert how == NOT_RUN and what, f"{key!r}: say why it is not run"


def test_the_index_sees_new_blocks_and_each_command_of_a_shell_block():
    text = "```bash\nmake demo   # a comment\nkubectl get \\\n  pl\n```\n\n```\nnew output\n```\n"
    assert [(item.key, item.line) for item in readme_items(text)] == \
        [("make demo", 2), ("kubectl get pl", 3), ("plain: new output", 7)]


# -- blocks run here -----------------------------------------------------------------------------


def test_lifecycle_diagram_is_the_resources_transition_table():
    diagram = readme_item("mermaid: stateDiagram-v2").text
    edges = set(re.findall(r"^\s*(\w+) --> (\w+)", diagram, re.M))
    allowed = {(old.value, new.value) for old, news in RESOURCES_TRANSITIONS.items() for new in news}
    assert edges <= allowed, f"the README draws transitions the core refuses: {edges - allowed}"
    moves = {(old, new) for old, new in allowed if old != new}
    assert moves <= edges, f"the README's diagram misses allowed transitions: {moves - edges}"


def test_relative_paths_are_resolved_against_the_working_directory_at_start(tmp_path, monkeypatch):
    """Pipeline processes run in their own folders: every path the operator hands them must be absolute."""
    from pipeline_operator.backends.local import LocalBackend
    from pipeline_operator.settings import settings_table
    for var in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)
    defaults = OperatorSettings()
    assert defaults.state_dir == tmp_path / OperatorSettings.model_fields["state_dir"].default
    assert defaults.event_store == tmp_path / OperatorSettings.model_fields["event_store"].default
    given = OperatorSettings(state_dir="state", event_store="x/../events.sqlite")
    assert (given.state_dir, given.event_store) == (tmp_path / "state", tmp_path / "events.sqlite")
    monkeypatch.setenv(f"{ENV_PREFIX}STATE_DIR", "from-env")
    assert OperatorSettings().state_dir == tmp_path / "from-env"
    assert OperatorSettings(state_dir="/srv/state").state_dir == Path("/srv/state")
    assert LocalBackend(Path("state")).root == tmp_path / "state" / "pipelines"
    table = settings_table()  # the README shows the defaults as given, not this machine's paths
    assert str(tmp_path) not in table and "| `pipeline-operator-state` |" in table


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class ReadmeOperator(OperatorProcess):
    """The operator started exactly as the README's command line, in ``cwd``, with default settings."""

    def __init__(self, cluster: Cluster, argv: list[str], cwd: Path, log_dir: Path) -> None:
        super().__init__(cluster, None, log_dir, [])
        self.argv = argv
        self.cwd = cwd
        self.api_port = int(OperatorSettings.model_fields["api_listen"].get_default(
            call_default_factory=True).rpartition(":")[2])

    def start(self) -> ReadmeOperator:
        moved = not _port_is_free(self.api_port)  # only then another port: the README's default is taken here
        self._launch(moved)
        listening = "HTTP API listening on"
        wait_for("the operator's HTTP API to listen", lambda: listening in self.log() or self.proc.poll() is not None,
                 60)
        if self.proc.poll() is not None and not moved and "address already in use" in self.log():
            self._launch(True)  # taken between the check and the bind (another test run): once more, elsewhere
        return self

    def _launch(self, elsewhere: bool) -> None:
        argv = list(self.argv)
        if elsewhere:
            from pipeline_operator_dev.controlplane import free_port
            self.api_port = free_port()
            argv += ["--api-listen", f"127.0.0.1:{self.api_port}"]
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(ENV_PREFIX) and k != "KUBERNETES_SERVICE_HOST"}  # defaults, outside a cluster
        env["KUBECONFIG"] = str(self.kubeconfig)
        self.log_path = fresh_log_path(self.state_dir)
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen([str(BIN / argv[0]), *argv[1:]], cwd=self.cwd, stdout=log,
                                         stderr=subprocess.STDOUT, env=env)


@pytest.mark.apiserver
def test_readme_run_command_runs_the_example_pipeline_and_the_sdk_snippet(crd_installed, namespace, tmp_path,
                                                                         kstatus):
    """`pipeline-operator run --namespace NAME` as written (default --state-dir and --event-store, both
    relative), from a fresh working directory: the README's Pipeline reaches Running, the operator logs
    what the README shows, and the README's SDK snippet works against it."""
    command = readme_item("pipeline-operator run --namespace data-team").text
    argv = shlex.split(command)
    assert argv[:3] == ["pipeline-operator", "run", "--namespace"] and len(argv) == 4, command
    argv[3] = namespace  # a namespace of this test's own
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    op = ReadmeOperator(crd_installed, argv, cwd, tmp_path)
    pipelines = Pipelines(crd_installed, namespace)
    try:
        op.start()
        manifest = readme_item("yaml: apiVersion: dataflow.dev/v1alpha1").text
        name = yaml.safe_load(manifest)["metadata"]["name"]
        applied = crd_installed.kubectl("apply", "-n", namespace, "-f", "-", input=manifest).stdout
        assert f"pipeline.dataflow.dev/{name} created" in applied
        kstatus.track(namespace, name)
        st = wait_for(f"{name} to be Running (or to fail)", lambda: _running_or_failed(pipelines.status(name)), 60,
                      operator=op)
        assert "deploymentError" not in st, f"{name} failed: {st['deploymentError']}\n{op.log()[-3000:]}"
        assert st["programStatus"] == "Success" and st["storageStatus"] == "InUse"

        state_dir = cwd / OperatorSettings.model_fields["state_dir"].default
        event_store = cwd / OperatorSettings.model_fields["event_store"].default
        uid = pipelines.get(name)["metadata"]["uid"]
        folder = next((state_dir / "pipelines").glob(f"*__{uid}"))
        assert (folder / "storage").is_dir() and (folder / "config.json").is_file()
        assert event_store.is_file() and event_store.stat().st_size > 0
        assert len(op.pipeline_processes(uid)) == 1
        from pipeline_operator.backends.local import processes_under
        assert sorted(processes_under(cwd)) == sorted(op.pipeline_processes(uid)), \
            "the pipeline process was not handed absolute paths under the working directory"

        # The operator logs its decisions as the README shows them.
        sample = readme_item("plain: demo/orders: provisioning compute and storage -> resources Provisioning, "
                             "desired Provisioned, program Success, storage InUse").text
        for line in sample.strip().splitlines():
            expected = line.replace("demo/", f"{namespace}/", 1).removesuffix("...").rstrip(", ")
            wait_for(f"the operator to log {expected!r}", lambda text=expected: text in op.log(), 10, operator=op)

        # The README's SDK snippet, against this operator, as the admin user, in this namespace.
        snippet = readme_item("python: from feldera import FelderaClient").text
        tenant = 'client.http.headers["Feldera-Tenant"] = "data-team"'
        assert '"http://127.0.0.1:8080"' in snippet and tenant in snippet
        snippet = snippet.replace('"http://127.0.0.1:8080"', repr(op.api_url)).replace(
            tenant, f'client.http.headers["Feldera-Tenant"] = {namespace!r}')
        wait_for("the operator's API", lambda: _answers(f"{op.api_url}/readyz"), 10, operator=op)
        exec(compile(snippet, "README.md (python block)", "exec"), {"token": crd_installed.plane.users["admin"].token})
        pipelines.wait_status(name, op, timeout=30, deploymentStatus="Paused")
        op.assert_alive()
    finally:
        if op.proc is not None:
            op.stop()
        _kill_pipeline_processes_under(cwd)
        _kill_pipeline_processes_under(tmp_path)


def _running_or_failed(status: dict) -> dict | None:
    return status if status.get("deploymentStatus") == "Running" or status.get("deploymentError") else None


def _answers(url: str) -> bool:
    import urllib.request
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.mark.apiserver
def test_readme_feldera_configurations_are_accepted_with_feldera_defaults(crd_installed, namespace):
    """The README's runtimeConfig and programConfig, in the README's Pipeline: stored as written, with
    Feldera's defaults for what they leave out."""
    configs = yaml.safe_load(readme_item("yaml: runtimeConfig:").text)
    pipeline = yaml.safe_load(readme_item("yaml: apiVersion: dataflow.dev/v1alpha1").text)
    pipeline["spec"] |= configs
    pipeline["spec"].pop("deployment", None)  # its provisioningTimeoutSeconds would hide the configuration's
    crd_installed.kubectl("apply", "--validate=strict", "-n", namespace, "-f", "-", input=json.dumps(pipeline))
    stored = crd_installed.get("pipeline", pipeline["metadata"]["name"], namespace)["spec"]
    assert stored["runtimeConfig"]["workers"] == configs["runtimeConfig"]["workers"]
    assert stored["runtimeConfig"]["storage"]["backend"] == configs["runtimeConfig"]["storage"]["backend"] | {
        "config": {"sync": configs["runtimeConfig"]["storage"]["backend"]["config"]["sync"] | {
            "fail_if_no_checkpoint": False, "pull_interval": 10, "retention_min_age": 30,
            "retention_min_count": 10, "standby": False}}}
    assert stored["runtimeConfig"]["fault_tolerance"] == {"model": "exactly_once", "checkpoint_interval_secs": 60}
    assert stored["programConfig"] == configs["programConfig"] | {"cache": True}


@pytest.mark.apiserver
def test_invalid_spec_is_rejected_with_the_readme_message(crd_installed, namespace):
    """The README's Pipeline with the invalid value the README's error names: kubectl prints the README's text."""
    message = readme_item('plain: The Pipeline "orders" is invalid:').text
    field, value = re.search(r"spec\.(\w+): Unsupported value: \"(\w+)\"", message).groups()
    pipeline = yaml.safe_load(readme_item("yaml: apiVersion: dataflow.dev/v1alpha1").text)
    pipeline["spec"][field] = value
    res = crd_installed.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(pipeline), check=False)
    assert res.returncode != 0
    printed = [line.rstrip() for line in res.stderr.strip().splitlines()]
    assert printed == message.strip().splitlines(), f"kubectl prints:\n{res.stderr}\nthe README says:\n{message}"
    assert crd_installed.kubectl("get", "pipeline", pipeline["metadata"]["name"], "-n", namespace,
                                 check=False).returncode != 0


@pytest.mark.apiserver
def test_helm_install_command_installs_the_operator(fresh):  # noqa: F811
    """The README's `helm install` as written, from the repository, on a control plane of its own: it names the
    image `make image` builds, which the operator and the pipelines' default both use."""
    command = readme_item("helm install pipeline-operator charts/pipeline-operator -n "
                          "pipeline-operator-system --create-namespace --set image.repository=localhost/pipeline-"
                          "operator --set image.tag=0.1.0").text
    argv = shlex.split(command)
    namespace = argv[argv.index("-n") + 1]
    env = {"KUBECONFIG": str(fresh.kubeconfig), "HOME": str(fresh.plane.workdir), "PATH": "/usr/bin:/bin"}
    res = subprocess.run([str(fresh.binaries.helm), *argv[1:]], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "STATUS: deployed" in res.stdout
    assert fresh.get("namespace", namespace)["status"]["phase"] == "Active"
    wait_established(fresh.kubectl)
    deployment = fresh.get("deployment", "pipeline-operator", namespace)
    assert deployment["spec"]["replicas"] == 1
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "localhost/pipeline-operator:0.1.0"
    assert {"name": "PIPELINE_OPERATOR_PIPELINE_IMAGE", "value": container["image"]} in container["env"]
    for kind, name, ns in (("serviceaccount", "pipeline-operator", namespace),
                           ("service", "pipeline-operator", namespace),
                           # The default: a Role in the namespaces it watches (here the release's own).
                           ("role", "pipeline-operator", namespace),
                           ("rolebinding", "pipeline-operator", namespace),
                           ("clusterrolebinding", "pipeline-operator-auth-delegator-pipeline-operator-system", None)):
        assert fresh.get(kind, name, ns)["metadata"]["name"] == name
    assert fresh.kubectl("get", "clusterrole", "pipeline-operator", check=False).returncode != 0


@pytest.mark.apiserver
def test_make_demo_reaches_running(binaries, tmp_path):
    """`make demo`, non-interactively as the README says (`make demo DEMO_ARGS=--exit-when-running`), with no
    KUBECONFIG: its own embedded control plane; the sample reaches Running and the output reads like the README's."""
    readme = README.read_text()
    assert readme_item("make demo").text == "make demo"
    assert "`make demo DEMO_ARGS=--exit-when-running`" in readme
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    res = subprocess.run(["make", "-C", str(REPO), "demo", "DEMO_ARGS=--exit-when-running"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    out = res.stdout
    assert res.returncode == 0, out[-3000:] + res.stderr[-3000:]
    sample = readme_item("plain: ==> orders: Provisioning (program Success, storage InUse)").text.splitlines()
    lines = out.splitlines()
    for line in sample:
        if line.startswith("==> orders: "):  # a short-lived status may fall between two polls: then in the table
            status = line.split()[2]
            assert line in lines or f"{status} (desired" in out, f"{line!r} not in the demo's output:\n{out}"
        elif line.startswith("==>"):
            assert line in lines, f"{line!r} not in the demo's output:\n{out}"
    header = next(line for line in sample if line.startswith("time"))
    assert header.split() in [line.split() for line in lines]


def test_make_crd_leaves_the_checked_in_crds_unchanged(tmp_path):
    """`make crd` as written, in a copy of the repository's Makefile and CRD folders (so that it cannot rewrite
    the working tree): every file it writes is byte for byte the repository's, i.e. `git status` would show
    no change."""
    command = readme_item("make crd").text
    copy = tmp_path / "repo"
    copy.mkdir()
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy2(REPO / name, copy / name)  # mtimes kept: the virtualenv stays up to date for make
    (copy / ".venv").symlink_to(REPO / ".venv")
    res = subprocess.run(["make", "-C", str(copy), *shlex.split(command)[1:]], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    written = re.findall(r"^wrote (\S+)$", res.stderr, re.M)
    assert "crds/pipelines.dataflow.dev.yaml" in written, res.stderr
    changed = [path for path in written if (copy / path).read_text() != (REPO / path).read_text()]
    assert not changed, f"`make crd` would change {changed}: regenerate them with `make crd` and commit them"


@pytest.mark.apiserver
def test_control_plane_fetch_finds_the_binaries(binaries):
    """`pipeline-operator control-plane fetch` (named in the README's prose): reuses what the session built."""
    res = subprocess.run([str(BIN / "pipeline-operator"), "control-plane", "fetch"], capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    found = dict(line.split("\t") for line in res.stdout.splitlines() if "\t" in line)
    assert found == binaries.as_dict(), res.stdout
    assert all(Path(path).is_file() and os.access(path, os.X_OK) for path in found.values())
