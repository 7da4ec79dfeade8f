"""May a statement be EXPLAINed, and may EXPLAIN ANALYZE run it? One answer for observe and doctor.

``EXPLAIN`` alone only plans, but the text after it is the user's: several statements in one
string (``select 1; commit; insert ...``) would run the rest, and ``EXPLAIN ANALYZE`` really
runs the statement, with every function it calls. So:

- EXPLAIN is allowed for exactly one SELECT/INSERT/UPDATE/DELETE/MERGE statement, as
  PostgreSQL's own parser (pglast) reads it; anything else never reaches the server.
- EXPLAIN ANALYZE is allowed only for a plain SELECT: no data-modifying CTE, no row lock, no
  ``INTO`` (and values for its ``$n`` parameters, which the caller has or not), and, checked
  on the server
  (:func:`volatile_calls_sql`), no volatile function reachable from it: called by name (any
  overload), behind an operator or an aggregate, or inside a view or a row-security policy of
  a relation it reads. Volatile functions are the ones that may change something or take a
  lock that outlives the rollback (``nextval``, ``pg_advisory_lock``,
  ``pg_terminate_backend``, user functions that write). The transaction must also say it is
  read-only (``SHOW transaction_read_only``) and be rolled back by the caller.

A function that is declared STABLE or IMMUTABLE but has side effects is the declaration's
lie: it is trusted, as PostgreSQL's planner trusts it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from typing import Any, Literal

from pglast import ast, parser
from pglast.visitors import Visitor

EXPLAINABLE_KINDS = frozenset({"SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"})


class NotAnalyzed(str, Enum):
    """Why EXPLAIN ANALYZE was not run (the plan is then a plain EXPLAIN, or none)."""

    UNPARSEABLE = "PostgreSQL's parser cannot read it"
    SEVERAL_STATEMENTS = "the text holds several statements; give one at a time"
    NOT_EXPLAINABLE = "only SELECT, INSERT, UPDATE, DELETE and MERGE statements can be planned"
    NOT_SELECT = "it is not a SELECT, and ANALYZE would run the write"
    MODIFYING_CTE = "a WITH query in it modifies data"
    ROW_LOCK = "it locks rows (FOR UPDATE/SHARE)"
    SELECT_INTO = "SELECT INTO would create a table"
    PARAMETERS = "it has $n parameters, which ANALYZE would need values for"
    VOLATILE = "it calls volatile functions"
    NOT_READ_ONLY = "the server did not confirm a read-only transaction"


@dataclass(frozen=True)
class StatementSafety:
    """What the parse tree says about running EXPLAIN (ANALYZE) on one statement text."""

    explainable: bool
    # None: the parse tree allows ANALYZE (the server check still has the last word)
    not_analyzed: NotAnalyzed | None
    kind: str = ""  # the parse node's name (SelectStmt, DoStmt, ...), "" when unparseable
    statement: str = ""  # the one statement, without surrounding semicolons and comments
    parameters: int = 0  # the highest $n it uses
    functions: frozenset[str] = frozenset()  # names of the functions it calls, lower case
    operators: frozenset[str] = frozenset()  # operator symbols it uses
    relations: frozenset[str] = frozenset()  # relations it reads, as to_regclass() text
    parse_error: str = ""  # the parser's message when it could not read the text

    @property
    def is_plain_select(self) -> bool:
        """No reason in the parse tree not to ANALYZE (volatility is checked on the server)."""
        return self.not_analyzed is None

    @property
    def refusal(self) -> str | None:
        """Why EXPLAIN itself is refused, or None when it may be sent."""
        if self.explainable:
            return None
        if self.not_analyzed is NotAnalyzed.NOT_EXPLAINABLE and self.kind:
            return f"{self.not_analyzed.value} (this is {_kind_name(self.kind)})"
        if self.parse_error:
            return f"{NotAnalyzed.UNPARSEABLE.value}: {self.parse_error}"
        return (self.not_analyzed or NotAnalyzed.UNPARSEABLE).value

    def server_params(self) -> dict[str, list[str]]:
        """The parameters of :func:`volatile_calls_sql`."""
        return {
            "functions": sorted(self.functions),
            "operators": sorted(self.operators),
            "relations": sorted(self.relations),
        }


def _kind_name(kind: str) -> str:
    return kind.removesuffix("Stmt").upper() if kind.endswith("Stmt") else kind


class _Facts(Visitor):
    """What makes a SELECT unsafe to run for real, anywhere in its tree (subqueries, CTEs)."""

    def __init__(self) -> None:
        super().__init__()
        self.functions: set[str] = set()
        self.operators: set[str] = set()
        self.relations: set[str] = set()
        self.parameters = 0
        self.unsafe: NotAnalyzed | None = None

    def visit_FuncCall(self, ancestors: object, node: ast.FuncCall) -> None:
        if node.funcname:
            self.functions.add(_name(node.funcname[-1]).lower())

    def visit_A_Expr(self, ancestors: object, node: ast.A_Expr) -> None:
        if node.name:
            self.operators.add(_name(node.name[-1]))

    def visit_RangeVar(self, ancestors: object, node: ast.RangeVar) -> None:
        parts = [p for p in (node.schemaname, node.relname) if p]
        self.relations.add(".".join('"' + p.replace('"', '""') + '"' for p in parts))

    def visit_ParamRef(self, ancestors: object, node: ast.ParamRef) -> None:
        self.parameters = max(self.parameters, int(node.number or 0))

    def visit_SelectStmt(self, ancestors: object, node: ast.SelectStmt) -> None:
        if node.lockingClause:
            self.unsafe = self.unsafe or NotAnalyzed.ROW_LOCK
        if node.intoClause:
            self.unsafe = self.unsafe or NotAnalyzed.SELECT_INTO

    def visit_CommonTableExpr(self, ancestors: object, node: ast.CommonTableExpr) -> None:
        if type(node.ctequery).__name__ != "SelectStmt":
            self.unsafe = self.unsafe or NotAnalyzed.MODIFYING_CTE


def _name(node: object) -> str:
    return str(getattr(node, "sval", node))


def safety_of_tree(tree: Sequence[Any], text: str = "") -> StatementSafety:
    """The verdict on ``tree`` (``pglast.parser.parse_sql(text)``), for callers parsing anyway."""
    if len(tree) != 1:  # several statements: EXPLAIN of the first would run the others
        reason = NotAnalyzed.SEVERAL_STATEMENTS if tree else NotAnalyzed.NOT_EXPLAINABLE
        return StatementSafety(False, reason)
    raw = tree[0]
    stmt = raw.stmt
    kind = type(stmt).__name__ if stmt is not None else ""
    statement = _statement_text(text, raw)
    if kind not in EXPLAINABLE_KINDS:
        return StatementSafety(False, NotAnalyzed.NOT_EXPLAINABLE, kind, statement)
    facts = _Facts()
    facts(stmt)
    not_analyzed = facts.unsafe
    if kind != "SelectStmt":
        not_analyzed = NotAnalyzed.NOT_SELECT
    return StatementSafety(
        True,
        not_analyzed,
        kind,
        statement,
        facts.parameters,
        frozenset(facts.functions),
        frozenset(facts.operators),
        frozenset(facts.relations),
    )


def _statement_text(text: str, raw: Any) -> str:
    """The statement alone: pglast's locations are byte offsets into the UTF-8 text."""
    data = text.encode()
    start = int(raw.stmt_location or 0)
    end = start + int(raw.stmt_len) if raw.stmt_len else len(data)
    return data[start:end].decode().strip()


@lru_cache(maxsize=4096)
def statement_safety(text: str) -> StatementSafety:
    """May ``text`` (raw SQL, ``$n`` parameters allowed) be EXPLAINed, and ANALYZEd?"""
    try:
        tree = parser.parse_sql(text)
    except Exception as exc:  # pglast.parser.ParseError, or anything the parser rejects
        error = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return StatementSafety(False, NotAnalyzed.UNPARSEABLE, parse_error=error)
    return safety_of_tree(tree, text)


# Every pg_proc row the statement may reach, and the names of the volatile ones among them.
# From the names it calls (any overload: the one the server picks is not known here), the
# operators it uses, and the relations it reads: through views' rewrite rules and row-security
# policies (pg_depend) down to functions, operators and further relations.
_VOLATILE_CALLS = """
WITH RECURSIVE reached(classid, objid) AS (
    SELECT CAST('pg_proc' AS regclass), p.oid FROM pg_proc p
    WHERE p.proname = ANY(CAST({functions} AS text[]))
  UNION
    SELECT CAST('pg_operator' AS regclass), o.oid FROM pg_operator o
    WHERE o.oprname = ANY(CAST({operators} AS text[]))
  UNION
    SELECT CAST('pg_class' AS regclass), CAST(to_regclass(r.name) AS oid)
    FROM unnest(CAST({relations} AS text[])) AS r(name) WHERE to_regclass(r.name) IS NOT NULL
  UNION
    SELECT next.classid, next.objid FROM reached,
    LATERAL (
        SELECT d.refclassid, d.refobjid FROM pg_depend d
        WHERE reached.classid = CAST('pg_class' AS regclass)
          AND d.classid = CAST('pg_rewrite' AS regclass)
          AND d.objid IN (SELECT w.oid FROM pg_rewrite w WHERE w.ev_class = reached.objid)
      UNION ALL
        SELECT d.refclassid, d.refobjid FROM pg_depend d
        WHERE reached.classid = CAST('pg_class' AS regclass)
          AND d.classid = CAST('pg_policy' AS regclass)
          AND d.objid IN (SELECT y.oid FROM pg_policy y WHERE y.polrelid = reached.objid)
      UNION ALL
        SELECT CAST('pg_proc' AS regclass), CAST(o.oprcode AS oid) FROM pg_operator o
        WHERE reached.classid = CAST('pg_operator' AS regclass) AND o.oid = reached.objid
      UNION ALL
        SELECT CAST('pg_proc' AS regclass), f.oid FROM pg_aggregate a,
        LATERAL unnest(ARRAY[CAST(a.aggtransfn AS oid), CAST(a.aggfinalfn AS oid),
                             CAST(a.aggcombinefn AS oid), CAST(a.aggmtransfn AS oid),
                             CAST(a.aggmfinalfn AS oid)]) AS f(oid)
        WHERE reached.classid = CAST('pg_proc' AS regclass) AND a.aggfnoid = reached.objid
          AND f.oid <> 0
    ) AS next(classid, objid)
)
SELECT COALESCE(array_agg(DISTINCT CAST(p.proname AS text)), CAST('{{}}' AS text[]))
FROM reached JOIN pg_proc p ON reached.classid = CAST('pg_proc' AS regclass)
  AND p.oid = reached.objid
WHERE p.provolatile = 'v'
"""

ParamStyle = Literal["named", "pyformat"]


def volatile_calls_sql(paramstyle: ParamStyle) -> str:
    """One query returning one row: a ``text[]`` of the volatile functions the statement may
    reach on this server (empty: none). Its parameters are :meth:`StatementSafety.server_params`;
    ``named`` is SQLAlchemy's ``text()`` style (``:functions``), ``pyformat`` psycopg's."""
    names = ("functions", "operators", "relations")
    if paramstyle == "named":
        return _VOLATILE_CALLS.format(**{n: f":{n}" for n in names})
    return _VOLATILE_CALLS.format(**{n: f"%({n})s" for n in names})


def analyze_refused_on_server(read_only: object, volatile: object) -> str | None:
    """Why the server's answers forbid ANALYZE (``SHOW transaction_read_only``, then the
    row of :func:`volatile_calls_sql`), or None when it may run."""
    if read_only != "on":
        return NotAnalyzed.NOT_READ_ONLY.value
    names = sorted(str(n) for n in volatile) if isinstance(volatile, (list, tuple)) else None
    if names is None:  # not the text[] the query returns: refuse rather than guess
        return NotAnalyzed.VOLATILE.value
    if names:
        return f"{NotAnalyzed.VOLATILE.value}: " + ", ".join(f"{n}()" for n in names)
    return None
