"""What a query asks of each table, read from PostgreSQL's own parse tree (pglast).

For every table a statement reads (in every ``SELECT``, ``UPDATE`` or ``DELETE`` scope,
subqueries and CTEs included): the columns compared by equality, by range, sorted on,
selected, joined on; constant predicates (``active``, ``deleted_at IS NULL``) that make a
partial index; expressions compared to a value (``md5(val) = md5('...')``) that make an
expression index; JSONB containment and full-text matches that need GIN.

A relation that is not a table is traced to the tables under it, as the planner inlines it:
a view (its definition, read from the server through ``view_of``), a CTE that is not
``MATERIALIZED`` and a subquery in ``FROM``. A predicate on one of their output columns lands
on the base column it comes from. ``ORDER BY 1`` and ``ORDER BY alias`` are read through the
select list, as PostgreSQL reads them.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from pglast import ast, parser
from pglast.enums import (
    A_Expr_Kind,
    BoolExprType,
    CTEMaterialize,
    NullTestType,
    SetOperation,
    SortByDir,
)
from pglast.stream import RawStream, maybe_double_quote_name

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
    # expressions of this table's columns compared to a value: "(md5(val))", equality first
    expressions: list[str] = field(default_factory=list)
    # reached through a view, CTE or subquery named so in the statement
    through: str | None = None

    @property
    def name(self) -> str:
        """The table as SQL names it, quoted where needed: ``"Sales"."Orders"``."""
        return quote_qualified(self.schema, self.table)

    def referenced(self) -> list[str]:
        cols = self.equality + self.range + [c for c, _ in self.order_by] + self.join_columns
        return list(dict.fromkeys(cols + self.containment + self.prefix_like))


@dataclass
class ParsedQuery:
    sql: str
    kind: str  # select, update, delete, insert, other
    uses: list[TableUse] = field(default_factory=list)
    error: str | None = None
    # pglast's tree (for callers that would parse it again) and the relations it names
    tree: tuple[Any, ...] = ()
    relations: tuple[str, ...] = ()

    @property
    def tables(self) -> list[str]:
        return list(dict.fromkeys(u.name for u in self.uses))


ColumnsOf = Callable[[str], "set[str]"]
# the definition (a SELECT) of a view, by its quoted name; None for anything else
ViewOf = Callable[[str], "str | None"]

# views within views within views: deeper than this is left untraced
_MAX_VIEW_DEPTH = 8


def quote_ident(name: str) -> str:
    """``name`` as an SQL identifier: quoted when it is not lower case or is a keyword."""
    return str(maybe_double_quote_name(name))


def quote_qualified(schema: str | None, name: str) -> str:
    return f"{quote_ident(schema)}.{quote_ident(name)}" if schema else quote_ident(name)


def _no_catalog(table: str) -> set[str]:
    return set()


def _no_views(table: str) -> str | None:
    return None


# pg_stat_statements replaces the string of a typed literal (interval '1 hour') by a
# parameter and leaves the type name before it: "interval $2", which no parser accepts
_TYPED_PARAMETER = re.compile(
    r"\b(?P<type>(?:timestamp|time)(?:\s*\(\d+\))?(?:\s+with(?:out)?\s+time\s+zone)?"
    r"|interval|date|timestamptz|timetz|numeric|decimal|integer|bigint|smallint|int[248]?"
    r"|real|float[48]?|double\s+precision|boolean|bool|text|varchar|character\s+varying"
    r"|bytea|uuid|jsonb?|inet|cidr|macaddr8?|money|tsquery|tsvector|xml)\s+(?P<param>\$\d+)",
    re.IGNORECASE,
)


def plannable(sql: str) -> str:
    """``sql`` with pg_stat_statements' ``TYPE $n`` (a normalised typed literal) written as
    ``$n::TYPE``, which the server plans (pglast's parser accepts both; PostgreSQL only the
    second). A type name right before a parameter is never valid SQL otherwise."""
    if "$" not in sql:
        return sql
    return _TYPED_PARAMETER.sub(lambda m: f"{m['param']}::{' '.join(m['type'].split())}", sql)


def parse_query(
    sql: str, columns_of: ColumnsOf = _no_catalog, view_of: ViewOf = _no_views
) -> ParsedQuery:
    """Parse ``sql``; ``columns_of(table)`` resolves unqualified columns in joins and
    ``view_of(name)`` gives a view's definition, so its predicates reach its tables."""
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
    parsed = ParsedQuery(sql, kind, tree=tuple(statements), relations=_relations(statements, True))
    context = _Context(columns_of, view_of, _ctes(stmt))
    for scope in _scopes(stmt):
        parsed.uses.extend(_scope_uses(scope, context)[0])
    return parsed


@lru_cache(maxsize=4096)
def tables_of(sql: str, quoted: bool = False) -> tuple[str, ...]:
    """Names of the relations a statement reads or writes (empty when unparseable): as
    written, or quoted for SQL (``quoted=True``). CTE names are not relations."""
    try:
        statements = parser.parse_sql(sql)
    except Exception:
        return ()
    return _relations(statements, quoted)


def _relations(statements: Any, quoted: bool) -> tuple[str, ...]:
    ctes = {
        str(c.ctename)
        for n in _walk(statements)
        if isinstance(n, ast.WithClause)
        for c in n.ctes or ()
    }
    found: list[str] = []
    for node in _walk(statements):
        if isinstance(node, ast.RangeVar):
            if not node.schemaname and node.relname in ctes:
                continue
            if quoted:
                name = quote_qualified(node.schemaname, str(node.relname))
            else:
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


def _ctes(stmt: Any) -> dict[str, Any]:
    """The statement's CTEs the planner inlines into the query that names them (all but
    ``MATERIALIZED`` and recursive ones), by name."""
    found: dict[str, Any] = {}
    for node in _walk(stmt):
        if isinstance(node, ast.WithClause) and not node.recursive:
            for cte in node.ctes or ():
                if cte.ctematerialized != CTEMaterialize.CTEMaterializeAlways:
                    found[str(cte.ctename)] = cte.ctequery
    return found


@dataclass
class _Context:
    columns_of: ColumnsOf
    view_of: ViewOf
    ctes: dict[str, Any]
    depth: int = 0


# A relation of a FROM list: a table, or a derived one (view, CTE, subquery) whose output
# columns map to (table use, base column)
_Derived = dict[str, tuple[TableUse, str]]


def _from_items(from_items: object) -> Iterator[tuple[Any, list[Any]]]:
    """Relations of a FROM list (tables and subqueries) with the JOIN ... ON conditions met
    on the way."""
    items: Any = from_items or ()
    for item in items:
        if isinstance(item, (ast.RangeVar, ast.RangeSubselect)):
            yield item, []
        elif isinstance(item, ast.JoinExpr):
            quals = [item.quals] if item.quals is not None else []
            first = True
            for pair in (item.larg, item.rarg):
                for rv, inner in _from_items((pair,)):
                    yield rv, inner + (quals if first else [])
                    first = False


def _derived_body(item: Any, context: _Context) -> tuple[str, Any] | None:
    """(alias, SELECT) when ``item`` is a subquery, an inlined CTE or a view."""
    if isinstance(item, ast.RangeSubselect):
        if item.alias is None or item.lateral:
            return None
        return str(item.alias.aliasname), item.subquery
    alias = str(item.alias.aliasname) if item.alias else str(item.relname)
    if not item.schemaname and item.relname in context.ctes:
        return alias, context.ctes[str(item.relname)]
    definition = context.view_of(quote_qualified(item.schemaname, str(item.relname)))
    if definition is None:
        return None
    try:
        return alias, parser.parse_sql(definition)[0].stmt
    except Exception:  # a definition pglast cannot read: the view stays untraced
        return None


def _trace(body: Any, context: _Context) -> tuple[list[TableUse], _Derived]:
    """The tables under a derived relation (with its own predicates on them) and where each
    of its output columns comes from. Set operations and deep nesting stay untraced."""
    if (
        not isinstance(body, ast.SelectStmt)
        or body.op != SetOperation.SETOP_NONE
        or context.depth >= _MAX_VIEW_DEPTH
    ):
        return [], {}
    inner = _Context(context.columns_of, context.view_of, context.ctes, context.depth + 1)
    uses, resolver = _scope_uses(body, inner)
    mapping: _Derived = {}
    for target in body.targetList or ():
        value = target.val
        if isinstance(value, ast.ColumnRef) and any(
            isinstance(f, ast.A_Star) for f in value.fields or ()
        ):
            qualifier = [str(f.sval) for f in value.fields or () if isinstance(f, ast.String)]
            for alias, relation in resolver.relations.items():
                if qualifier and qualifier[-1] != alias:
                    continue
                mapping.update(resolver.output_columns(relation))
            continue
        found = resolver.column(value)
        if found is None:
            continue
        name = str(target.name) if target.name else found[1]
        mapping[name] = found
    return uses, mapping


def _scope_uses(scope: Any, context: _Context) -> tuple[list[TableUse], _Resolver]:
    conditions: list[Any] = []
    if isinstance(scope, ast.SelectStmt):
        items = list(_from_items(scope.fromClause))
    elif isinstance(scope, ast.UpdateStmt):
        items = [(scope.relation, []), *list(_from_items(scope.fromClause))]
    else:
        items = [(scope.relation, []), *list(_from_items(getattr(scope, "usingClause", None)))]
    relations: dict[str, TableUse | _Derived] = {}
    found: list[TableUse] = []
    for item, quals in items:
        conditions.extend(quals)
        derived = _derived_body(item, context)
        if derived is not None:
            alias, body = derived
            base, mapping = _trace(body, context)
            for use in base:
                use.through = use.through or alias
            found.extend(base)
            relations[alias] = mapping
        elif isinstance(item, ast.RangeVar):
            alias = str(item.alias.aliasname if item.alias else item.relname)
            use = TableUse(item.schemaname, str(item.relname), alias)
            relations[alias] = use
            found.append(use)
    resolver = _Resolver(relations, context.columns_of)
    if not relations:
        return [], resolver
    if scope.whereClause is not None:
        conditions.append(scope.whereClause)
    for condition in conditions:
        for term in _conjuncts(condition):
            _classify(term, resolver)
    if isinstance(scope, ast.SelectStmt):
        for sort in scope.sortClause or ():
            column = resolver.column(_sort_target(sort.node, scope.targetList or ()))
            if column:
                use, name = column
                use.order_by.append((name, sort.sortby_dir == SortByDir.SORTBY_DESC))
        _selected(scope, found, resolver)
    else:
        for use in found:
            use.selected = None
    return found, resolver


def _sort_target(node: Any, targets: Any) -> Any:
    """What ``ORDER BY`` sorts on: ``ORDER BY 2`` is the second output column, ``ORDER BY
    alias`` the output column named so (PostgreSQL's rule: output names first)."""
    if isinstance(node, ast.A_Const) and isinstance(node.val, ast.Integer):
        position = int(node.val.ival or 0)
        if 1 <= position <= len(targets):
            return targets[position - 1].val
        return None
    fields = node.fields or () if isinstance(node, ast.ColumnRef) else ()
    if len(fields) == 1:
        name = fields[0]
        if isinstance(name, ast.String):
            for target in targets:
                if target.name == name.sval:
                    return target.val
    return node


def _selected(scope: Any, uses: list[TableUse], resolver: _Resolver) -> None:
    for target in scope.targetList or ():
        value = target.val if isinstance(target, ast.ResTarget) else target
        for node in _walk(value):
            if isinstance(node, ast.ColumnRef):
                if any(isinstance(f, ast.A_Star) for f in node.fields or ()):
                    for use in uses:
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
    def __init__(self, relations: dict[str, TableUse | _Derived], columns_of: ColumnsOf) -> None:
        self.relations = relations
        self.columns_of = columns_of

    def output_columns(self, relation: TableUse | _Derived) -> _Derived:
        if isinstance(relation, TableUse):
            return {c: (relation, c) for c in self.columns_of(relation.name)}
        return dict(relation)

    def _lookup(self, relation: TableUse | _Derived, column: str) -> tuple[TableUse, str] | None:
        if isinstance(relation, TableUse):
            return relation, column
        return relation.get(column)

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
            relation = self.relations.get(names[-2])
            return self._lookup(relation, names[-1]) if relation is not None else None
        if len(self.relations) == 1:
            return self._lookup(next(iter(self.relations.values())), names[0])
        owners = [
            found
            for relation in self.relations.values()
            if (found := self._lookup(relation, names[0])) is not None
            and (not isinstance(relation, TableUse) or names[0] in self.columns_of(relation.name))
        ]
        return owners[0] if len(owners) == 1 else None

    def expression(self, node: object) -> tuple[TableUse, str] | None:
        """(table use, ``(expr)``) for an expression over the columns of one table, with
        those columns written bare, as an index definition names them."""
        if not isinstance(node, (ast.FuncCall, ast.A_Expr, ast.CoalesceExpr)):
            return None
        tree = copy.deepcopy(node)
        owner: TableUse | None = None
        for ref in [n for n in _walk(tree) if isinstance(n, ast.ColumnRef)]:
            found = self.column(ref)
            if found is None or (owner is not None and found[0] is not owner):
                return None
            owner = found[0]
            ref.fields = (ast.String(found[1]),)
        if owner is None or any(isinstance(n, (ast.ParamRef, ast.SubLink)) for n in _walk(tree)):
            return None
        return owner, f"({deparse(tree)})"


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
            _add(found[0].constant_predicates, quote_ident(found[1]))
        return
    if isinstance(term, ast.BoolExpr) and term.boolop == BoolExprType.NOT_EXPR:
        found = r.column((term.args or (None,))[0])
        if found:
            _add(found[0].constant_predicates, f"NOT {quote_ident(found[1])}")
        return
    if isinstance(term, ast.NullTest):
        found = r.column(term.arg)
        if found:
            test = "IS NULL" if term.nulltesttype == NullTestType.IS_NULL else "IS NOT NULL"
            _add(found[0].constant_predicates, f"{quote_ident(found[1])} {test}")
        return
    if not isinstance(term, ast.A_Expr):
        return
    op = term.name[0].sval if term.name and isinstance(term.name[-1], ast.String) else ""
    op = term.name[-1].sval if term.name else ""
    left, right = r.column(term.lexpr), r.column(term.rexpr)
    if (
        term.kind == A_Expr_Kind.AEXPR_OP
        and (op == "=" or op in _RANGE_OPS)
        and not left
        and not right
    ):
        for side, other in ((term.lexpr, term.rexpr), (term.rexpr, term.lexpr)):
            found = r.expression(side)
            if found and _is_value(other):  # md5(val) = md5('...'): an expression index
                _add(found[0].expressions, found[1])
        return
    if term.kind == A_Expr_Kind.AEXPR_OP and op == "=":
        if left and right:
            _add(left[0].join_columns, left[1])
            _add(right[0].join_columns, right[1])
        elif left or right:
            use, column = left or right  # type: ignore[misc]
            other = term.rexpr if left else term.lexpr
            if _is_literal(other) and _is_boolean_literal(other):
                _add(use.constant_predicates, f"{quote_ident(column)} = {deparse(other)}")
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
