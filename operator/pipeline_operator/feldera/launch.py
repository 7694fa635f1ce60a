"""Feldera's launch contract: the files and the command line a pipeline process is started with.

As Feldera v0.306's runner starts a pipeline (``crates/pipeline-manager/src/runner/local_runner.rs``):

- the pipeline's ``PipelineConfig`` (Feldera's ``feldera_types::config::PipelineConfig``) is written as
  ``config.json`` and ``config.yaml`` in its working directory: the runtime configuration flattened into
  it with every default, ``name`` (``pipeline-<id>``), ``given_name``, ``storage_config`` (the storage
  directory, page cache), ``secrets_dir``, ``multihost``, then ``inputs``, ``outputs`` and ``program_ir``
  taken from the compiler's program info. ``config.yaml`` holds the same document in YAML's
  JSON-compatible flow style (a pipeline reads ``config.json`` when it is there, as Feldera's do);
- the process is ``<program binary> --config-file <dir>/config.yaml --bind-address <address>
  --initial running|paused|standby --deployment-id <uuid> --bootstrap-policy <policy>
  [--silent-bootstrap]``, in that working directory, with ``TOKIO_WORKER_THREADS`` (``io_workers``, else
  ``workers``) and the runtime configuration's ``env``;
- the process writes the port it listens on into the file ``port`` of its working directory.

The reference pipeline process (:mod:`pipeline_operator.feldera.pipeline_process`) takes the same arguments and
files, so either runs wherever the other does.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

from ..core.emission import UuidV7
from ..feldera_config import RuntimeConfig
from ..models import BootstrapPolicy, RuntimeDesiredStatus

_DEPLOYMENT_IDS = UuidV7()

CONFIG_JSON = "config.json"
CONFIG_YAML = "config.yaml"
PORT_FILE = "port"  # Feldera's SERVER_PORT_FILE, in the working directory


def runtime_config_json(config: RuntimeConfig | None) -> dict[str, Any]:
    """Feldera's ``RuntimeConfig`` as its serde writes it: every field, in Feldera's order, defaults
    filled in; ``dev_tweaks`` with only the tweaks set, a storage backend with the options given."""
    config = config if config is not None else RuntimeConfig()
    out: dict[str, Any] = config.model_dump(mode="json")
    out["dev_tweaks"] = config.dev_tweaks.model_dump(mode="json", exclude_none=True)
    if config.storage is not None:
        backend = config.storage.backend
        out["storage"]["backend"] = {"name": backend.name}
        if backend.config is not None:
            out["storage"]["backend"]["config"] = backend.config.model_dump(mode="json", exclude_unset=True)
    if config.init_containers is not None:
        out["init_containers"] = [c.model_dump(mode="json", exclude_none=True) for c in config.init_containers]
    return out


_MIR_FIELDS: dict[str, Any] = {"calcite": None, "table": None, "view": None, "inputs": [], "operation": None,
                               "outputs": None, "persistent_id": None, "positions": []}


def mir_node(node: dict[str, Any]) -> dict[str, Any]:
    """A node of the compiler's ``dataflow.json`` as Feldera's ``MirNode`` writes it again: its fields in
    its order, absent ones with their defaults, any other key after them."""
    out = {name: node.get(name, default) for name, default in _MIR_FIELDS.items()}
    out.update({k: v for k, v in node.items() if k not in _MIR_FIELDS})
    return out


def program_config_info(artifact: dict[str, Any]) -> dict[str, Any]:
    """Feldera's ``PipelineConfigProgramInfo`` of a compiled program: its ``inputs`` and ``outputs``
    (connectors: none, this operator turns no connector into an endpoint) and its ``program_ir``, the
    dataflow's ``mir`` and the ``program_schema``. A program compiled by the stand-in compiler has no
    dataflow: its ``mir`` is one node naming the program's digest (what the reference process compares
    with its checkpoints' to decide whether its views must be bootstrapped)."""
    info = artifact.get("program_info") or {}
    schema = info.get("schema") or {"inputs": [], "outputs": []}
    dataflow = artifact.get("dataflow")
    if isinstance(dataflow, dict) and isinstance(dataflow.get("mir"), dict):
        mir = {str(node_id): mir_node(node) for node_id, node in dataflow["mir"].items() if isinstance(node, dict)}
    else:
        mir = {"s0": {"calcite": None, "table": None, "view": None, "inputs": [], "operation": "reference_program",
                      "outputs": None, "persistent_id": str(artifact.get("digest", "")), "positions": []}}
    return {"inputs": info.get("input_connectors") or {}, "outputs": info.get("output_connectors") or {},
            "program_ir": {"mir": mir, "program_schema": schema}}


def pipeline_config(pipeline_id: str, given_name: str, runtime_config: RuntimeConfig | None, storage_path: str,
                    artifact: dict[str, Any]) -> dict[str, Any]:
    """The ``PipelineConfig`` Feldera's runner writes for a start of the pipeline ``pipeline_id``."""
    config = runtime_config_json(runtime_config)
    hosts = config.get("hosts", 1)
    config.update({
        "multihost": {"hosts": hosts} if isinstance(hosts, int) and hosts > 1 else None,
        "name": f"pipeline-{pipeline_id}",
        "given_name": given_name,
        "storage_config": {"path": storage_path, "cache": "page_cache"},
        "secrets_dir": None,
    })
    config.update(program_config_info(artifact))
    return config


def config_files(config: dict[str, Any]) -> dict[str, str]:
    """``config.json`` (serde_json's pretty form) and ``config.yaml`` (the same document, JSON being YAML)."""
    text = json.dumps(config, indent=2, ensure_ascii=False)
    return {CONFIG_JSON: text, CONFIG_YAML: text + "\n"}


def launch_args(config_file: str, bind_address: str, initial: RuntimeDesiredStatus, deployment_id: str,
                bootstrap_policy: BootstrapPolicy, silent_bootstrap: bool,
                default_port: int | None = None) -> list[str]:
    """The arguments Feldera's runner starts a pipeline binary with (``default_port``: the port to listen
    on, Feldera's ``--default-port``, for a container whose port is fixed)."""
    args = ["--config-file", config_file, "--bind-address", bind_address, "--initial", initial.value.lower(),
            "--deployment-id", deployment_id]
    if default_port is not None:
        args += ["--default-port", str(default_port)]
    args += ["--bootstrap-policy", bootstrap_policy.feldera]
    if silent_bootstrap:
        args.append("--silent-bootstrap")
    return args


def tokio_worker_threads(runtime_config: RuntimeConfig | None) -> str:
    """``TOKIO_WORKER_THREADS``: ``io_workers``, else ``workers``, as Feldera's runner sets it."""
    config = runtime_config if runtime_config is not None else RuntimeConfig()
    return str(config.io_workers if config.io_workers is not None else config.workers)


def new_deployment_id() -> str:
    """A fresh deployment id, a UUIDv7 as Feldera's ``Uuid::now_v7()`` (the core's generator, which makes the
    ids a pipeline's status records): it tells a pipeline that it was started anew (not restarted after a
    crash)."""
    return str(_DEPLOYMENT_IDS(dt.datetime.now(dt.UTC)))


def deployment_id_of(token: str) -> str:
    """The deployment id of a start whose control token is ``token`` (each start has a token of its own):
    stable across retries of the start and operator restarts, new with every start, and telling nothing
    about the token."""
    return str(uuid.UUID(bytes=hashlib.sha256(b"deployment-id:" + token.encode()).digest()[:16], version=4))


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in pieces (blocking: a pipeline binary is hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def reference_program(config: dict[str, Any]) -> dict[str, Any]:
    """What the reference pipeline process knows of its program from its ``PipelineConfig``: a digest of
    the ``program_ir`` (which changes with the program), its tables and its views."""
    ir = config.get("program_ir") or {}
    schema = ir.get("program_schema") if isinstance(ir, dict) else None
    schema = schema if isinstance(schema, dict) else {}

    def names(kind: str) -> list[str]:
        return [str(r.get("name")) for r in schema.get(kind) or [] if isinstance(r, dict) and r.get("name")]

    digest = hashlib.sha256(json.dumps(ir, sort_keys=True).encode()).hexdigest()[:32] if ir else None
    return {"digest": digest, "tables": names("inputs"), "views": names("outputs")}
