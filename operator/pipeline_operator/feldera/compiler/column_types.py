"""Column types between Feldera and sqlglot: a column's type in Calcite's ``RelJson`` form (as Feldera's
SQL compiler writes it in a program's schema) from sqlglot's, and back, and the catalog of the relations a
program declared so far (for sqlglot's typing of the views)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlglot import exp
from sqlglot.schema import MappingSchema

log = logging.getLogger(__name__)


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
