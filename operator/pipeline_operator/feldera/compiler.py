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
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError
from sqlglot.optimizer.annotate_types import annotate_types
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import Scope, build_scope
from sqlglot.schema import MappingSchema
from sqlglot.tokenizer_core import Token

from ..core.lifecycle import ProgramObservation
from ..models import ProgramStatus, program_digest
from .launch import file_sha256

log = logging.getLogger(__name__)
logging.getLogger("sqlglot").setLevel(logging.ERROR)  # it warns on every statement it cannot parse


class SqlProblem(Exception):
    """A SQL error at a range of the program: 1-based lines and columns, the end inclusive (Feldera's
    ``SourcePositionRange``); without an end, the range is the one character at the start."""

    def __init__(self, message: str, line: int, column: int, error_type: str = "SyntaxError", *,
                 end_line: int | None = None, end_column: int | None = None) -> None:
        super().__init__(message)
        self.line, self.column, self.error_type = line, column, error_type
        self.end_line = line if end_line is None else end_line
        self.end_column = column if end_column is None else end_column


# A snippet shows whole lines, as Feldera's compiler does; a line longer than this is cut (marked " ...") so
# that one line of a 128 KiB program does not end up in the Pipeline's status several times over.
SNIPPET_LINE_LIMIT = 500


def source_lines(sql: str) -> list[str]:
    """The program's lines as Feldera's compiler reads its input file: ``\\n`` or ``\\r\\n`` ends a line, and
    a last line break starts no empty line. (Java's ``readLine`` ends a line at a lone ``\\r`` too; sqlglot's
    line numbers do not, and the snippet shows the lines its positions count.)"""
    lines = re.split(r"\r?\n", sql)
    if lines and lines[-1] == "" and len(lines) > 1:
        lines.pop()
    return lines


def snippet(lines: list[str], line: int, column: int, end_line: int, end_column: int) -> str:
    """The ``snippet`` of a message of Feldera's SQL compiler (its ``SourceFileContents.getFragment`` with
    decorations): the lines of the range, each after its number (``%5d|``), and, for a range on one line,
    ``^`` under its characters between the line before (when it is the last line) and the line after. An
    invalid range (a line or column 0) has an empty snippet."""
    if min(line, column, end_line, end_column) <= 0:
        return ""

    def numbered(i: int) -> str:
        return _cut(f"{i + 1:5d}|{lines[i]}") + "\n"

    first, last = line - 1, end_line - 1
    out: list[str] = []
    if first == last:
        if first >= len(lines):
            return ""
        if first == len(lines) - 1 and len(lines) > 1:
            out.append(numbered(first - 1))  # the line before, to help find the place
        out.append(numbered(first))
        out.append(_cut(" " * (column - 1 + 6) + "^" * max(0, end_column - column + 1)) + "\n")
        if len(lines) > first + 1:
            out.append(numbered(first + 1))  # and the line after
        return "".join(out)
    last = min(last, len(lines) - 1)  # a range may end on the line after the last
    if first > last:
        return ""
    if last - first < 5:
        return "".join(numbered(i) for i in range(first, last + 1))
    return numbered(first) + numbered(first + 1) + "      ...\n" + numbered(last)


def _cut(text: str) -> str:
    return text if len(text) <= SNIPPET_LINE_LIMIT else text[:SNIPPET_LINE_LIMIT] + " ..."


def sql_error_details(problem: SqlProblem, sql: str) -> dict[str, Any]:
    """Feldera's ``program_error`` for a SQL error: one message as its compiler writes it (``-je``), with the
    range, ``warning``, ``error_type``, ``message`` and the ``snippet`` of the lines at the range."""
    return {"sql_compilation": {"exit_code": 1, "messages": [{
        "start_line_number": problem.line, "start_column": problem.column,
        "end_line_number": problem.end_line, "end_column": problem.end_column,
        "warning": False, "error_type": problem.error_type, "message": str(problem),
        "snippet": snippet(source_lines(sql), problem.line, problem.column, problem.end_line,
                           problem.end_column)}]},
        "rust_compilation": None, "system_error": None}


def _statement_ranges(sql: str) -> list[tuple[int, int]]:
    """The character offsets (first, last) of each statement, from its first token to its last."""
    ranges: list[tuple[int, int]] = []
    first: Token | None = None
    previous: Token | None = None
    for token in [*sqlglot.tokenize(sql), None]:
        if token is None or token.token_type.name == "SEMICOLON":
            if first is not None and previous is not None:
                ranges.append((first.start, previous.end))
            first = previous = None
            continue
        first = first or token
        previous = token
    return ranges


def _blank_declarations(sql: str) -> str:
    """``DECLARE RECURSIVE VIEW ...`` is Feldera's own syntax: keep it, unparsed, by blanking it
    out (newlines kept, so positions in the rest of the program stay right)."""
    out = list(sql)
    try:
        tokens = sqlglot.tokenize(sql)
    except TokenError:
        return sql
    statement: list[Token] = []
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


def _array_suffixes_as_brackets(sql: str) -> str:
    """Feldera writes array types with a suffix, ``INT ARRAY`` or ``VARCHAR ARRAY ARRAY``; sqlglot
    reads that suffix only at the end of a column list. Rewrite it as ``[]`` (padded to the same
    length, so positions stay right). ``ARRAY[1, 2]``, ``ARRAY(SELECT ...)`` and ``ARRAY<INT>``
    are left alone."""
    try:
        tokens = sqlglot.tokenize(sql)
    except TokenError:
        return sql
    out = list(sql)
    for i, token in enumerate(tokens):
        if token.token_type.name != "ARRAY" or i == 0:
            continue
        following = tokens[i + 1].token_type.name if i + 1 < len(tokens) else None
        if following in ("L_BRACKET", "L_PAREN", "LT") or tokens[i - 1].token_type.name in (
                "COMMA", "L_PAREN", "SELECT"):
            continue  # an array constructor or ARRAY<...>, not a suffix
        width = token.end - token.start + 1
        out[token.start:token.end + 1] = list("[]".ljust(width))
    return "".join(out)


def _sqlglot_source(sql: str) -> str:
    """The program as sqlglot reads it: the same length and lines as ``sql``."""
    return _array_suffixes_as_brackets(_blank_declarations(sql))


def _parse_problem(exc: ParseError) -> SqlProblem:
    """sqlglot's first error, at the token it names: sqlglot gives the line and column of the token's last
    character and the token's text (``highlight``), from which its first character follows."""
    first = exc.errors[0] if exc.errors else {}
    line, column = int(first.get("line") or 1), int(first.get("col") or 1)
    token = str(first.get("highlight") or "")
    start_line = max(1, line - token.count("\n"))
    if "\n" in token:  # the token starts on an earlier line: its column is after the context's last line break
        start_column = len(str(first.get("start_context") or "").rsplit("\n", 1)[-1]) + 1
    else:
        start_column = max(1, column - len(token) + 1)
    return SqlProblem(str(first.get("description") or exc), start_line, start_column, end_line=line,
                      end_column=column)


def parse_program(sql: str) -> list[exp.Expr]:
    """Parse and check a program; raises :class:`SqlProblem` naming line and column."""
    try:
        statements = [s for s in sqlglot.parse(_sqlglot_source(sql), error_level=sqlglot.ErrorLevel.RAISE)
                      if s is not None]
    except ParseError as exc:
        raise _parse_problem(exc) from None
    except TokenError as exc:
        raise SqlProblem(f"Cannot tokenize the program: {exc}", 1, 1) from None
    ranges = _statement_ranges(_sqlglot_source(sql))
    for i, statement in enumerate(statements):
        if not isinstance(statement, exp.Create):
            where = _position(sql, *ranges[i]) if i < len(ranges) else _position(sql, 0, 0)
            line, column = where["start_line_number"], where["start_column"]
            end_line, end_column = where["end_line_number"], where["end_column"]
            shown = statement.sql()[:80]
            if isinstance(statement, exp.Command):
                raise SqlProblem(f"Cannot parse this statement: {shown!r}", line, column, end_line=end_line,
                                 end_column=end_column)
            raise SqlProblem(f"Not a CREATE or DECLARE statement: {shown!r}; a pipeline program "
                             "declares tables, views and functions", line, column, "NotADeclaration",
                             end_line=end_line, end_column=end_column)
    return statements


# --- Feldera's ``program_info`` --------------------------------------------------------------
#
# What ``GET /v0/pipelines/{name}`` returns as ``program_info`` (Feldera's ``PartialProgramInfo``):
# the stored ``ProgramInfo`` without ``main_rust`` and ``dataflow``, which the API strips
# (``remove_large_fields_from_program_info`` in pipeline-manager's pipeline_management.rs).
# ``schema`` is the SQL compiler's schema.json, passed through untouched: one Relation per table
# (``inputs``) and per view (``outputs``), written as the compiler's ``IHasSchema.asJson``,
# ``CreateTableStatement.asJson`` and ``CreateViewStatement.asJson`` write them, with each column
# type in Calcite's ``RelJson`` form (keys sorted, as Feldera's deterministic Jackson mapper does).
# Where this cannot be computed exactly, the comment at the spot says what is approximated.

_EXPR_MARK = "__feldera_expr_"
# Calcite's default precisions under Feldera's type system (SqlToRelCompiler.TYPE_SYSTEM):
# TIMESTAMP and TIMESTAMP WITH TIME ZONE 6, TIME 9; DECIMAL without arguments is DECIMAL(38, 0).
_DEFAULT_PRECISION = {"TIMESTAMP": 6, "TIMESTAMP_TZ": 6, "TIME": 9, "CHAR": 1, "BINARY": 1}
_DECIMAL_MAX_PRECISION = 38
_SIMPLE_TYPES = {
    "BOOLEAN": "BOOLEAN", "TINYINT": "TINYINT", "SMALLINT": "SMALLINT", "INT": "INTEGER", "MEDIUMINT": "INTEGER",
    "BIGINT": "BIGINT", "UTINYINT": "UTINYINT", "USMALLINT": "USMALLINT", "UINT": "UINTEGER",
    "UMEDIUMINT": "UINTEGER", "UBIGINT": "UBIGINT", "FLOAT": "REAL", "DOUBLE": "DOUBLE", "DATE": "DATE",
    "UUID": "UUID", "VARIANT": "VARIANT", "JSON": "VARIANT", "NULL": "NULL",
}
_DECIMALS = {"DECIMAL", "BIGDECIMAL", "DECIMAL32", "DECIMAL64", "DECIMAL128", "DECIMAL256", "SMALLMONEY", "MONEY"}
_STRINGS = {"VARCHAR": "VARCHAR", "NVARCHAR": "VARCHAR", "TEXT": "VARCHAR", "MEDIUMTEXT": "VARCHAR",
            "LONGTEXT": "VARCHAR", "TINYTEXT": "VARCHAR", "NAME": "VARCHAR", "CHAR": "CHAR", "NCHAR": "CHAR"}
_BYTES = {"BINARY": "BINARY", "VARBINARY": "VARBINARY", "BLOB": "VARBINARY", "LONGBLOB": "VARBINARY",
          "MEDIUMBLOB": "VARBINARY", "TINYBLOB": "VARBINARY"}
_TIMESTAMPS = {"TIMESTAMP": "TIMESTAMP", "DATETIME": "TIMESTAMP", "TIMESTAMPNTZ": "TIMESTAMP",
               "TIMESTAMP_S": "TIMESTAMP", "TIMESTAMP_MS": "TIMESTAMP", "TIMESTAMP_NS": "TIMESTAMP",
               "DATETIME2": "TIMESTAMP", "TIMESTAMPTZ": "TIMESTAMP_TZ", "TIMESTAMPLTZ": "TIMESTAMP_TZ",
               "TIME": "TIME"}
# Names sqlglot's default dialect leaves as user-defined types, though Feldera knows them.
_USER_DEFINED = {"FLOAT32": "REAL", "FLOAT64": "DOUBLE", "SIGNED": "INTEGER", "UNSIGNED": "UINTEGER"}
_DAY_TIME_UNITS = {"DAY", "HOUR", "MINUTE", "SECOND"}
_INTERVAL_UNITS = {"YEAR", "MONTH"} | _DAY_TIME_UNITS


def _sorted(d: dict[str, Any]) -> dict[str, Any]:
    return dict(sorted(d.items()))


def _fallback_type(nullable: bool = True) -> dict[str, Any]:
    """The type of a column whose type is not known here (a user-defined function or type, a
    function sqlglot does not know, a query sqlglot cannot follow): VARIANT, Feldera's
    dynamically-typed value that can hold any other SQL type, nullable unless known otherwise."""
    return {"nullable": nullable, "type": "VARIANT"}


def _canonical(identifier: exp.Expr | None) -> tuple[str, bool]:
    """Feldera's name for an identifier, and whether it is case sensitive: unquoted identifiers
    are lower-cased (Calcite's unquotedCasing TO_LOWER), quoted ones kept as written."""
    if isinstance(identifier, exp.Identifier):
        return (identifier.this, True) if identifier.quoted else (identifier.this.lower(), False)
    name = identifier.name if identifier is not None else ""
    return name.lower(), False


def _case_sensitive_heuristic(name: str) -> bool:
    """How the SQL compiler marks a view column named by the query rather than by a column list
    (ProgramIdentifier.needsQuotes): case sensitive when the name is not all lower case."""
    return name != name.lower()


def _int_param(param: exp.Expr) -> int | None:
    value = param.this if isinstance(param, exp.DataTypeParam) else param
    try:
        return int(value.name)
    except (AttributeError, TypeError, ValueError):
        return None


def _interval_type(unit: exp.Expr | None, nullable: bool) -> dict[str, Any]:
    if isinstance(unit, exp.IntervalSpan):
        names = [unit.this.name.upper(), unit.expression.name.upper()]
    elif unit is not None:
        names = [unit.name.upper()]
    else:
        names = []
    names = [n[:-1] if n.endswith("S") and n[:-1] in _INTERVAL_UNITS else n for n in names]
    if not names or any(n not in _INTERVAL_UNITS for n in names):
        # An interval of unknown units (e.g. the difference of two timestamps as sqlglot types
        # it): Feldera's widest short interval.
        names = ["DAY", "SECOND"]
    result: dict[str, Any] = {"nullable": nullable, "type": "INTERVAL_" + "_".join(names)}
    if names[0] in _DAY_TIME_UNITS:
        # Calcite's defaults: leading field precision 2, fractional second precision 6.
        result.update(precision=2, scale=6)
    return _sorted(result)


def _column_type(datatype: exp.DataType | None, nullable: bool) -> dict[str, Any]:
    """A sqlglot type as Feldera's ColumnType (Calcite's JSON form of a RelDataType)."""
    if not isinstance(datatype, exp.DataType):
        return _fallback_type(nullable)
    kind = datatype.this
    if isinstance(kind, exp.Interval):
        return _interval_type(kind.args.get("unit"), nullable)
    name = kind.name if isinstance(kind, exp.DType) else str(kind).upper()
    params = [p for p in (_int_param(e) for e in datatype.expressions) if p is not None] \
        if name not in ("ARRAY", "MAP", "STRUCT", "LIST") else []
    if name == "USERDEFINED":
        name = str(datatype.args.get("kind") or "").upper()
        if name not in _USER_DEFINED:
            return _fallback_type(nullable)
        return {"nullable": nullable, "type": _USER_DEFINED[name]}
    if name in _SIMPLE_TYPES:
        return {"nullable": nullable, "type": _SIMPLE_TYPES[name]}
    if name in _DECIMALS:
        precision = params[0] if params else _DECIMAL_MAX_PRECISION
        scale = params[1] if len(params) > 1 else 0
        return {"nullable": nullable, "precision": precision, "scale": scale, "type": "DECIMAL"}
    if name in _STRINGS or name in _BYTES:
        feldera = _STRINGS.get(name) or _BYTES[name]
        precision = params[0] if params else _DEFAULT_PRECISION.get(feldera, -1)  # unlimited: -1
        return {"nullable": nullable, "precision": precision, "type": feldera}
    if name in _TIMESTAMPS:
        feldera = _TIMESTAMPS[name]
        precision = params[0] if params else _DEFAULT_PRECISION[feldera]
        return {"nullable": nullable, "precision": precision, "type": feldera}
    if name == "INTERVAL":
        return _interval_type(datatype.expressions[0] if datatype.expressions else None, nullable)
    if name in ("ARRAY", "LIST") and datatype.expressions:
        # Array elements are always nullable in Feldera (docs/sql/array.md).
        element = _column_type(datatype.expressions[0], True)
        return {"component": element, "nullable": nullable, "type": "ARRAY"}
    if name == "MAP" and len(datatype.expressions) == 2:
        # Map keys are never nullable, map values always are (docs/sql/types.md).
        key, value = datatype.expressions
        return {"key": _column_type(key, False), "nullable": nullable, "type": "MAP",
                "value": _column_type(value, True)}
    if name == "STRUCT" and datatype.expressions:
        fields = []
        for member in datatype.expressions:
            member_name = member.name if isinstance(member, exp.ColumnDef) else ""
            member_type = member.args.get("kind") if isinstance(member, exp.ColumnDef) else member
            # ROW fields are not nullable by default (docs/sql/types.md).
            fields.append(_struct_member(member_name, _column_type(member_type, False)))
        # Calcite writes a struct type without "type" (Feldera reads a missing type as STRUCT).
        return {"fields": fields, "nullable": nullable}
    return _fallback_type(nullable)


def _struct_member(name: str, columntype: dict[str, Any]) -> dict[str, Any]:
    """A field of a struct type as Calcite's ``RelJson.toJson(RelDataTypeField)`` writes it: the
    type's keys plus ``name``, or for a nested struct its type under ``fields``."""
    if "type" not in columntype and "fields" in columntype:
        return _sorted({"fields": columntype, "name": name, "nullable": columntype["nullable"]})
    return _sorted({**columntype, "name": name})


def _sqlglot_type(columntype: dict[str, Any]) -> exp.DataType:
    """The reverse of :func:`_column_type`, for the schema sqlglot types queries with."""
    kind = columntype.get("type", "STRUCT")
    precision, scale = columntype.get("precision"), columntype.get("scale")
    reverse = {"INTEGER": "INT", "UINTEGER": "UINT", "REAL": "FLOAT", "TIMESTAMP_TZ": "TIMESTAMPTZ"}
    if kind == "ARRAY":
        return exp.DataType(this=exp.DType.ARRAY, expressions=[_sqlglot_type(columntype["component"])],
                            nested=True)
    if kind == "MAP":
        return exp.DataType(this=exp.DType.MAP, nested=True, expressions=[
            _sqlglot_type(columntype["key"]), _sqlglot_type(columntype["value"])])
    if kind == "STRUCT":
        members = []
        for member in columntype.get("fields") or []:
            inner = member.get("fields") if "type" not in member else member
            members.append(exp.ColumnDef(this=exp.to_identifier(member.get("name", ""), quoted=True),
                                         kind=_sqlglot_type(inner or {})))
        return exp.DataType(this=exp.DType.STRUCT, expressions=members, nested=True)
    if kind.startswith("INTERVAL_"):
        units = kind[len("INTERVAL_"):].split("_")
        return exp.DataType.build("INTERVAL " + " TO ".join(units))
    if kind == "VARIANT":
        return exp.DataType(this=exp.DType.VARIANT)
    params = []
    if kind == "DECIMAL":
        params = [precision, scale]
    elif precision is not None and precision >= 0:
        params = [precision]
    return exp.DataType(this=exp.DType[reverse.get(kind, kind)],
                        expressions=[exp.DataTypeParam(this=exp.Literal.number(p)) for p in params if p is not None])


@dataclass
class _Relation:
    name: str
    case_sensitive: bool
    fields: list[dict[str, Any]]


class _Catalog:
    """The relations declared so far, for sqlglot (types) and for us (Feldera's column types)."""

    def __init__(self) -> None:
        self.relations: dict[str, _Relation] = {}
        self.schema = MappingSchema(dialect=None, normalize=True)

    def add(self, relation: _Relation) -> None:
        self.relations[relation.name] = relation
        columns = {}
        for field in relation.fields:
            try:
                columns[exp.to_identifier(field["name"], quoted=True).sql()] = _sqlglot_type(field["columntype"])
            except Exception:  # noqa: BLE001 - a type sqlglot cannot hold: unknown to sqlglot
                columns[exp.to_identifier(field["name"], quoted=True).sql()] = exp.DataType.build("UNKNOWN")
        try:
            self.schema.add_table(exp.Table(this=exp.to_identifier(relation.name, quoted=True)), columns)
        except Exception:  # noqa: BLE001 - queries over it are then typed as unknown
            log.debug("cannot add relation %s to the sqlglot schema", relation.name, exc_info=True)

    def field(self, relation: str, column: str) -> dict[str, Any] | None:
        found = self.relations.get(relation)
        return next((f for f in found.fields if f["name"] == column), None) if found else None


def _position(source: str, start: int | None, end: int | None) -> dict[str, int]:
    """A SourcePosition (1-based lines and columns, end inclusive) from character offsets."""
    if start is None or end is None:
        return {"start_line_number": 0, "start_column": 0, "end_line_number": 0, "end_column": 0}

    def line_column(offset: int) -> tuple[int, int]:
        return source.count("\n", 0, offset) + 1, offset - source.rfind("\n", 0, offset)

    (start_line, start_column), (end_line, end_column) = line_column(start), line_column(end)
    return {"start_line_number": start_line, "start_column": start_column,
            "end_line_number": end_line, "end_column": end_column}


def _properties(statement: exp.Create, source: str) -> dict[str, Any]:
    """``WITH ('key' = 'value', ...)`` as the SQL compiler's Properties.asJson writes it: each
    value with the positions of the key and value literals (quotes included)."""
    result: dict[str, Any] = {}
    properties = statement.args.get("properties")
    for prop in properties.expressions if properties else []:
        key, value = prop.this, prop.args.get("value")
        if not (isinstance(prop, exp.Property) and isinstance(key, exp.Literal) and key.is_string
                and isinstance(value, exp.Literal) and value.is_string):
            continue
        result[key.this] = {
            "value": value.this,
            "key_position": _position(source, key.meta.get("start"), key.meta.get("end")),
            "value_position": _position(source, value.meta.get("start"), value.meta.get("end")),
        }
    return result


def _int8_as_bigint(column: exp.ColumnDef, source: str) -> exp.DataType | None:
    """The column's type, with ``INT8`` read as Feldera reads it (BIGINT): sqlglot's default
    dialect reads it as TINYINT. The type is found in the source text after the column's name."""
    kind = column.args.get("kind")
    end = column.this.meta.get("end") if isinstance(column.this, exp.Identifier) else None
    if not isinstance(kind, exp.DataType) or end is None or not re.match(r"\s*INT8\b", source[end + 1:], re.IGNORECASE):
        return kind
    kind = kind.copy()
    innermost = kind
    while innermost.is_type(exp.DType.ARRAY) and innermost.expressions:
        innermost = innermost.expressions[0]
    if innermost.is_type(exp.DType.TINYINT):
        innermost.set("this", exp.DType.BIGINT)
    return kind


def _table_fields(schema: exp.Schema, source: str = "") -> tuple[list[dict[str, Any]], list[str],
                                                                 list[dict[str, Any]]]:
    """A table's fields, its primary key and its foreign keys, from its column list (``source``:
    the text it was parsed from)."""
    key_columns: set[str] = set()
    foreign_keys: list[dict[str, Any]] = []
    table_name, _ = _canonical(schema.this.this if isinstance(schema.this, exp.Table) else None)

    def reference(columns: list[str], ref: exp.Expr | None) -> None:
        target = ref.this if isinstance(ref, exp.Reference) else None
        if isinstance(target, exp.Schema):
            foreign_keys.append({"source": table_name, "columns": columns,
                                 "refers": _canonical(target.this.this)[0],
                                 "tocolumns": [_canonical(c)[0] for c in target.expressions]})
        elif isinstance(target, exp.Table):
            foreign_keys.append({"source": table_name, "columns": columns,
                                 "refers": _canonical(target.this)[0], "tocolumns": []})

    for item in schema.expressions:
        if isinstance(item, exp.PrimaryKey):
            key_columns.update(_canonical(c if isinstance(c, exp.Identifier) else c.this)[0]
                               for c in item.expressions)
        elif isinstance(item, exp.ForeignKey):
            reference([_canonical(c)[0] for c in item.expressions], item.args.get("reference"))
    fields = []
    for column in schema.expressions:
        if not isinstance(column, exp.ColumnDef):
            continue
        name, case_sensitive = _canonical(column.this)
        nullable, default = True, None
        for constraint in column.constraints:
            kind = constraint.kind
            if isinstance(kind, exp.NotNullColumnConstraint):
                nullable = bool(kind.args.get("allow_null"))
            elif isinstance(kind, exp.PrimaryKeyColumnConstraint):
                key_columns.add(name)
            elif isinstance(kind, exp.DefaultColumnConstraint):
                # Feldera writes Calcite's rendering of the expression; this is sqlglot's.
                default = kind.this.sql() if kind.this is not None else None
            elif isinstance(kind, exp.ForeignKey):
                reference([name], kind.args.get("reference"))
            elif isinstance(kind, exp.Reference):
                reference([name], kind)
        if name in key_columns:
            nullable = False  # Feldera rejects nullable key columns; a key column is NOT NULL
        try:
            columntype = _sorted(_column_type(_int8_as_bigint(column, source), nullable))
        except Exception:  # noqa: BLE001 - an unexpected type: see _fallback_type
            columntype = _fallback_type(nullable)
        field: dict[str, Any] = {"name": name, "case_sensitive": case_sensitive, "columntype": columntype}
        if default is not None:
            field["default"] = default
        # Feldera marks the columns its optimizer drops as unused; that needs its dataflow
        # analysis. False (used) is the safe answer: connectors then read every column.
        field["unused"] = False
        fields.append(field)
    for field in fields:
        if field["name"] in key_columns:
            field["columntype"]["nullable"] = False
    primary_key = [f["name"] for f in fields if f["name"] in key_columns]
    return fields, primary_key, foreign_keys


def _declared_views(sql: str) -> dict[str, list[dict[str, Any]]]:
    """The columns of ``DECLARE RECURSIVE VIEW name (columns)`` statements, by view name."""
    declared: dict[str, list[dict[str, Any]]] = {}
    try:
        tokens = sqlglot.tokenize(sql)
    except TokenError:
        return declared
    statement: list[Token] = []
    for token in [*tokens, None]:
        if token is not None and token.token_type.name != "SEMICOLON":
            statement.append(token)
            continue
        if statement and statement[0].text.upper() == "DECLARE":
            text = _array_suffixes_as_brackets(sql[statement[0].start:statement[-1].end + 1])
            as_table = re.sub(r"^DECLARE\s+RECURSIVE\s+VIEW\b", "CREATE TABLE", text, flags=re.IGNORECASE)
            try:
                parsed = sqlglot.parse_one(as_table, error_level=sqlglot.ErrorLevel.RAISE)
                if isinstance(parsed, exp.Create) and isinstance(parsed.this, exp.Schema):
                    name, _ = _canonical(parsed.this.this.this)
                    declared[name] = _table_fields(parsed.this, as_table)[0]
            except Exception:  # noqa: BLE001 - an unreadable declaration: the view is typed from its query
                log.debug("cannot read declaration %r", text[:80], exc_info=True)
        statement = []
    return declared


def _leaf_scopes(scope: Scope) -> list[Scope]:
    """The SELECT scopes whose rows a (possibly UNION/INTERSECT/EXCEPT) query returns."""
    if scope.set_operation_scopes:
        return [leaf for inner in scope.set_operation_scopes for leaf in _leaf_scopes(inner)]
    return [scope]


def _selects(scope: Scope) -> list[exp.Expr]:
    """The projections of a leaf scope (always a SELECT: ``_leaf_scopes`` descends set operations)."""
    return cast(exp.Selectable, scope.expression).selects


def _null_supplying(select: exp.Expr) -> set[str]:
    """Sources of a SELECT on the NULL-supplying side of an outer join."""
    result: set[str] = set()
    from_ = select.args.get("from_") or select.args.get("from")
    seen = [from_.this.alias_or_name] if from_ is not None and from_.this is not None else []
    for join in select.args.get("joins") or []:
        side, alias = (join.side or "").upper(), join.this.alias_or_name
        if side in ("LEFT", "FULL"):
            result.add(alias)
        if side in ("RIGHT", "FULL"):
            result.update(seen)
        seen.append(alias)
    return result


class _Typer:
    """Feldera column types for the expressions of a qualified, type-annotated query."""

    def __init__(self, catalog: _Catalog) -> None:
        self.catalog = catalog

    def source_column(self, column: exp.Column, scope: Scope, depth: int = 0) -> dict[str, Any] | None:
        """The type of the column a column reference reads, followed through subqueries and CTEs."""
        if depth > 50:
            return None
        source = scope.sources.get(column.table)
        found: dict[str, Any] | None = None
        if isinstance(source, exp.Table):
            field = self.catalog.field(source.name, column.name)
            found = copy.deepcopy(field["columntype"]) if field else None
        elif isinstance(source, Scope):
            leaves = _leaf_scopes(source)
            for projection in _selects(leaves[0]):
                if projection.alias_or_name == column.name:
                    found = self.type_of(projection.unalias(), leaves[0], depth + 1)
                    break
        if found is not None and column.table in _null_supplying(scope.expression):
            found["nullable"] = True
        return found

    def grouped(self, scope: Scope) -> bool:
        return bool(scope.expression.args.get("group"))

    def nullable(self, node: exp.Expr, scope: Scope, depth: int = 0) -> bool:
        """Whether an expression can be NULL, roughly as Calcite derives it: most operators and
        functions are NULL when an argument is; unknown functions may always be."""
        if isinstance(node, exp.Paren | exp.Alias):
            return self.nullable(node.this, scope, depth)
        if isinstance(node, exp.Column):
            found = self.source_column(node, scope, depth)
            return True if found is None else bool(found.get("nullable", True))
        if isinstance(node, exp.Null):
            return True
        if isinstance(node, exp.Literal | exp.Boolean | exp.Count | exp.Is | exp.Exists):
            return False
        if isinstance(node, exp.Window):
            inner = node.this
            return not isinstance(inner, exp.Count | exp.RowNumber | exp.Rank | exp.DenseRank)
        if isinstance(node, exp.AggFunc):
            # An aggregate without GROUP BY is NULL over no rows.
            return not self.grouped(scope) or any(self.nullable(a, scope, depth) for a in self._arguments(node))
        if isinstance(node, exp.Coalesce):
            return all(self.nullable(a, scope, depth) for a in self._arguments(node))
        if isinstance(node, exp.Case):
            default = node.args.get("default")
            return default is None or self.nullable(default, scope, depth) or any(
                self.nullable(branch.args.get("true"), scope, depth) for branch in node.args.get("ifs") or [])
        if isinstance(node, exp.If):
            false = node.args.get("false")
            return false is None or self.nullable(cast(exp.Expr, node.args.get("true")), scope, depth) \
                or self.nullable(false, scope, depth)
        if isinstance(node, exp.Anonymous | exp.Subquery | exp.Bracket | exp.TryCast | exp.Dot):
            return True  # user functions, scalar subqueries, indexing: may be NULL
        if isinstance(node, exp.Func | exp.Binary | exp.Unary | exp.Cast | exp.Between | exp.In):
            return any(self.nullable(a, scope, depth) for a in self._arguments(node))
        return True

    @staticmethod
    def _arguments(node: exp.Expr) -> list[exp.Expr]:
        return [a for a in node.iter_expressions() if not isinstance(a, exp.DataType | exp.Star)
                and not (isinstance(a, exp.Column) and isinstance(a.this, exp.Star))]

    def type_of(self, node: exp.Expr, scope: Scope, depth: int = 0) -> dict[str, Any]:
        while isinstance(node, exp.Paren):
            node = node.this
        if isinstance(node, exp.Column):
            found = self.source_column(node, scope, depth)
            if found is not None:
                return found
        if isinstance(node, exp.Count):
            return {"nullable": False, "type": "BIGINT"}
        if isinstance(node, exp.Literal):
            return _literal_type(node)
        if isinstance(node, exp.Bracket) and len(node.expressions) == 1:
            # Indexing: an array's element or a map's value, NULL when absent.
            container = self.type_of(node.this, scope, depth)
            inner = container.get("component") if container.get("type") == "ARRAY" else \
                container.get("value") if container.get("type") == "MAP" else None
            if inner is not None:
                return {**copy.deepcopy(inner), "nullable": True}
        if isinstance(node, exp.Sum | exp.Avg | exp.Min | exp.Max) and isinstance(node.this, exp.Expression):
            # Calcite: MIN, MAX and AVG have their argument's type; SUM too, except that a
            # DECIMAL sum gets the largest precision (RelDataTypeSystemImpl.deriveSumType).
            argument = self.type_of(node.this, scope, depth)
            argument["nullable"] = self.nullable(node, scope, depth)
            if isinstance(node, exp.Sum) and argument.get("type") == "DECIMAL":
                argument["precision"] = _DECIMAL_MAX_PRECISION
            return argument
        nullable = self.nullable(node, scope, depth)
        if node.type is None or node.type.is_type(exp.DType.UNKNOWN):
            return _fallback_type(nullable)
        # Otherwise sqlglot's type. Its rules for the precision of arithmetic results differ in
        # places from Calcite's (e.g. DECIMAL multiplication keeps the operand's precision).
        return _sorted(_column_type(node.type, nullable))


def _literal_type(literal: exp.Literal) -> dict[str, Any]:
    """Calcite's type for a literal: a string is CHAR of its length, an integer INTEGER (BIGINT
    when it does not fit), a number with a point DECIMAL of its digits, one with an exponent DOUBLE."""
    text = literal.this
    if literal.is_string:
        return {"nullable": False, "precision": len(text), "type": "CHAR"}
    if re.fullmatch(r"\d+", text):
        return {"nullable": False, "type": "INTEGER" if int(text) < 2**31 else "BIGINT"}
    if re.fullmatch(r"\d*\.\d*", text):
        digits, scale = len(text.replace(".", "").lstrip("0")), len(text.split(".")[1])
        return {"nullable": False, "precision": max(digits, scale, 1), "scale": scale, "type": "DECIMAL"}
    return {"nullable": False, "type": "DOUBLE"}


def _output_name(projection: exp.Expr, position: int) -> tuple[str, bool]:
    name = projection.alias_or_name
    if name.startswith(_EXPR_MARK) or not name:
        name = f"EXPR${position}"  # Calcite's name for an unnamed expression
    return name, _case_sensitive_heuristic(name)


def _view_fields(query: exp.Expr, catalog: _Catalog) -> list[dict[str, Any]]:
    """A view's columns: the names of its query's projection and their types, from sqlglot's
    qualification and type annotation over the relations declared so far."""
    if isinstance(query, exp.Values):  # VALUES (...), ...: Calcite names the columns EXPR$0, ...
        rows = [row.expressions for row in query.expressions if isinstance(row, exp.Tuple)]
        return [{"name": f"EXPR${i}", "case_sensitive": True, "columntype": _sorted({
            **(_literal_type(value) if isinstance(value, exp.Literal) else _fallback_type()),
            "nullable": any(not isinstance(row[i], exp.Literal) for row in rows if i < len(row))}),
            "unused": False} for i, value in enumerate(rows[0] if rows else [])]
    query = query.copy()
    leftmost = query
    while isinstance(leftmost, exp.SetOperation):
        leftmost = leftmost.this
    if isinstance(leftmost, exp.Subquery):
        leftmost = leftmost.unnest()
    for i, projection in enumerate(list(leftmost.expressions if isinstance(leftmost, exp.Select) else [])):
        if not isinstance(projection, exp.Alias | exp.Column | exp.Star):
            projection.replace(exp.alias_(projection.copy(), f"{_EXPR_MARK}{i}"))
    qualified = qualify(query, schema=catalog.schema, validate_qualify_columns=False, quote_identifiers=False,
                        identify=False)
    annotate_types(qualified, schema=catalog.schema)
    root = build_scope(qualified)
    if root is None:
        raise ValueError("no query scope")
    leaves = _leaf_scopes(root)
    typer = _Typer(catalog)
    fields = []
    for position, projection in enumerate(_selects(leaves[0])):
        if isinstance(projection.unalias(), exp.Star) or (
                isinstance(projection, exp.Column) and isinstance(projection.this, exp.Star)):
            continue  # a star sqlglot could not expand (over something unknown): columns unknown
        name, case_sensitive = _output_name(projection, position)
        columntype = typer.type_of(projection.unalias(), leaves[0])
        for other in leaves[1:]:  # a set operation: NULL if any branch is
            selects = _selects(other)
            if position < len(selects) and typer.nullable(selects[position].unalias(), other):
                columntype["nullable"] = True
        fields.append({"name": name, "case_sensitive": case_sensitive, "columntype": _sorted(columntype),
                       "unused": False})
    return fields


def _view_fields_by_name(query: exp.Expr) -> list[dict[str, Any]]:
    """A view's columns when its query cannot be typed: names only, every type the fallback."""
    leftmost = query
    while isinstance(leftmost, exp.SetOperation):
        leftmost = leftmost.this
    fields = []
    for position, projection in enumerate(leftmost.expressions if isinstance(leftmost, exp.Select) else []):
        if isinstance(projection, exp.Star) or isinstance(projection.unalias(), exp.Star) or (
                isinstance(projection, exp.Column) and isinstance(projection.this, exp.Star)):
            continue  # SELECT * over something unknown: its columns are unknown
        if isinstance(projection, exp.Alias | exp.Column):
            identifier = projection.args.get("alias") if isinstance(projection, exp.Alias) else projection.this
            name, _ = _canonical(identifier)
        else:
            name = f"EXPR${position}"
        fields.append({"name": name, "case_sensitive": _case_sensitive_heuristic(name),
                       "columntype": _fallback_type(), "unused": False})
    return fields


# The SQL compiler declares this view in every program (DBSPCompiler.start); it comes first.
_ERROR_VIEW = {"name": "error_view", "case_sensitive": False, "fields": [
    {"name": column, "case_sensitive": False,
     "columntype": {"nullable": False, "precision": -1, "type": "VARCHAR"}, "unused": False}
    for column in ("table_or_view_name", "message", "metadata")], "materialized": False}


def program_schema(sql: str, statements: list[exp.Expr]) -> dict[str, Any]:
    """Feldera's ProgramSchema for a parsed program: ``{"inputs": [...], "outputs": [...]}``."""
    source = _sqlglot_source(sql)
    catalog = _Catalog()
    declared = _declared_views(sql)
    for name, fields in declared.items():  # visible to the views that refer to them
        catalog.add(_Relation(name, False, fields))
    inputs: list[dict[str, Any]] = []
    outputs: list[dict[str, Any]] = [copy.deepcopy(_ERROR_VIEW)]
    for statement in statements:
        if not isinstance(statement, exp.Create):
            continue
        kind = (statement.args.get("kind") or "").upper()
        target = statement.this
        table = target.this if isinstance(target, exp.Schema) else target
        if kind not in ("TABLE", "VIEW") or not isinstance(table, exp.Table):
            continue
        name, case_sensitive = _canonical(table.this)
        try:
            properties = _properties(statement, source)
        except Exception:  # noqa: BLE001 - properties are an extra; never fail for them
            log.debug("cannot read the properties of %s", name, exc_info=True)
            properties = {}
        relation: dict[str, Any] = {"name": name, "case_sensitive": case_sensitive}
        if kind == "TABLE":
            try:
                fields, primary_key, foreign_keys = _table_fields(target, source) if isinstance(target, exp.Schema) \
                    else ([], [], [])
            except Exception:  # noqa: BLE001
                log.debug("cannot read the columns of table %s", name, exc_info=True)
                fields, primary_key, foreign_keys = [], [], []
            relation["fields"] = fields
            if primary_key:
                relation["primary_key"] = primary_key
            if properties:
                relation["properties"] = properties
            materialized = properties.get("materialized", {}).get("value", "")
            relation["materialized"] = materialized.lower() == "true"
            relation["foreign_keys"] = foreign_keys
            inputs.append(relation)
        else:
            query = statement.expression
            if name in declared:
                fields = copy.deepcopy(declared[name])  # a recursive view has its declared columns
            else:
                try:
                    fields = _view_fields(query, catalog)
                except Exception:  # noqa: BLE001 - a query sqlglot cannot follow: names only
                    log.debug("cannot type view %s", name, exc_info=True)
                    try:
                        fields = _view_fields_by_name(query)
                    except Exception:  # noqa: BLE001
                        fields = []
            column_names = target.expressions if isinstance(target, exp.Schema) else []
            for field, identifier in zip(fields, column_names, strict=False):
                field["name"], field["case_sensitive"] = _canonical(identifier)
            relation["fields"] = fields
            if properties:
                relation["properties"] = properties
            relation["materialized"] = any(isinstance(p, exp.MaterializedProperty) for p in (
                statement.args["properties"].expressions if statement.args.get("properties") else []))
            outputs.append(relation)
        catalog.add(_Relation(name, case_sensitive, relation["fields"]))
    return {"inputs": inputs, "outputs": outputs}


def program_info(sql: str, statements: list[exp.Expr]) -> dict[str, Any]:
    """Feldera's ``program_info`` for a parsed program, as ``GET /v0/pipelines/{name}`` returns it
    (``PartialProgramInfo``). Never raises: what cannot be worked out is left out or typed
    with the fallback type."""
    try:
        schema = program_schema(sql, statements)
    except Exception:  # noqa: BLE001 - program_info must never fail a compilation
        log.warning("cannot derive the program schema", exc_info=True)
        schema = {"inputs": [], "outputs": [copy.deepcopy(_ERROR_VIEW)]}
    # Connectors named in WITH ('connectors' = ...) are not turned into endpoints here.
    return {"schema": schema, "udf_stubs": "", "input_connectors": {}, "output_connectors": {}}


def build_artifact(sql: str, statements: list[exp.Expr]) -> dict[str, Any]:
    tables: list[str] = []
    views: list[str] = []
    for statement in statements:
        if isinstance(statement, exp.Create):
            kind = (statement.args.get("kind") or "").upper()
            target = statement.this
            name = target.this.sql() if isinstance(target, exp.Schema) else target.sql() if target else ""
            (tables if kind == "TABLE" else views if kind == "VIEW" else []).append(name)
    return {"digest": program_digest(sql), "sql": sql, "tables": tables, "views": views,
            "statements": len(statements), "program_info": program_info(sql, statements)}


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


# -- Feldera's SQL compiler ----------------------------------------------------------------------------------

SQL_COMPILER_TIMEOUT = 600.0  # seconds one run of Feldera's SQL compiler may take


def binary_key(feldera_version: str, sql: str) -> str:
    """The name of a program's binary in the binary store: a digest of what determines it, the Feldera
    version (its SQL compiler and runtime) and the program."""
    return hashlib.sha256(f"feldera {feldera_version}\0".encode() + sql.encode()).hexdigest()


# A program's compiler messages go into its Pipeline's status: a program that makes the compiler write
# thousands of warnings (or quote a huge line) must not make that status too large to write.
MAX_STDERR_BYTES = 16 * 1024 * 1024  # read of the compiler's stderr; past it the JSON is cut: a SystemError
MAX_MESSAGES_BYTES = 64 * 1024  # the messages kept, as JSON
MAX_MESSAGE_FIELD = 4096  # characters of one message's text fields (message, snippet, error_type)


def compiler_messages(stderr: str) -> list[dict[str, Any]] | None:
    """The messages Feldera's SQL compiler writes as JSON (``-je``) on stderr, after whatever the JVM wrote
    before them (as Feldera reads them: from the first ``[``); None when there are none to read. Bounded: each
    text field to ``MAX_MESSAGE_FIELD`` characters, the whole to ``MAX_MESSAGES_BYTES``, a last message saying
    how many more there were."""
    start = stderr.find("[")
    if start < 0:
        return None
    try:
        messages = json.loads(stderr[start:])
    except ValueError:
        return None
    if not isinstance(messages, list):
        return None
    kept: list[dict[str, Any]] = []
    size = 0
    found = [m for m in messages if isinstance(m, dict)]
    for message in found:
        message = {k: v[:MAX_MESSAGE_FIELD] + " ..." if isinstance(v, str) and len(v) > MAX_MESSAGE_FIELD else v
                   for k, v in message.items()}
        size += len(json.dumps(message))
        if size > MAX_MESSAGES_BYTES:
            break
        kept.append(message)
    if len(kept) < len(found):
        kept.append({"start_line_number": 0, "start_column": 0, "end_line_number": 0, "end_column": 0,
                     "warning": all(m.get("warning") is True for m in found[len(kept):]),
                     "error_type": "Messages not shown",
                     "message": f"{len(found) - len(kept)} more messages of the SQL compiler are not shown "
                                f"(a program's messages are kept to {MAX_MESSAGES_BYTES // 1024} KiB)",
                     "snippet": None})
    return kept


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
