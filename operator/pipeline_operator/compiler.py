"""Compiling a pipeline's program, off the event loop, through Feldera's program statuses.

Pending -> CompilingSql -> SqlCompiled -> CompilingRust -> Success, or SqlError (the SQL does
not parse; the error names line and column), or SystemError (anything unexpected).

The SQL is parsed with sqlglot. A Feldera program declares tables, views and functions, so
every statement must be a CREATE (or DECLARE) statement. The "Rust" stage builds the artifact
the pipeline process receives: a JSON document with the program and what it declares. Artifacts
are kept in a folder by program digest, so an operator restart finds them again.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from .core.lifecycle import ProgramObservation
from .models import ProgramStatus, program_digest

log = logging.getLogger(__name__)
logging.getLogger("sqlglot").setLevel(logging.ERROR)  # it warns on every statement it cannot parse


class SqlProblem(Exception):
    def __init__(self, message: str, line: int, column: int, error_type: str = "SyntaxError") -> None:
        super().__init__(message)
        self.line, self.column, self.error_type = line, column, error_type


def sql_error_details(problem: SqlProblem) -> dict[str, Any]:
    """Feldera's ``program_error`` shape for a SQL error."""
    return {"sql_compilation": {"exit_code": 1, "messages": [{
        "start_line_number": problem.line, "start_column": problem.column,
        "end_line_number": problem.line, "end_column": problem.column,
        "warning": False, "error_type": problem.error_type, "message": str(problem)}]},
        "rust_compilation": None, "system_error": None}


def _statement_starts(sql: str) -> list[tuple[int, int]]:
    """(line, column) of the first token of each statement."""
    starts: list[tuple[int, int]] = []
    at_start = True
    for token in sqlglot.tokenize(sql):
        if token.token_type.name == "SEMICOLON":
            at_start = True
            continue
        if at_start:
            starts.append((token.line, max(1, token.col - len(token.text) + 1)))
            at_start = False
    return starts


def _blank_declarations(sql: str) -> str:
    """``DECLARE RECURSIVE VIEW ...`` is Feldera's own syntax: keep it, unparsed, by blanking it
    out (newlines kept, so positions in the rest of the program stay right)."""
    out = list(sql)
    try:
        tokens = sqlglot.tokenize(sql)
    except TokenError:
        return sql
    statement: list = []
    for token in [*tokens, None]:
        if token is None or token.token_type.name == "SEMICOLON":
            if statement and statement[0].text.upper() == "DECLARE":
                for i in range(statement[0].start, statement[-1].end + 1):
                    if out[i] != "\n":
                        out[i] = " "
            statement = []
        else:
            statement.append(token)
    return "".join(out)


def parse_program(sql: str) -> list[exp.Expression]:
    """Parse and check a program; raises :class:`SqlProblem` naming line and column."""
    try:
        statements = [s for s in sqlglot.parse(_blank_declarations(sql), error_level=sqlglot.ErrorLevel.RAISE)
                      if s is not None]
    except ParseError as exc:
        first = exc.errors[0] if exc.errors else {}
        raise SqlProblem(str(first.get("description") or exc), int(first.get("line") or 1),
                         int(first.get("col") or 1)) from None
    except TokenError as exc:
        raise SqlProblem(f"Cannot tokenize the program: {exc}", 1, 1) from None
    starts = _statement_starts(_blank_declarations(sql))
    for i, statement in enumerate(statements):
        if not isinstance(statement, exp.Create):
            line, column = starts[i] if i < len(starts) else (1, 1)
            shown = statement.sql()[:80]
            if isinstance(statement, exp.Command):
                raise SqlProblem(f"Cannot parse this statement: {shown!r}", line, column)
            raise SqlProblem(f"Not a CREATE or DECLARE statement: {shown!r}; a pipeline program "
                             "declares tables, views and functions", line, column, "NotADeclaration")
    return statements


def build_artifact(sql: str, statements: list[exp.Expression]) -> dict[str, Any]:
    tables, views = [], []
    for statement in statements:
        if isinstance(statement, exp.Create):
            kind = (statement.args.get("kind") or "").upper()
            target = statement.this
            name = target.this.sql() if isinstance(target, exp.Schema) else target.sql() if target else ""
            (tables if kind == "TABLE" else views if kind == "VIEW" else []).append(name)
    return {"digest": program_digest(sql), "sql": sql, "tables": tables, "views": views,
            "statements": len(statements)}


@dataclass
class _Job:
    status: ProgramStatus
    error: Any = None
    task: asyncio.Task | None = None


class Compiler:
    """Compiles programs in threads, at most ``concurrency`` at a time, and remembers results."""

    def __init__(self, folder: Path, concurrency: int = 2) -> None:
        self.folder = folder
        self._jobs: dict[str, _Job] = {}
        self._listeners: dict[str, set[Callable[[], None]]] = {}
        self._limit = asyncio.Semaphore(concurrency)

    def artifact_path(self, digest: str) -> Path:
        return self.folder / f"{digest}.json"

    def artifact(self, digest: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.artifact_path(digest).read_text())
        except (OSError, ValueError):
            return None

    def observe(self, digest: str) -> ProgramObservation:
        job = self._jobs.get(digest)
        if job is not None:
            return ProgramObservation(program_digest=digest, status=job.status, error=job.error)
        if self.artifact_path(digest).exists():
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
                self._set(digest, job, ProgramStatus.COMPILING_SQL)
                try:
                    statements = await asyncio.to_thread(parse_program, sql)
                except SqlProblem as problem:
                    log.info("program %s: SQL error at line %s, column %s: %s", digest[:8], problem.line,
                             problem.column, problem)
                    self._set(digest, job, ProgramStatus.SQL_ERROR, sql_error_details(problem))
                    return
                self._set(digest, job, ProgramStatus.SQL_COMPILED)
                self._set(digest, job, ProgramStatus.COMPILING_RUST)
                await asyncio.to_thread(self._write_artifact, digest, build_artifact(sql, statements))
                self._jobs.pop(digest, None)
                self._notify(digest)
            except Exception as exc:  # noqa: BLE001 - any failure is the program's SystemError
                log.exception("program %s: compilation failed", digest[:8])
                self._set(digest, job, ProgramStatus.SYSTEM_ERROR,
                          {"sql_compilation": None, "rust_compilation": None,
                           "system_error": f"{type(exc).__name__}: {exc}"})
            finally:
                self._listeners.pop(digest, None)

    def _write_artifact(self, digest: str, artifact: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.artifact_path(digest).with_suffix(".tmp")
        tmp.write_text(json.dumps(artifact))
        tmp.replace(self.artifact_path(digest))
