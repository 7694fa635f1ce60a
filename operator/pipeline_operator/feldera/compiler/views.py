"""A view's columns, typed as Feldera's SQL compiler types them where sqlglot can follow the query
(its scopes, the nullability of outer joins, the literals' types), else named only."""

from __future__ import annotations

import copy
import re
from typing import Any, cast

from sqlglot import exp
from sqlglot.optimizer.annotate_types import annotate_types
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import Scope, build_scope

from .column_types import (
    _DECIMAL_MAX_PRECISION,
    _EXPR_MARK,
    _canonical,
    _case_sensitive_heuristic,
    _Catalog,
    _column_type,
    _fallback_type,
    _sorted,
)


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
