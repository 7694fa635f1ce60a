"""Feldera's SQL compiler (``--compiler feldera``): ``sql2dbsp`` run on a program as Feldera's compiler
server runs it, and the program binary taken from the binary store (``binaries/<key>``, :func:`binary_key`),
waited for when it is missing."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

from ...models import ProgramStatus, program_digest
from ..launch import file_sha256
from .messages import compiler_messages
from .reference import Compiler, _Job

log = logging.getLogger(__name__)


# -- Feldera's SQL compiler ----------------------------------------------------------------------------------

SQL_COMPILER_TIMEOUT = 600.0  # seconds one run of Feldera's SQL compiler may take


def binary_key(feldera_version: str, sql: str) -> str:
    """The name of a program's binary in the binary store: a digest of what determines it, the Feldera
    version (its SQL compiler and runtime) and the program."""
    return hashlib.sha256(f"feldera {feldera_version}\0".encode() + sql.encode()).hexdigest()


# A program's compiler messages go into its Pipeline's status: a program that makes the compiler write
# thousands of warnings (or quote a huge line) must not make that status too large to write.
MAX_STDERR_BYTES = 16 * 1024 * 1024  # read of the compiler's stderr; past it the JSON is cut: a SystemError


class FelderaCompiler(Compiler):
    """Feldera's compiler server, without its Rust stage's build: the SQL stage runs Feldera's SQL compiler
    (``sql2dbsp``, with the arguments of Feldera's ``sql_compiler.rs``) in a thread, at most ``concurrency``
    at a time, and reports its messages as Feldera does (``SqlError`` with line, column and snippet); the
    Rust stage takes the program's binary from the binary store (``binaries/<key>``, :func:`binary_key`),
    filled by whoever builds pipeline binaries, and reports ``RustError`` naming the missing file."""

    def __init__(self, folder: Path, jar: Path, java: str, binaries: Path, feldera_version: str,
                 concurrency: int = 2) -> None:
        super().__init__(folder, concurrency)
        self.jar, self.java, self.binaries, self.feldera_version = jar, java, binaries, feldera_version
        # A program whose binary is missing: the store is looked at again, first after binary_recheck[0] seconds,
        # then twice as long each time up to binary_recheck[1], for binary_wait seconds in all (one stat in a
        # thread per look, outside the compilations' concurrency bound).
        self.binary_recheck: tuple[float, float] = (1.0, 30.0)
        self.binary_wait = 3600.0
        self._waits: set[asyncio.Task[None]] = set()

    async def _await_binary(self, digest: str, sql: str, job: _Job) -> None:
        """Wait (bounded) for the missing binary of a program that is RustError; when it is in the store, the
        program is compiled again (Pending, as Feldera's RustError -> Pending), which the pipeline's next
        monitoring pass follows."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.binary_wait
        delay, longest = self.binary_recheck
        path = self.binaries / binary_key(self.feldera_version, sql)
        while loop.time() < deadline:
            await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
            delay = min(delay * 2, longest)
            if self._jobs.get(digest) is not job:
                return  # forgotten meanwhile
            if await asyncio.to_thread(lambda: path.is_file() and os.access(path, os.X_OK)):
                log.info("program %s: its binary is now in the binary store: compiling again", digest[:8])
                del self._jobs[digest]
                again = _Job(status=ProgramStatus.PENDING)
                self._jobs[digest] = again
                again.task = asyncio.create_task(self._compile(digest, sql, again), name=f"compile-{digest[:8]}")
                return
        log.info("program %s: its binary did not appear in %.0f s; no longer looked for", digest[:8],
                 self.binary_wait)

    def workdir(self, digest: str) -> Path:
        return self.folder / "sql-compilation" / digest

    def _run_sql_compiler(self, digest: str, sql: str) -> tuple[int, str, Path]:
        """Feldera's SQL compiler on the program (blocking); its exit code, stderr and working directory."""
        work = self.workdir(digest)
        shutil.rmtree(work, ignore_errors=True)
        (work / "rust" / "crates").mkdir(parents=True)
        (work / "program.sql").write_text(sql)
        with open(work / "stdout.log", "wb") as out, open(work / "stderr.log", "wb") as err:
            try:
                proc = subprocess.run(
                    [self.java, "-jar", str(self.jar), str(work / "program.sql"), "-js", str(work / "schema.json"),
                     "-o", str(work / "rust"), "--dataflow", str(work / "dataflow.json"), "-i", "-je",
                     "--alltables", "--ignoreOrder", "--runtime", str(work / "runtime"),
                     "--crates", f"pipeline_{digest}"],
                    cwd=work, stdin=subprocess.DEVNULL, stdout=out, stderr=err, timeout=SQL_COMPILER_TIMEOUT,
                    check=False)
                code = proc.returncode
            except subprocess.TimeoutExpired:
                code = -1
                err.write(f"\nthe SQL compiler did not finish within {SQL_COMPILER_TIMEOUT:.0f} s\n".encode())
        with open(work / "stderr.log", "rb") as err:
            stderr = err.read(MAX_STDERR_BYTES).decode(errors="replace")
        return code, stderr, work

    def _binary(self, sql: str) -> tuple[Path, str] | str:
        """The program's binary in the store and its sha256, or why there is none (blocking)."""
        key = binary_key(self.feldera_version, sql)
        path = self.binaries / key
        if not path.is_file():
            return (f"No pipeline binary for this program in the binary store: {path} is missing. This operator "
                    f"does not build pipeline binaries. Build the program with Feldera {self.feldera_version}'s "
                    f"toolchain elsewhere (the crate Feldera's SQL compiler generated for it is in "
                    f"{self.workdir(program_digest(sql)) / 'rust'}) and place the pipeline binary at {path} "
                    f"(executable): the operator looks for it again for {self.binary_wait / 60:.0f} minutes and "
                    "then compiles the program again by itself; after that, change the program or restart the "
                    "operator.")
        if not os.access(path, os.X_OK):
            return f"The pipeline binary {path} is not executable (chmod +x it)."
        return path, file_sha256(path)

    async def _stages(self, digest: str, sql: str, job: _Job) -> None:
        self._set(digest, job, ProgramStatus.COMPILING_SQL)
        code, stderr, work = await asyncio.to_thread(self._run_sql_compiler, digest, sql)
        messages = compiler_messages(stderr)
        if code != 0:
            if messages is None:
                self._set(digest, job, ProgramStatus.SYSTEM_ERROR, {
                    "sql_compilation": None, "rust_compilation": None,
                    "system_error": f"SQL compiler process returned with exit status code ({code}) and "
                                    f"stderr which cannot be deserialized:\n{stderr[-4000:]}"})
            else:
                log.info("program %s: Feldera's SQL compiler reports %s message(s)", digest[:8], len(messages))
                self._set(digest, job, ProgramStatus.SQL_ERROR, {
                    "sql_compilation": {"exit_code": code, "messages": messages},
                    "rust_compilation": None, "system_error": None})
            return
        schema = json.loads(await asyncio.to_thread((work / "schema.json").read_text))
        dataflow = json.loads(await asyncio.to_thread((work / "dataflow.json").read_text))
        connectors = [r.get("name") for kind in ("inputs", "outputs") for r in schema.get(kind) or []
                      if isinstance(r, dict) and "connectors" in (r.get("properties") or {})]
        if connectors:
            self._set(digest, job, ProgramStatus.SQL_ERROR, {"sql_compilation": {"exit_code": 1, "messages": [{
                "start_line_number": 0, "start_column": 0, "end_line_number": 0, "end_column": 0,
                "warning": False, "error_type": "ConnectorGenerationError",
                "message": f"connectors of {', '.join(map(str, connectors))}: this operator runs programs "
                           "without connectors (push data through /ingress)", "snippet": None}]},
                "rust_compilation": None, "system_error": None})
            return
        self._set(digest, job, ProgramStatus.SQL_COMPILED)
        self._set(digest, job, ProgramStatus.COMPILING_RUST)
        binary = await asyncio.to_thread(self._binary, sql)
        if isinstance(binary, str):
            log.info("program %s: %s", digest[:8], binary)
            self._set(digest, job, ProgramStatus.RUST_ERROR, {
                "sql_compilation": {"exit_code": 0, "messages": messages or []},
                "rust_compilation": {"exit_code": 1, "stdout": "", "stderr": binary}, "system_error": None})
            wait = asyncio.create_task(self._await_binary(digest, sql, job), name=f"binary-{digest[:8]}")
            self._waits.add(wait)
            wait.add_done_callback(self._waits.discard)
            return
        names = {kind: [str(r.get("name")) for r in schema.get(kind) or [] if isinstance(r, dict)]
                 for kind in ("inputs", "outputs")}
        artifact = {"digest": digest, "sql": sql, "tables": names["inputs"], "views": names["outputs"],
                    "program_info": {"schema": schema, "udf_stubs": "", "input_connectors": {},
                                     "output_connectors": {}},
                    "dataflow": {"mir": dataflow.get("mir") or {}},
                    "binary": {"path": str(binary[0]), "sha256": binary[1]},
                    "feldera_version": self.feldera_version}
        await self._finish(digest, artifact)
