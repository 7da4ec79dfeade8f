"""What a query asks of each table, read from PostgreSQL's own parse tree (pglast).

For every table a statement reads (in every ``SELECT``, ``UPDATE`` or ``DELETE`` scope,
subqueries and CTEs included): the columns compared by equality, by range, sorted on,
selected, joined on; constant predicates (``active``, ``deleted_at IS NULL``) that make a
partial index; JSONB containment and full-text matches that need GIN.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from pglast import ast, parser
from pglast.enums import A_Expr_Kind, BoolExprType, SortByDir
from pglast.stream import RawStream

_RANGE_OPS = {"<", ">", "<=", ">="}
_GIN_OPS = {"@>", "?", "?|", "?&", "<@"}
_LIKE = {A_Expr_Kind.AEXPR_LIKE, A_Expr_Kind.AEXPR_ILIKE}


@dataclass
class TableUse:
    """One table's part in one statement scope."""

    schema: str | None
    table: str
    alias: str
    equality: list[str] = field(default_factory=list)
    range: list[str] = field(default_factory=list)
    order_by: list[tuple[str, bool]] = field(default_factory=list)  # (column, descending)
    selected: list[str] | None = field(default_factory=list)  # None: SELECT * or unknown
    constant_predicates: list[str] = field(default_factory=list)
    containment: list[str] = field(default_factory=list)  # jsonb/array @>, ?, <@
    fulltext: list[str] = field(default_factory=list)  # to_tsvector(...) expressions
    join_columns: list[str] = field(default_factory=list)
    prefix_like: list[str] = field(default_factory=list)  # col LIKE 'abc%'

    @property
    def name(self) -> str:
        return f"{self.schema}.{self.table}" if self.schema else self.table

    def referenced(self) -> list[str]:
        cols = self.equality + self.range + [c for c, _ in self.order_by] + self.join_columns
        return list(dict.fromkeys(cols + self.containment + self.prefix_like))


@dataclass
class ParsedQuery:
    sql: str
    kind: str  # select, update, delete, insert, other
    uses: list[TableUse] = field(default_factory=list)
    error: str | None = None

    @property
    def tables(self) -> list[str]:
        return list(dict.fromkeys(u.name for u in self.uses))


ColumnsOf = Callable[[str], "set[str]"]


def _no_catalog(table: str) -> set[str]:
    return set()


def parse_query(sql: str, columns_of: ColumnsOf = _no_catalog) -> ParsedQuery:
    """Parse ``sql``; ``columns_of(table)`` resolves unqualified columns in joins."""
    try:
        statements = parser.parse_sql(sql)
    except Exception as exc:  # pglast.parser.ParseError, or anything the parser rejects
        return ParsedQuery(sql, "other", error=f"not parseable: {str(exc).splitlines()[0]}")
    if len(statements) != 1:
        return ParsedQuery(sql, "other", error="several statements: give one at a time")
    stmt = statements[0].stmt
    kind = {
        ast.SelectStmt: "select",
        ast.UpdateStmt: "update",
        ast.DeleteStmt: "delete",
        ast.InsertStmt: "insert",
    }.get(type(stmt), "other")
    parsed = ParsedQuery(sql, kind)
    for scope in _scopes(stmt):
        parsed.uses.extend(_scope_uses(scope, columns_of))
    return parsed


@lru_cache(maxsize=4096)
def tables_of(sql: str) -> tuple[str, ...]:
    """Names of the tables a statement reads or writes (empty when unparseable)."""
    try:
        statements = parser.parse_sql(sql)
    except Exception:
        return ()
    found: list[str] = []
    for node in _walk(statements):
        if isinstance(node, ast.RangeVar):
            name = f"{node.schemaname}.{node.relname}" if node.schemaname else str(node.relname)
            if name not in found:
                found.append(name)
    return tuple(found)


def deparse(node: Any) -> str:
    return str(RawStream()(node))


def _walk(root: object) -> Iterator[Any]:
    stack: list[object] = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Node):
            yield node
            for name in node:  # pglast nodes iterate over their attribute names
                stack.append(getattr(node, name))
        elif isinstance(node, (tuple, list)):
            stack.extend(node)


def _scopes(stmt: Any) -> Iterator[Any]:
    for node in _walk(stmt):
        if isinstance(node, (ast.SelectStmt, ast.UpdateStmt, ast.DeleteStmt)):
            yield node


def _range_vars(from_items: object) -> Iterator[tuple[Any, list[Any]]]:
    """Tables of a FROM list with the JOIN ... ON conditions met on the way."""
    items: Any = from_items or ()
    for item in items:
        if isinstance(item, ast.RangeVar):
            yield item, []
        elif isinstance(item, ast.JoinExpr):
            quals = [item.quals] if item.quals is not None else []
            first = True
            for pair in (item.larg, item.rarg):
                for rv, inner in _range_vars((pair,)):
                    yield rv, inner + (quals if first else [])
                    first = False


def _scope_uses(scope: Any, columns_of: ColumnsOf) -> list[TableUse]:
    conditions: list[Any] = []
    if isinstance(scope, ast.SelectStmt):
        ranges = list(_range_vars(scope.fromClause))
    elif isinstance(scope, ast.UpdateStmt):
        ranges = [(scope.relation, []), *list(_range_vars(scope.fromClause))]
    else:
        ranges = [(scope.relation, []), *list(_range_vars(getattr(scope, "usingClause", None)))]
    uses: dict[str, TableUse] = {}
    for rv, quals in ranges:
        alias = rv.alias.aliasname if rv.alias else rv.relname
        uses[alias] = TableUse(rv.schemaname, rv.relname, alias)
        conditions.extend(quals)
    if not uses:
        return []
    if scope.whereClause is not None:
        conditions.append(scope.whereClause)
    resolver = _Resolver(uses, columns_of)
    for condition in conditions:
        for term in _conjuncts(condition):
            _classify(term, resolver)
    if isinstance(scope, ast.SelectStmt):
        for sort in scope.sortClause or ():
            found = resolver.column(sort.node)
            if found:
                use, column = found
                use.order_by.append((column, sort.sortby_dir == SortByDir.SORTBY_DESC))
        _selected(scope, uses, resolver)
    else:
        for use in uses.values():
            use.selected = None
    return list(uses.values())


def _selected(scope: Any, uses: dict[str, TableUse], resolver: _Resolver) -> None:
    for target in scope.targetList or ():
        value = target.val if isinstance(target, ast.ResTarget) else target
        for node in _walk(value):
            if isinstance(node, ast.ColumnRef):
                if any(isinstance(f, ast.A_Star) for f in node.fields or ()):
                    for use in uses.values():
                        use.selected = None
                    continue
                found = resolver.column(node)
                if found and found[0].selected is not None and found[1] not in found[0].selected:
                    found[0].selected.append(found[1])


def _conjuncts(node: Any) -> Iterator[Any]:
    if isinstance(node, ast.BoolExpr) and node.boolop == BoolExprType.AND_EXPR:
        for arg in node.args or ():
            yield from _conjuncts(arg)
    else:
        yield node


class _Resolver:
    def __init__(self, uses: dict[str, TableUse], columns_of: ColumnsOf) -> None:
        self.uses = uses
        self.columns_of = columns_of

    def column(self, node: object) -> tuple[TableUse, str] | None:
        while isinstance(node, ast.TypeCast):
            node = node.arg
        if not isinstance(node, ast.ColumnRef):
            return None
        fields: tuple[Any, ...] = node.fields or ()
        names = [str(f.sval) for f in fields if isinstance(f, ast.String)]
        if not names or len(names) != len(fields):
            return None
        if len(names) >= 2:
            use = self.uses.get(names[-2])
            return (use, names[-1]) if use else None
        if len(self.uses) == 1:
            return next(iter(self.uses.values())), names[0]
        owners = [u for u in self.uses.values() if names[0] in self.columns_of(u.name)]
        return (owners[0], names[0]) if len(owners) == 1 else None


def _is_value(node: object) -> bool:
    """A constant or parameter: something an index can be probed with."""
    while isinstance(node, ast.TypeCast):
        node = node.arg
    if isinstance(node, (ast.A_Const, ast.ParamRef)):
        return True
    if isinstance(node, ast.FuncCall):  # now(), current_date - 1, ...: no column inside
        return not any(isinstance(n, ast.ColumnRef) for n in _walk(node))
    if isinstance(node, ast.A_Expr):
        return not any(isinstance(n, ast.ColumnRef) for n in _walk(node))
    return isinstance(node, ast.SQLValueFunction)


def _is_literal(node: object) -> bool:
    while isinstance(node, ast.TypeCast):
        node = node.arg
    return isinstance(node, ast.A_Const)


def _add(items: list[str], value: str) -> None:
    if value not in items:
        items.append(value)


def _classify(term: Any, r: _Resolver) -> None:  # noqa: PLR0915
    if isinstance(term, ast.ColumnRef):  # WHERE active
        found = r.column(term)
        if found:
            _add(found[0].constant_predicates, found[1])
        return
    if isinstance(term, ast.BoolExpr) and term.boolop == BoolExprType.NOT_EXPR:
        found = r.column((term.args or (None,))[0])
        if found:
            _add(found[0].constant_predicates, f"NOT {found[1]}")
        return
    if isinstance(term, ast.NullTest):
        found = r.column(term.arg)
        if found:
            _add(found[0].constant_predicates, f"{found[1]} {deparse(term).split(' ', 1)[1]}")
        return
    if not isinstance(term, ast.A_Expr):
        return
    op = term.name[0].sval if term.name and isinstance(term.name[-1], ast.String) else ""
    op = term.name[-1].sval if term.name else ""
    left, right = r.column(term.lexpr), r.column(term.rexpr)
    if term.kind == A_Expr_Kind.AEXPR_OP and op == "=":
        if left and right:
            _add(left[0].join_columns, left[1])
            _add(right[0].join_columns, right[1])
        elif left or right:
            use, column = left or right  # type: ignore[misc]
            other = term.rexpr if left else term.lexpr
            if _is_literal(other) and _is_boolean_literal(other):
                _add(use.constant_predicates, deparse(term))
            elif _is_value(other):
                _add(use.equality, column)
        return
    if term.kind == A_Expr_Kind.AEXPR_IN and left:
        _add(left[0].equality, left[1])
        return
    if term.kind in (A_Expr_Kind.AEXPR_BETWEEN, A_Expr_Kind.AEXPR_NOT_BETWEEN) and left:
        _add(left[0].range, left[1])
        return
    if term.kind in _LIKE and left:
        pattern = term.rexpr
        if isinstance(pattern, ast.A_Const) and isinstance(pattern.val, ast.String):
            text = pattern.val.sval
            if text and text[0] not in "%_":
                _add(left[0].prefix_like, left[1])
        return
    if term.kind == A_Expr_Kind.AEXPR_OP and op in _RANGE_OPS:
        if left and not right and _is_value(term.rexpr):
            _add(left[0].range, left[1])
        elif right and not left and _is_value(term.lexpr):
            _add(right[0].range, right[1])
        return
    if term.kind == A_Expr_Kind.AEXPR_OP and op in _GIN_OPS and left:
        _add(left[0].containment, left[1])
        return
    if term.kind == A_Expr_Kind.AEXPR_OP and op == "@@":
        for side in (term.lexpr, term.rexpr):
            if isinstance(side, ast.FuncCall) and _func_name(side) == "to_tsvector":
                cols = [r.column(n) for n in _walk(side) if isinstance(n, ast.ColumnRef)]
                owners = {id(c[0]): c[0] for c in cols if c}
                if len(owners) == 1:
                    _add(next(iter(owners.values())).fulltext, deparse(side))
            else:
                found = r.column(side)
                if found:  # a stored tsvector column
                    _add(found[0].containment, found[1])


def _is_boolean_literal(node: object) -> bool:
    while isinstance(node, ast.TypeCast):
        node = node.arg
    return isinstance(node, ast.A_Const) and isinstance(node.val, ast.Boolean)


def _func_name(call: Any) -> str:
    names = call.funcname or ()
    return str(names[-1].sval) if names else ""
