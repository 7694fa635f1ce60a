"""Feldera's launch contract (feldera/launch.py): the PipelineConfig the operator writes for a start is the one
Feldera v0.306's runner writes, field by field, and the reference process runs with those arguments and files.

The golden files were written by Feldera's own serde types (``feldera_types::config::PipelineConfig``, as
``local_runner.rs`` writes ``config.json``) for the orders program compiled by Feldera's SQL compiler
(``schema.json`` and ``dataflow.json`` beside them), with the default runtime configuration and with
``{"workers": 2}``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from pipeline_operator.feldera.launch import (
    config_files,
    deployment_id_of,
    launch_args,
    pipeline_config,
    reference_program,
    tokio_worker_threads,
)
from pipeline_operator.feldera_config import RuntimeConfig
from pipeline_operator.models import BootstrapPolicy, RuntimeDesiredStatus

DATA = Path(__file__).parent / "data" / "feldera-orders"
PIPELINE_ID = "3f2c1d4e-5a6b-4c7d-8e9f-0a1b2c3d4e5f"


def orders_artifact() -> dict[str, Any]:
    """The orders program as Feldera's compiler mode keeps it: its schema and dataflow."""
    return {"digest": "orders", "program_info": {"schema": json.loads((DATA / "schema.json").read_text()),
                                                 "input_connectors": {}, "output_connectors": {}},
            "dataflow": json.loads((DATA / "dataflow.json").read_text())}


def differences(ours: Any, golden: Any, path: str = "") -> list[str]:
    if isinstance(golden, dict) and isinstance(ours, dict):
        found = [f"{path}.{k}: missing" for k in golden if k not in ours]
        found += [f"{path}.{k}: not Feldera's" for k in ours if k not in golden]
        for k in golden.keys() & ours.keys():
            found += differences(ours[k], golden[k], f"{path}.{k}")
        return found
    if isinstance(golden, list) and isinstance(ours, list) and len(golden) == len(ours):
        return [d for i, (a, b) in enumerate(zip(ours, golden, strict=True)) for d in differences(a, b, f"{path}[{i}]")]
    return [] if ours == golden and type(ours) is type(golden) else [f"{path}: {ours!r} != Feldera's {golden!r}"]


@pytest.mark.parametrize(("golden", "runtime_config"), [
    ("golden-config.json", None),
    ("golden-config-workers2.json", RuntimeConfig.model_validate({"workers": 2})),
])
def test_config_json_is_felderas_field_by_field(golden: str, runtime_config: RuntimeConfig | None) -> None:
    expected = json.loads((DATA / golden).read_text())
    storage = expected["storage_config"]["path"]
    config = pipeline_config(PIPELINE_ID, "orders", runtime_config, storage, orders_artifact())
    assert differences(config, expected) == []
    files = config_files(config)
    assert json.loads(files["config.json"]) == expected
    # config.yaml is the same document (JSON is YAML): a pipeline that reads the YAML reads the same.
    assert json.loads(files["config.yaml"]) == expected
    # Feldera's key order, as its serde writes the struct.
    assert list(json.loads(files["config.json"])) == list(expected)


def test_launch_arguments_and_environment_are_felderas() -> None:
    args = launch_args("/d/config.yaml", "127.0.0.1", RuntimeDesiredStatus.PAUSED, "0190-id",
                       BootstrapPolicy.AWAIT_APPROVAL, True)
    assert args == ["--config-file", "/d/config.yaml", "--bind-address", "127.0.0.1", "--initial", "paused",
                    "--deployment-id", "0190-id", "--bootstrap-policy", "await_approval", "--silent-bootstrap"]
    assert tokio_worker_threads(None) == "8"
    assert tokio_worker_threads(RuntimeConfig.model_validate({"workers": 3})) == "3"
    assert tokio_worker_threads(RuntimeConfig.model_validate({"workers": 3, "io_workers": 5})) == "5"
    # One deployment id per start (per token), the same for every retry of it.
    assert deployment_id_of("a") == deployment_id_of("a") != deployment_id_of("b")


def test_reference_program_knows_tables_views_and_changes_with_the_program() -> None:
    config = pipeline_config(PIPELINE_ID, "orders", None, "/s", orders_artifact())
    program = reference_program(config)
    assert program["tables"] == ["orders"] and program["views"] == ["error_view", "total"]
    other = orders_artifact()
    other["dataflow"]["mir"]["s9"]["persistent_id"] = "changed"
    assert reference_program(pipeline_config(PIPELINE_ID, "orders", None, "/s", other))["digest"] != program["digest"]


def test_reference_process_takes_felderas_arguments_and_files(tmp_path: Path) -> None:
    """Started as Feldera's runner starts a pipeline binary, the reference process reads its storage and
    workers from config.json, writes the port file in its working directory and answers /status."""
    config = pipeline_config(PIPELINE_ID, "orders", RuntimeConfig.model_validate({"workers": 3}),
                             str(tmp_path / "storage"), orders_artifact())
    for name, text in config_files(config).items():
        (tmp_path / name).write_text(text)
    args = launch_args(str(tmp_path / "config.yaml"), "127.0.0.1", RuntimeDesiredStatus.PAUSED,
                       "01900000-0000-7000-8000-000000000000", BootstrapPolicy.ALLOW, False)
    env = {**os.environ, "PIPELINE_INIT_SECONDS": "0", "TOKIO_WORKER_THREADS": "3"}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline_operator.cli", "pipeline-process", *args],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "port").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout and proc.stdout.read()
            time.sleep(0.05)
        text = (tmp_path / "port").read_text()
        assert text.endswith("\n")
        port = int(text)
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as response:
                status = json.loads(response.read())
            if status["runtime_status"] != "Initializing" or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert status["runtime_status"] == "Paused", status
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as response:
            stats = json.loads(response.read())
        assert stats["global_metrics"]["state"] == "Paused"
        assert (tmp_path / "storage").is_dir()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _fake_sql_compiler(tmp_path: Path, schema: dict[str, Any], stderr: str = "", code: int = 0) -> Path:
    """A stand-in for ``java -jar sql2dbsp.jar``: writes ``schema.json`` and ``dataflow.json`` where the real
    one's arguments say (``-js``, ``--dataflow``), the given stderr, and exits with ``code``."""
    script = tmp_path / "java"
    script.write_text(f"""#!{sys.executable}
import json, sys
args = sys.argv[1:]
open(args[args.index("-js") + 1], "w").write({json.dumps(json.dumps(schema))})
open(args[args.index("--dataflow") + 1], "w").write('{{"mir": {{}}}}')
sys.stderr.write({stderr!r})
sys.exit({code})
""")
    script.chmod(0o755)
    return script


def _compile(tmp_path: Path, java: Path, binaries: Path) -> Any:
    import asyncio

    from pipeline_operator.feldera.compiler import FelderaCompiler
    from pipeline_operator.models import ProgramStatus, program_digest

    async def go() -> Any:
        compiler = FelderaCompiler(tmp_path / "programs", tmp_path / "jar", str(java), binaries, "0.306.0")
        digest = program_digest("CREATE TABLE t (x INT);")
        compiler.ensure(digest, "CREATE TABLE t (x INT);", lambda: None)
        for _ in range(500):
            seen = compiler.observe(digest)
            if seen.status in (ProgramStatus.SQL_ERROR, ProgramStatus.RUST_ERROR, ProgramStatus.SUCCESS,
                               ProgramStatus.SYSTEM_ERROR):
                return seen, compiler.artifact(digest)
            await asyncio.sleep(0.02)
        raise AssertionError(f"still {seen.status}")
    return asyncio.run(go())


def test_a_program_with_connectors_is_refused_by_the_feldera_compiler_mode(tmp_path: Path) -> None:
    """A connector would make the pipeline read or write what its URL or path names (a file on the operator's
    machine, any host): such a program is a SqlError, never a pipeline."""
    schema = {"inputs": [{"name": "t", "fields": [], "properties": {"connectors": {
        "value": '[{"transport": {"name": "file_input", "config": {"path": "/etc/shadow"}}}]'}}}], "outputs": []}
    seen, artifact = _compile(tmp_path, _fake_sql_compiler(tmp_path, schema), tmp_path)
    assert seen.status.value == "SqlError" and artifact is None
    (message,) = seen.error["sql_compilation"]["messages"]
    assert message["error_type"] == "ConnectorGenerationError" and "connectors of t" in message["message"]


def test_the_feldera_compiler_mode_reports_the_compilers_messages_and_a_missing_binary(tmp_path: Path) -> None:
    messages = [{"start_line_number": 1, "start_column": 2, "end_line_number": 1, "end_column": 3, "warning": False,
                 "error_type": "Error parsing SQL", "message": "boom", "snippet": "    1|x\n"}]
    java = _fake_sql_compiler(tmp_path, {"inputs": [], "outputs": []}, "WARNING: jvm noise\n" + json.dumps(messages), 1)
    seen, _ = _compile(tmp_path, java, tmp_path)
    assert seen.status.value == "SqlError" and seen.error["sql_compilation"] == {"exit_code": 1, "messages": messages}
    ok = tmp_path / "ok"
    ok.mkdir()
    seen, _ = _compile(ok, _fake_sql_compiler(ok, {"inputs": [], "outputs": []}), ok / "binaries")
    assert seen.status.value == "RustError"
    assert "is missing" in seen.error["rust_compilation"]["stderr"]


def test_a_missing_binary_is_looked_for_again_and_the_program_compiles_once_it_is_there(tmp_path: Path) -> None:
    """RustError for a missing binary is not final: the store is looked at again (bounded, with backoff) and once
    the binary is there the program is compiled again, to Success, with no change of the program."""
    import asyncio

    from pipeline_operator.feldera.compiler import FelderaCompiler, binary_key
    from pipeline_operator.models import ProgramStatus, program_digest

    sql = "CREATE TABLE t (x INT);"
    java = _fake_sql_compiler(tmp_path, {"inputs": [], "outputs": []})
    binaries = tmp_path / "binaries"
    binaries.mkdir()

    async def go() -> list[ProgramStatus]:
        compiler = FelderaCompiler(tmp_path / "programs", tmp_path / "jar", str(java), binaries, "0.306.0")
        compiler.binary_recheck = (0.02, 0.05)
        digest = program_digest(sql)
        compiler.ensure(digest, sql, lambda: None)
        seen: list[ProgramStatus] = []
        for _ in range(1000):
            status = compiler.observe(digest).status
            if not seen or seen[-1] is not status:
                seen.append(status)
            if status is ProgramStatus.RUST_ERROR and not (binaries / binary_key("0.306.0", sql)).exists():
                assert "looks for it again" in compiler.observe(digest).error["rust_compilation"]["stderr"]
                await asyncio.sleep(0.2)  # a few looks find nothing: still RustError
                assert compiler.observe(digest).status is ProgramStatus.RUST_ERROR
                (binaries / binary_key("0.306.0", sql)).write_text("#!/bin/sh\n")
                (binaries / binary_key("0.306.0", sql)).chmod(0o755)
            if status is ProgramStatus.SUCCESS:
                assert compiler.artifact(digest)["binary"]["path"] == str(binaries / binary_key("0.306.0", sql))
                return seen
            await asyncio.sleep(0.01)
        raise AssertionError(f"never Success: {seen}")
    seen = asyncio.run(go())
    assert ProgramStatus.RUST_ERROR in seen and seen[-1] is ProgramStatus.SUCCESS, seen


def test_the_sql_compilers_messages_are_bounded_before_they_reach_the_status() -> None:
    """A program that makes Feldera's compiler write thousands of warnings, or quote a huge line, gets a
    SqlError small enough to write into its Pipeline's status, saying how many messages are not shown."""
    from pipeline_operator.feldera.compiler.messages import MAX_MESSAGE_FIELD, MAX_MESSAGES_BYTES, compiler_messages
    one = {"start_line_number": 1, "start_column": 1, "end_line_number": 1, "end_column": 2, "warning": True,
           "error_type": "Warning", "message": "unused", "snippet": "    1|x\n"}
    huge = {**one, "warning": False, "error_type": "Error", "message": "m" * 100_000}
    messages = compiler_messages("JVM noise\n" + json.dumps([huge, *[one] * 5000]))
    assert messages is not None and len(json.dumps(messages)) <= MAX_MESSAGES_BYTES + 1024
    assert len(messages[0]["message"]) <= MAX_MESSAGE_FIELD + 4 and messages[1] == one
    note = messages[-1]
    assert note["error_type"] == "Messages not shown" and note["warning"] is True
    assert note["message"].startswith(f"{5001 - (len(messages) - 1)} more messages")
    # A few messages pass unchanged.
    assert compiler_messages(json.dumps([huge | {"message": "short"}, one])) == [huge | {"message": "short"}, one]
