"""The compiler the operator runs programs through (:class:`Compiler`): compilations off the event loop,
at most a few at a time, through Feldera's program statuses, their artifacts kept in a folder by program
digest (an operator restart finds them again). Its own stages are the reference compiler's: the SQL checked
with sqlglot, the artifact built from what the program declares; :class:`FelderaCompiler` replaces them."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from ...core.lifecycle import ProgramObservation
from ...models import ProgramStatus, program_digest
from .schema import build_artifact
from .sql import SqlProblem, parse_program, sql_error_details

log = logging.getLogger(__name__)


@dataclass
class _Job:
    status: ProgramStatus
    error: Any = None
    task: asyncio.Task[None] | None = None


class Compiler:
    """Compiles programs in threads, at most ``concurrency`` at a time, and remembers results."""

    def __init__(self, folder: Path, concurrency: int = 2) -> None:
        self.folder = folder
        self._jobs: dict[str, _Job] = {}
        self._listeners: dict[str, set[Callable[[], None]]] = {}
        self._limit = asyncio.Semaphore(concurrency)
        # Programs whose artifact was seen on disk: every monitoring pass asks, and a stat() per pass
        # and pipeline is a blocking call on the event loop. A vanished artifact is noticed when
        # provisioning reads it (``artifact`` forgets it, and the program is compiled again).
        self._present: set[str] = set()

    def artifact_path(self, digest: str) -> Path:
        return self.folder / f"{digest}.json"

    def artifact(self, digest: str) -> dict[str, Any] | None:
        try:
            return cast(dict[str, Any], json.loads(self.artifact_path(digest).read_text()))
        except (OSError, ValueError):
            self._present.discard(digest)
            return None

    def observe(self, digest: str) -> ProgramObservation:
        job = self._jobs.get(digest)
        if job is not None:
            return ProgramObservation(program_digest=digest, status=job.status, error=job.error)
        if digest in self._present or self.artifact_path(digest).exists():
            self._present.add(digest)
            return ProgramObservation(program_digest=digest, status=ProgramStatus.SUCCESS)
        return ProgramObservation(program_digest=digest, status=ProgramStatus.PENDING)

    def ensure(self, digest: str, sql: str, on_progress: Callable[[], None]) -> None:
        """Start compiling ``sql`` unless it is compiling or compiled; ``on_progress`` is called
        whenever its status moves (to wake the pipeline's monitoring loop)."""
        if program_digest(sql) != digest:
            return  # the spec moved on; the next pass asks for the new program
        self._listeners.setdefault(digest, set()).add(on_progress)
        if digest in self._jobs:
            return  # compiling, or failed: a failed program stays failed until it changes
        if self.artifact_path(digest).exists():
            self._notify(digest)
            return
        job = _Job(status=ProgramStatus.PENDING)
        self._jobs[digest] = job
        job.task = asyncio.create_task(self._compile(digest, sql, job), name=f"compile-{digest[:8]}")

    def _set(self, digest: str, job: _Job, status: ProgramStatus, error: Any = None) -> None:
        job.status, job.error = status, error
        self._notify(digest)

    def _notify(self, digest: str) -> None:
        for listener in self._listeners.get(digest, []):
            listener()

    async def _compile(self, digest: str, sql: str, job: _Job) -> None:
        async with self._limit:
            try:
                await self._stages(digest, sql, job)
            except Exception as exc:  # noqa: BLE001 - any failure is the program's SystemError
                log.exception("program %s: compilation failed", digest[:8])
                self._set(digest, job, ProgramStatus.SYSTEM_ERROR,
                          {"sql_compilation": None, "rust_compilation": None,
                           "system_error": f"{type(exc).__name__}: {exc}"})
            finally:
                self._listeners.pop(digest, None)

    async def _stages(self, digest: str, sql: str, job: _Job) -> None:
        """The compilation's stages, each status reported as it is reached; the artifact written at the end."""
        self._set(digest, job, ProgramStatus.COMPILING_SQL)
        try:
            statements = await asyncio.to_thread(parse_program, sql)
        except SqlProblem as problem:
            log.info("program %s: SQL error at line %s, column %s: %s", digest[:8], problem.line,
                     problem.column, problem)
            self._set(digest, job, ProgramStatus.SQL_ERROR, sql_error_details(problem, sql))
            return
        self._set(digest, job, ProgramStatus.SQL_COMPILED)
        self._set(digest, job, ProgramStatus.COMPILING_RUST)
        await self._finish(digest, build_artifact(sql, statements))

    async def _finish(self, digest: str, artifact: dict[str, Any]) -> None:
        await asyncio.to_thread(self._write_artifact, digest, artifact)
        self._jobs.pop(digest, None)
        self._notify(digest)

    def _write_artifact(self, digest: str, artifact: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.artifact_path(digest).with_suffix(".tmp")
        tmp.write_text(json.dumps(artifact))
        tmp.replace(self.artifact_path(digest))
