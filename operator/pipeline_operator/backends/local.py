"""The local backend: compute is a child process of the operator, storage a directory.

This is what Feldera's open-source edition does. Each pipeline has a folder under
``<state-dir>/pipelines/<namespace>__<name>__<uid>/`` holding:

- ``storage/``: the pipeline's storage (checkpoints); cleared by deleting it;
- ``compute.json``: the process record (pid, start time, whether it is being stopped), so a
  restarted operator finds its processes again instead of starting a second one;
- ``config.json`` and ``config.yaml``: the pipeline's ``PipelineConfig`` as Feldera's runner writes it
  (:mod:`pipeline_operator.feldera.launch`), with the compiled program's ``program_ir``; ``port``: where the
  process listens (it writes the file); ``process.log``: its output;
- ``program_<digest>``: the program's binary, when it was compiled by Feldera's compiler (linked from the
  binary store); otherwise the process is the reference pipeline process;
- ``token``: the control token (mode 0600), handed to the process as ``PIPELINE_CONTROL_TOKEN``
  and sent by the operator with every request to it. Kept while the folder lives, so that a
  restarted operator still talks to a process it did not start.

The folder is named by :attr:`PipelineKey.slug` (shortened, with a hash, for long names).

Storage retained when its pipeline was deleted (``spec.storage.deletionPolicy: Retain``) is moved to
``<state-dir>/retained/<namespace>__<name>/`` (a slug without a uid: the next pipeline of that name has
another), and moved back as the ``storage/`` of the next pipeline of the same name and namespace when it is
first provisioned.

The process is started as Feldera's runner starts one: ``<program> --config-file <folder>/config.yaml
--bind-address 127.0.0.1 --initial ... --deployment-id ... --bootstrap-policy ...`` in its folder, with
``TOKIO_WORKER_THREADS``. The program is the binary Feldera's compiler mode took from the binary store, or
the operator's ``--pipeline-command`` (default the reference pipeline process), never one taken from a
Pipeline. It listens on the loopback address only: a Feldera pipeline requires no token, so only the
operator's machine reaches it. The process gets a minimal environment plus the
Pipeline's ``deployment.env`` entries whose names start with ``PIPELINE_``; the rest are
ignored, so that whoever can create a Pipeline cannot make the operator's machine load code
(``LD_PRELOAD``, ``PYTHONPATH``, ...), and except the names the operator sets itself
(``PIPELINE_CONTROL_TOKEN``, ``PIPELINE_DEBUG_ROUTES``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, BinaryIO, cast

from ..core.lifecycle import ComputeObservation, ComputeState
from ..feldera.launch import (
    CONFIG_YAML,
    PORT_FILE,
    config_files,
    file_sha256,
    launch_args,
    new_deployment_id,
    pipeline_config,
    tokio_worker_threads,
)
from ..feldera.pipeline_process import DEBUG_ROUTES_ENV, TOKEN_ENV
from ..identity import PipelineKey
from ..models import BootstrapPolicy, PipelineSpec, RuntimeDesiredStatus
from . import LogsUnavailable, pipeline_env

log = logging.getLogger(__name__)

ALLOWED_ENV_PREFIX = "PIPELINE_"
PASSED_THROUGH_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")
KILL_AFTER = 5.0  # seconds between SIGTERM and SIGKILL
RESERVED_ENV = (TOKEN_ENV, DEBUG_ROUTES_ENV)  # set by the operator only, never by a Pipeline's spec
TOKEN_FILE = "token"


def _proc_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (guards against pid reuse)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] == "Z":  # a zombie has exited
        return None
    return int(fields[19])


def processes_under(folder: Path) -> list[int]:
    """Live pipeline processes whose command line names a path under ``folder`` (their configuration)."""
    marker = str(folder).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker in cmdline and (b"pipeline-process" in cmdline or b"--config-file" in cmdline):
            found.append(int(entry.name))
    return found


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _read_token(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def ensure_token(folder: Path) -> str:
    """The pipeline's control token: the one in ``folder`` (a process started before may hold it), or
    a new random one, written atomically and readable by the operator's user only."""
    path = folder / TOKEN_FILE
    token = _read_token(path)
    if token is not None:
        return token
    token = secrets.token_urlsafe(32)
    tmp = folder / f".{TOKEN_FILE}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(token)
        path.unlink(missing_ok=True)  # an empty or unreadable leftover
        try:
            os.link(tmp, path)  # never replaces a token written meanwhile
        except FileExistsError:
            token = _read_token(path) or token
    finally:
        tmp.unlink(missing_ok=True)
    return token


class LocalBackend:
    def __init__(self, state_dir: Path, pipeline_command: str = "", debug_routes: bool = False) -> None:
        # Absolute: the process runs in its folder (cwd) and is handed paths under this root.
        self.root = Path(os.path.abspath(state_dir)) / "pipelines"
        self.retained_root = Path(os.path.abspath(state_dir)) / "retained"
        self.command = shlex.split(pipeline_command) if pipeline_command else [
            sys.executable, "-m", "pipeline_operator.cli", "pipeline-process"]
        self.debug_routes = debug_routes
        self._children: dict[str, subprocess.Popen[bytes]] = {}  # processes this operator started
        self._ports: dict[str, int] = {}  # pipeline uid -> port, as last observed (read in a thread)
        self._tokens: dict[str, str] = {}  # pipeline uid -> control token (filled on provision and observe)
        self._endpoint_uids: dict[str, str] = {}  # endpoint -> pipeline uid, as last observed

    # -- paths and records ---------------------------------------------------------------

    def folder(self, key: PipelineKey) -> Path:
        return self.root / key.slug

    def storage_dir(self, key: PipelineKey) -> Path:
        return self.folder(key) / "storage"

    def retained_dir(self, key: PipelineKey) -> Path:
        """Where the storage of a deleted pipeline of this name waits for the next one (any uid)."""
        return self.retained_root / PipelineKey(key.namespace, key.name, "").slug.rstrip("_")

    def _record_path(self, key: PipelineKey) -> Path:
        return self.folder(key) / "compute.json"

    def _read_record(self, key: PipelineKey) -> dict[str, Any] | None:
        try:
            return cast(dict[str, Any], json.loads(self._record_path(key).read_text()))
        except (OSError, ValueError):
            return None

    def _write_record(self, key: PipelineKey, record: dict[str, Any]) -> None:
        path = self._record_path(key)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(path)

    def _forget_process(self, key: PipelineKey) -> None:
        port = self._ports.pop(key.uid, None)
        if port is not None and self._endpoint_uids.get(self._endpoint_of(port)) == key.uid:
            del self._endpoint_uids[self._endpoint_of(port)]
        for name in ("compute.json", PORT_FILE):
            (self.folder(key) / name).unlink(missing_ok=True)
        child = self._children.pop(key.uid, None)
        if child is not None:
            child.poll()

    def _alive(self, key: PipelineKey, record: dict[str, Any]) -> bool:
        child = self._children.get(key.uid)
        if child is not None and child.pid == record["pid"]:
            return child.poll() is None
        return _proc_start_time(record["pid"]) == record.get("start_time")

    def _exit_message(self, key: PipelineKey, record: dict[str, Any]) -> str:
        child = self._children.get(key.uid)
        if child is not None and child.pid == record["pid"] and child.returncode is not None:
            code = child.returncode
            how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        else:
            how = "is gone"
        tail = ""
        log_file = self.folder(key) / "process.log"
        if log_file.exists():
            lines = log_file.read_text(errors="replace").strip().splitlines()
            tail = f"; last output: {lines[-1][:300]}" if lines else ""
        return f"pipeline process (pid {record['pid']}) {how}{tail}"

    def port(self, key: PipelineKey) -> int | None:
        try:
            return int((self.folder(key) / PORT_FILE).read_text())
        except (OSError, ValueError):
            return None

    # -- the Backend protocol -------------------------------------------------------------

    async def observe_compute(self, key: PipelineKey) -> ComputeObservation:
        return await asyncio.to_thread(self._observe, key)

    def _observe(self, key: PipelineKey) -> ComputeObservation:
        record = self._read_record(key)
        if record is None:
            return ComputeObservation(state=ComputeState.ABSENT)
        if self._alive(key, record):
            if record.get("terminating_since"):
                return ComputeObservation(state=ComputeState.TERMINATING, message="stopping the process")
            if key.uid not in self._tokens:  # a process this operator did not start (a restart)
                token = _read_token(self.folder(key) / TOKEN_FILE)
                if token is not None:
                    self._tokens[key.uid] = token
            port = self.port(key)
            if port is None:
                self._ports.pop(key.uid, None)
                return ComputeObservation(state=ComputeState.PENDING, message="process starting")
            self._ports[key.uid] = port
            self._endpoint_uids[self._endpoint_of(port)] = key.uid
            return ComputeObservation(state=ComputeState.READY)
        if record.get("terminating_since"):
            self._forget_process(key)
            return ComputeObservation(state=ComputeState.ABSENT)
        return ComputeObservation(state=ComputeState.FAILED, message=self._exit_message(key, record))

    async def provision(self, key: PipelineKey, spec: PipelineSpec, artifact: dict[str, Any],
                        initial: RuntimeDesiredStatus, bootstrap_policy: BootstrapPolicy,
                        silent_bootstrap: bool = False, deployment_id: str | None = None) -> None:
        await asyncio.to_thread(self._provision, key, spec, artifact, initial, bootstrap_policy, silent_bootstrap,
                                deployment_id or new_deployment_id())

    def _provision(self, key: PipelineKey, spec: PipelineSpec, artifact: dict[str, Any],
                   initial: RuntimeDesiredStatus, bootstrap_policy: BootstrapPolicy, silent_bootstrap: bool,
                   deployment_id: str) -> None:
        if self._read_record(key) is not None:
            return  # running (or failed, which the observation reports): never a second process
        folder = self.folder(key)
        folder.mkdir(parents=True, exist_ok=True)
        retained = self.retained_dir(key)
        if not self.storage_dir(key).exists() and retained.exists():
            retained.rename(self.storage_dir(key))  # same file system: atomic, and never half adopted
            log.info("%s: adopted the storage retained from a deleted pipeline of the same name (%s)", key, retained)
        self.storage_dir(key).mkdir(exist_ok=True)
        config = pipeline_config(key.uid, key.name, spec.runtime_config, str(self.storage_dir(key)), artifact)
        for name, text in config_files(config).items():
            _write_atomically(folder / name, text)
        (folder / "program.json").unlink(missing_ok=True)  # written by earlier versions
        (folder / PORT_FILE).unlink(missing_ok=True)  # the runner deletes the port file before starting
        token = ensure_token(folder)
        self._tokens[key.uid] = token
        env = {k: os.environ[k] for k in PASSED_THROUGH_ENV if k in os.environ}
        ignored = []
        for name, value in pipeline_env(spec).items():
            if name.startswith(ALLOWED_ENV_PREFIX) and name not in RESERVED_ENV:
                env[name] = value
            else:
                ignored.append(name)
        if ignored:
            log.warning("%s: local backend ignores the environment variables %s of deployment.env and "
                        "runtimeConfig.env (only %s* names are passed, except %s)",
                        key, ", ".join(ignored), ALLOWED_ENV_PREFIX, ", ".join(RESERVED_ENV))
        env["TOKIO_WORKER_THREADS"] = tokio_worker_threads(spec.runtime_config)
        env[TOKEN_ENV] = token
        if self.debug_routes:
            env[DEBUG_ROUTES_ENV] = "1"
        # Loopback only: a Feldera pipeline answers anyone who reaches it (it has no token).
        cmd = [*self._program_command(folder, artifact),
               *launch_args(str(folder / CONFIG_YAML), "127.0.0.1", initial, deployment_id, bootstrap_policy,
                            silent_bootstrap)]
        with open(folder / "process.log", "ab") as out:
            child = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, cwd=folder, start_new_session=True)
        self._children[key.uid] = child
        self._write_record(key, {"pid": child.pid, "start_time": _proc_start_time(child.pid),
                                 "started_at": time.time(), "terminating_since": None})
        log.info("%s: started pipeline process pid %s (initial %s)", key, child.pid, initial.value)

    def _program_command(self, folder: Path, artifact: dict[str, Any]) -> list[str]:
        """The program's command: the reference pipeline process (``--pipeline-command``), or the program's
        binary from the binary store, linked (or copied) into the folder as ``program_<id>_v<digest>``
        (Feldera's runner downloads it there) and checked against its sha256 when copied."""
        binary = artifact.get("binary")
        if not isinstance(binary, dict):
            return list(self.command)
        source = Path(str(binary["path"]))
        target = folder / f"program_{str(artifact.get('digest', ''))[:16]}"
        if not target.exists():
            tmp = folder / f".{target.name}.{secrets.token_hex(4)}.tmp"
            try:
                os.link(source, tmp)
            except OSError:
                shutil.copyfile(source, tmp)
                if file_sha256(tmp) != binary.get("sha256"):
                    tmp.unlink(missing_ok=True)
                    raise RuntimeError(f"the program binary {source} does not match its sha256 "
                                       f"{binary.get('sha256')}") from None
                os.chmod(tmp, 0o750)
            tmp.replace(target)
        return [str(target)]

    async def deprovision(self, key: PipelineKey) -> None:
        await asyncio.to_thread(self._deprovision, key)

    def _deprovision(self, key: PipelineKey) -> None:
        record = self._read_record(key)
        if record is None:
            return
        if not self._alive(key, record):
            self._forget_process(key)
            return
        now = time.time()
        if not record.get("terminating_since"):
            record["terminating_since"] = now
            self._write_record(key, record)
            self._signal(record["pid"], signal.SIGTERM)
            log.info("%s: stopping pipeline process pid %s", key, record["pid"])
        elif now - record["terminating_since"] > KILL_AFTER:
            self._signal(record["pid"], signal.SIGKILL)
            log.warning("%s: pipeline process pid %s ignored SIGTERM for %.0fs: killed", key, record["pid"],
                        KILL_AFTER)

    @staticmethod
    def _signal(pid: int, sig: signal.Signals) -> None:
        try:
            os.killpg(pid, sig)  # the process leads its own session and group
        except ProcessLookupError:
            pass

    async def storage_exists(self, key: PipelineKey) -> bool:
        return await asyncio.to_thread(self.storage_dir(key).exists)

    async def clear_storage(self, key: PipelineKey) -> None:
        await asyncio.to_thread(shutil.rmtree, self.storage_dir(key), True)

    async def retain_storage(self, key: PipelineKey) -> None:
        await asyncio.to_thread(self._retain_storage, key)

    def _retain_storage(self, key: PipelineKey) -> None:
        storage, retained = self.storage_dir(key), self.retained_dir(key)
        if not storage.exists():
            return
        if retained.exists():
            # Retained by an earlier pipeline of this name that no later one adopted: the newer storage wins,
            # as on the Kubernetes backend, where the newest retained claim is the one adopted.
            shutil.rmtree(retained)
        retained.parent.mkdir(parents=True, exist_ok=True)
        storage.rename(retained)
        log.info("%s: storage retained in %s for the next pipeline of this name", key, retained)

    async def start(self) -> None:
        """Nothing to prepare: each observation looks at the process and its folder."""

    async def learn_token(self, key: PipelineKey) -> None:
        """Nothing to read: every observation of a running process learns its token."""

    async def forget(self, key: PipelineKey) -> None:
        """Remove everything of a deleted pipeline (its compute must be gone)."""
        self._tokens.pop(key.uid, None)
        await asyncio.to_thread(shutil.rmtree, self.folder(key), True)

    @staticmethod
    def _endpoint_of(port: int) -> str:
        return f"http://127.0.0.1:{port}"

    def describe_compute(self, key: PipelineKey) -> str:
        return f"the pipeline process (folder {self.folder(key)})"

    def describe_storage(self, key: PipelineKey) -> str:
        return f"the storage folder {self.storage_dir(key)}"

    def endpoint(self, key: PipelineKey) -> str | None:
        """Where the process listens, as the last observation found (no file read on the loop)."""
        port = self._ports.get(key.uid)
        return None if port is None else self._endpoint_of(port)

    def control_token(self, endpoint: str) -> str | None:
        """The token of the process at ``endpoint``, from memory (no file read on the loop)."""
        uid = self._endpoint_uids.get(endpoint)
        return None if uid is None else self._tokens.get(uid)

    async def close(self) -> None:
        """Pipelines keep running when the operator stops; a restarted operator adopts them."""
        for child in self._children.values():
            child.poll()

    @contextlib.asynccontextmanager
    async def logs(self, key: PipelineKey, follow: bool, replay: int = 1_000_000,
                   poll: float = 0.5) -> AsyncIterator[AsyncIterator[bytes]]:
        """``process.log`` from its last ``replay`` bytes (Feldera's runner catches a reader up from a buffer
        of 1 MB; the lines before are named, not shown), then, with ``follow``, what is written to it, as
        ``tail -f`` does, across the pipeline's runs (every run of the process appends to it), as Feldera's
        runner follows a pipeline's log across stops and starts: the file is read again every ``poll`` seconds
        while nothing new is in it, and the stream ends once the file is removed (the pipeline was deleted). A
        pipeline that never ran has no log yet: followed, the stream waits for its first run. Every read runs in
        a thread."""
        path = self.folder(key) / "process.log"

        def open_log() -> BinaryIO | None:
            try:
                return open(path, "rb")
            except FileNotFoundError:  # never started
                return None

        try:
            log_file = await asyncio.to_thread(open_log)
        except OSError as exc:
            raise LogsUnavailable(f"cannot read {path}: {exc}") from exc

        def skip_to_tail(f: BinaryIO) -> int:
            """Go to the first whole line of the last ``replay`` bytes; the bytes skipped."""
            size = os.fstat(f.fileno()).st_size
            if size <= replay:
                return 0
            f.seek(size - replay)
            f.readline()
            return f.tell()

        def removed(f: BinaryIO) -> bool:
            """The file read is no longer the pipeline's log (removed, or replaced by another pipeline's)."""
            try:
                return os.stat(path).st_ino != os.fstat(f.fileno()).st_ino
            except FileNotFoundError:
                return True

        async def chunks() -> AsyncIterator[bytes]:
            nonlocal log_file
            while log_file is None:  # no log yet: an empty one, or, followed, the first run's
                if not follow:
                    return
                await asyncio.sleep(poll)
                log_file = await asyncio.to_thread(open_log)
            f = log_file
            skipped = await asyncio.to_thread(skip_to_tail, f)
            if skipped:
                yield (f"... {skipped} bytes of earlier log lines are not shown (the log is replayed from its last "
                       f"{replay} bytes).\n").encode()
            while True:
                chunk = await asyncio.to_thread(f.read, 64 * 1024)
                if chunk:
                    yield chunk
                    continue
                if not follow or await asyncio.to_thread(removed, f):
                    while chunk := await asyncio.to_thread(f.read, 64 * 1024):
                        yield chunk  # written between the last read and the end of the log
                    return
                await asyncio.sleep(poll)

        try:
            yield chunks()
        finally:
            if log_file is not None:
                await asyncio.to_thread(log_file.close)
