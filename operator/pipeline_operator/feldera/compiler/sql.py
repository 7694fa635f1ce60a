"""The reference compiler's SQL checks: a program parsed with sqlglot (Feldera's own syntax that sqlglot
does not read adapted first, every position kept: ``DECLARE RECURSIVE VIEW`` statements blanked out, the
``ARRAY`` type suffix written as ``[]``), every statement a CREATE (or DECLARE), and a SQL error reported as
Feldera's compiler reports it (line, column, snippet)."""

from __future__ import annotations

import logging
import re
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokenizer_core import Token

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


def _position(source: str, start: int | None, end: int | None) -> dict[str, int]:
    """A SourcePosition (1-based lines and columns, end inclusive) from character offsets."""
    if start is None or end is None:
        return {"start_line_number": 0, "start_column": 0, "end_line_number": 0, "end_column": 0}

    def line_column(offset: int) -> tuple[int, int]:
        return source.count("\n", 0, offset) + 1, offset - source.rfind("\n", 0, offset)

    (start_line, start_column), (end_line, end_column) = line_column(start), line_column(end)
    return {"start_line_number": start_line, "start_column": start_column,
            "end_line_number": end_line, "end_column": end_column}
