"""Compiling a pipeline's program, off the event loop, through Feldera's program statuses.

Pending -> CompilingSql -> SqlCompiled -> CompilingRust -> Success, or SqlError (the SQL does
not parse; the error names line and column), or SystemError (anything unexpected).

The SQL is parsed with sqlglot. A Feldera program declares tables, views and functions, so
every statement must be a CREATE (or DECLARE) statement. The "Rust" stage builds the artifact
the pipeline process receives: a JSON document with the program and what it declares, including
Feldera's ``program_info`` (the schema of every table and view, see :func:`program_info`).
Artifacts are kept in a folder by program digest, so an operator restart finds them again.

Feldera's own syntax that sqlglot does not read is adapted before parsing, keeping every
position: ``DECLARE RECURSIVE VIEW`` statements are blanked out, and the ``ARRAY`` type suffix
(``INT ARRAY``) is written as ``[]``.

The package's rooms: ``reference`` (the :class:`Compiler`: jobs, statuses and artifacts, with the reference
compiler's stages), ``sql`` (the SQL checks and errors), ``column_types``, ``views`` and ``schema`` (Feldera's
``program_info``), ``sql_compiler`` (Feldera's SQL compiler and the binary store, :class:`FelderaCompiler`) and
``messages`` (the compiler's messages, bounded).
"""

from __future__ import annotations

from .messages import compiler_messages
from .reference import Compiler
from .schema import build_artifact, program_info
from .sql import SqlProblem, parse_program, sql_error_details
from .sql_compiler import FelderaCompiler, binary_key

__all__ = ["Compiler", "FelderaCompiler", "SqlProblem", "binary_key", "build_artifact", "compiler_messages",
           "parse_program", "program_info", "sql_error_details"]
