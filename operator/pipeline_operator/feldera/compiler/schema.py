"""Feldera's ``program_info`` of a program: its schema (one relation per table and per view, with their
columns, keys and properties) as the SQL compiler's schema.json writes it, and the reference compiler's
artifact."""

from __future__ import annotations

import copy
import logging
import re
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import TokenError
from sqlglot.tokenizer_core import Token

from ...models import program_digest
from .column_types import _canonical, _Catalog, _column_type, _fallback_type, _Relation, _sorted
from .sql import _array_suffixes_as_brackets, _position, _sqlglot_source
from .views import _view_fields, _view_fields_by_name

log = logging.getLogger(__name__)

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
