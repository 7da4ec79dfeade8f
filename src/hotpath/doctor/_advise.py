"""``advise_indexes``: candidate indexes from the workload's parse trees, chosen with HypoPG.

1. Each statement is parsed (pglast) into per-table predicates, views, inlined CTEs and
   subqueries traced to their tables; candidates follow the rules of index design: equality
   columns first (most selective first), then one range column, or the ORDER BY columns;
   every single column; partial (constant predicates), covering (``INCLUDE``), expression
   (``md5(val) = ...``), GIN for JSONB containment and full text, BRIN for large append-only
   time columns. Never more key columns than the server allows (``max_index_keys``).
   Candidates go only on the tables ``tables`` admits (``--include/--exclude``; doctor's
   ``missing_indexes`` asks for the tables it flagged).
2. Candidates an existing index already serves are dropped, with the index named.
3. With HypoPG, candidates are evaluated *together*, as the planner would use them: per
   group of statements on the same tables, every single-column candidate exists at once and
   each statement is planned; then the wider ones are added and kept only where they cut the
   cost again. So a join that needs three indexes at once finds all three. A statement whose
   cost falls by ``min_gain`` (more on write-heavy tables: the workload's writes and the
   table's real write rate from pg_stat_user_tables) keeps the indexes its plan used. Then
   across the workload, all kept indexes exist together and each is dropped when its
   statements stay as cheap without it (another serves them), narrowest and least used
   first. Every rejection, and every statement left without an index, says why, with numbers.
4. Without HypoPG: the heuristic candidates, marked unvalidated, and how to install HypoPG.

The DDL runs as printed: identifiers are quoted where SQL needs it, and on a partitioned
table (where ``CREATE INDEX CONCURRENTLY`` fails) it is one index per partition built
concurrently and attached to an index created ``ON ONLY`` the parent.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from ..plans import StatementSafety, safety_of_tree, statement_safety
from ..plans._flags import plan_root, walk
from ._context import display_name
from ._ddl import PARTITIONED_NOTE, index_statements
from ._errors import DoctorError
from ._session import Session
from ._sources import TableFilter
from ._sqlparse import TableUse, parse_query, quote_ident
from ._workload import WorkloadQuery, from_file, from_list, from_statements, hidden_statements

MIN_TABLE_ROWS = 1_000
BRIN_MIN_ROWS = 100_000
# hypothetical indexes alive at once while planning: the planner looks at every index of a
# table for every statement on it, so a batch is bounded to keep each plan quick
MAX_HYPOTHETICAL = 200
# a wider index (or one more index) is worth it only if, without it, the statement's cost
# rises by more than half again, and by at least one random page read (random_page_cost)
_RELATIVE_STEP = 0.5
_MIN_STEP = 4.0
_PARAM = re.compile(r"\$\d+")
_TIME_TYPES = ("timestamp with time zone", "timestamp without time zone", "date")
HYPOPG_HINT = (
    "install HypoPG to validate these: apt-get install postgresql-{major}-hypopg (or "
    "your platform's package), then CREATE EXTENSION hypopg; in this database"
)


@dataclass(frozen=True)
class Candidate:
    """A possible index. ``table``, ``columns`` and ``include`` are SQL (quoted where
    needed); an expression column is ``(expr)``, a descending one ``col DESC``."""

    table: str
    columns: tuple[str, ...]
    method: str = "btree"
    include: tuple[str, ...] = ()
    where: str | None = None
    # how it was derived, a label only: the same index reached two ways (a lone range
    # column is both the "range" and a single-column candidate) is one candidate, or the
    # two would be planned side by side and the unused twin rejected in its place
    kind: str = field(default="composite", compare=False)

    def definition(self, concurrently: bool = True) -> str:
        return f"CREATE INDEX{' CONCURRENTLY' if concurrently else ''} ON {self.table}{self.body};"

    @property
    def body(self) -> str:
        """What follows ``ON table``: `` USING gin (attrs)``, `` (a, b) INCLUDE (c) WHERE ...``
        (the form :func:`._ddl.index_statements` builds partitioned tables' DDL from)."""
        using = "" if self.method == "btree" else f" USING {self.method}"
        sql = f"{using} ({', '.join(self.columns)})"
        if self.include:
            sql += f" INCLUDE ({', '.join(self.include)})"
        if self.where:
            sql += f" WHERE {self.where}"
        return sql

    @property
    def name_parts(self) -> tuple[str, ...]:
        """The key columns as words of an index name (``table_col_idx``): ``"CustomerId"``
        -> ``CustomerId``, ``(md5(val))`` -> ``md5_val``."""
        words = (re.sub(r"\W+", "_", _bare(k)).strip("_") for k in self.key_names)
        return tuple(w for w in words if w) or ("expr",)

    @property
    def key_names(self) -> tuple[str, ...]:
        return tuple(c.removesuffix(" DESC") for c in self.columns)

    @property
    def narrow(self) -> bool:
        """One key and nothing else: evaluated first, all of a group's at once."""
        return len(self.columns) == 1 and not self.include and not self.where


@dataclass
class QueryEffect:
    sql: str
    cost_before: float
    cost_after: float
    used: bool

    @property
    def gain(self) -> float:
        if not self.used or self.cost_before <= 0:
            return 0.0
        return max(0.0, 1 - self.cost_after / self.cost_before)


@dataclass
class IndexSuggestion:
    """A suggested index: its DDL, whether HypoPG validated it, and what it buys."""

    candidate: Candidate
    validated: bool
    best_gain: float | None = None
    time_saved_ms: float | None = None
    effects: list[QueryEffect] = field(default_factory=list)
    note: str = ""
    # on a partitioned table: the statements that build it without blocking writes
    script: tuple[str, ...] = ()
    # other suggested indexes the same statements' plans use together with this one
    together: tuple[str, ...] = ()

    @property
    def ddl(self) -> str:
        return "\n".join(self.script) if self.script else self.candidate.definition()

    def to_dict(self) -> dict[str, Any]:
        return {
            "ddl": self.ddl,
            "table": self.candidate.table,
            "method": self.candidate.method,
            "columns": list(self.candidate.columns),
            "include": list(self.candidate.include),
            "where": self.candidate.where,
            "kind": self.candidate.kind,
            "validated": self.validated,
            "best_gain": self.best_gain,
            "time_saved_ms": self.time_saved_ms,
            "together_with": list(self.together),
            "queries": [
                {
                    "sql": e.sql,
                    "cost_before": e.cost_before,
                    "cost_after": e.cost_after,
                    "gain": round(e.gain, 4),
                }
                for e in self.effects
                if e.used
            ],
            "note": self.note,
        }


@dataclass(frozen=True)
class Rejection:
    ddl: str
    reason: str


@dataclass
class IndexAdvice:
    """The advisor's answer: suggestions best first, every rejection, every statement that
    was not analysed (and why), every analysed one no suggestion serves (and why)."""

    suggestions: list[IndexSuggestion] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    unanalysed: list[tuple[str, str]] = field(default_factory=list)
    hypopg: bool = False
    hint: str | None = None
    queries: int = 0
    unserved: list[tuple[str, str]] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": "hotpath.advise/1",
            "hypopg": self.hypopg,
            "hint": self.hint,
            "notices": list(self.notices),
            "queries": self.queries,
            "suggestions": [s.to_dict() for s in self.suggestions],
            "rejected": [{"ddl": r.ddl, "reason": r.reason} for r in self.rejected],
            "unanalysed": [{"sql": q, "reason": why} for q, why in self.unanalysed],
            "unserved": [{"sql": q, "reason": why} for q, why in self.unserved],
        }


@dataclass
class _Table:
    name: str
    relname: str
    oid: int
    partitioned: bool
    rows: float
    rows_written: int  # pg_stat_user_tables: inserted + updated + deleted since stats reset
    rows_read: int  # pg_stat_user_tables: by sequential scans + fetched by index scans
    changes: int  # rows updated or deleted: an append-only table has (almost) none
    columns: dict[str, str]  # name -> type
    distinct: dict[str, float]
    correlation: dict[str, float]
    indexes: list[
        tuple[str, str, tuple[str, ...], tuple[str, ...], str | None]
    ]  # name, am, keys, include, pred


class _Unusable(Exception):
    """A statement names a relation this role may not look up: skipped with the reason."""


@dataclass(eq=False)
class _Statement:
    query: WorkloadQuery
    kind: str
    safety: StatementSafety
    base: float
    uses: list[TableUse] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    best: float = 0.0
    chosen: frozenset[Candidate] = frozenset()

    @property
    def weight(self) -> float:
        return self.query.weight if self.query.weight is not None else self.base

    def gain(self, cost: float) -> float:
        return max(0.0, 1 - cost / self.base) if self.base > 0 else 0.0


def _matters(without: float, with_it: float) -> bool:
    """Does an index that takes a statement from ``without`` to ``with_it`` earn its place?"""
    step = without - with_it
    return step > _RELATIVE_STEP * with_it and step >= _MIN_STEP


def advise_indexes(
    url: str,
    queries: list[str] | list[WorkloadQuery] | str | Path | None = None,
    min_gain: float = 0.3,
    *,
    use_hypopg: bool = True,
    statement_timeout_ms: int = 10_000,
    tables: TableFilter | None = None,
) -> IndexAdvice:
    """Indexes for ``queries`` (a list of statements, a ``.sql`` path, or None for the
    database's pg_stat_statements workload). ``min_gain`` is the cost reduction (0-1) an index
    must bring to some statement to be kept; ``tables`` (``--include/--exclude``) limits the
    tables indexes are proposed on."""
    if not 0 < min_gain < 1:
        raise DoctorError(f"min_gain={min_gain}: give a fraction between 0 and 1, like 0.3")
    with Session(url, statement_timeout_ms=statement_timeout_ms) as session:
        notices: list[str] = []
        if queries is None:
            workload = from_statements(session)
            hidden = hidden_statements(session)
            if hidden is not None:
                notices.append(hidden)
        elif isinstance(queries, Path) or (isinstance(queries, str) and queries.endswith(".sql")):
            workload = from_file(queries)
        elif isinstance(queries, str):
            workload = from_list([queries])
        elif all(isinstance(q, WorkloadQuery) for q in queries):
            workload = [q for q in queries if isinstance(q, WorkloadQuery)]
        else:
            workload = from_list([str(q) for q in queries])
        advisor = _Advisor(session, min_gain, use_hypopg, tables or TableFilter())
        advisor.advice.notices.extend(notices)
        return advisor.run(workload)


class _Advisor:
    def __init__(
        self, session: Session, min_gain: float, use_hypopg: bool, tables: TableFilter
    ) -> None:
        self.session = session
        self.wanted = tables
        self.min_gain = min_gain
        caps = session.capabilities
        self.hypopg = use_hypopg and "hypopg" in caps.extensions
        self.tables: dict[str, _Table | None] = {}
        self.views: dict[str, str | None] = {}
        self.write_calls: dict[str, int] = {}
        self.read_calls: dict[str, int] = {}
        self.max_keys = int(self.session.row("SHOW max_index_keys")["max_index_keys"])
        self.advice = IndexAdvice(hypopg=self.hypopg)
        self.brins: dict[tuple[str, str], Candidate] = {}
        self.rejected_ddls: set[str] = set()
        if not self.hypopg:
            self.advice.hint = HYPOPG_HINT.format(major=caps.server_version // 10000)

    # -- catalog -----------------------------------------------------------------------

    def _lookup(self, sql: str, name: str) -> list[dict[str, Any]]:
        """A catalog query on relation ``name`` (quoted SQL); a schema this role may not use
        makes the statement naming it unusable, not the run."""
        try:
            return self.session.rows(sql, (name,))
        except psycopg.errors.InsufficientPrivilege as exc:
            schema = name.rsplit(".", 1)[0] if "." in name else "its schema"
            raise _Unusable(
                f"{_line(exc)}: this role ({self.session.capabilities.user}) cannot look up "
                f"{name}; GRANT USAGE ON SCHEMA {schema} TO {self.session.capabilities.user}; "
                "to include it"
            ) from None

    def view_of(self, name: str) -> str | None:
        if name not in self.views:
            rows = self._lookup(
                "SELECT pg_get_viewdef(c.oid) AS body FROM pg_class c"
                " WHERE c.oid = to_regclass(%s) AND c.relkind = 'v'",
                name,
            )
            self.views[name] = str(rows[0]["body"]) if rows else None
        return self.views[name]

    def table(self, name: str) -> _Table | None:
        if name in self.tables:
            return self.tables[name]
        rows = self._lookup(
            "SELECT c.oid, n.nspname, c.relname, c.relkind = 'p' AS partitioned,"
            " CASE WHEN c.relkind = 'p' THEN (SELECT coalesce(sum(greatest(p.reltuples, 0)), 0)"
            "  FROM pg_partition_tree(c.oid) t JOIN pg_class p ON p.oid = t.relid"
            "  WHERE t.isleaf) ELSE c.reltuples END::float8 AS rows,"
            " coalesce(s.n_tup_ins + s.n_tup_upd + s.n_tup_del, 0) AS written,"
            " coalesce(s.n_tup_upd + s.n_tup_del, 0) AS changes,"
            " coalesce(s.seq_tup_read, 0) + coalesce(s.idx_tup_fetch, 0) AS read"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid"
            " WHERE c.oid = to_regclass(%s) AND c.relkind IN ('r', 'p', 'm')",
            name,
        )
        if not rows:
            self.tables[name] = None
            return None
        r = rows[0]
        columns = {
            str(c["attname"]): str(c["typ"])
            for c in self.session.rows(
                "SELECT attname, format_type(atttypid, atttypmod) AS typ FROM pg_attribute"
                " WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped",
                (r["oid"],),
            )
        }
        stats = self.session.rows(
            "SELECT attname, max(n_distinct) AS n_distinct, max(correlation) AS correlation"
            " FROM pg_stats WHERE schemaname = %s AND tablename = %s GROUP BY attname",
            (r["nspname"], r["relname"]),
        )
        rows_n = max(0.0, float(r["rows"]))
        distinct = {
            str(s["attname"]): float(s["n_distinct"])
            if s["n_distinct"] >= 0
            else -float(s["n_distinct"]) * rows_n
            for s in stats
            if s["n_distinct"] is not None
        }
        correlation = {str(s["attname"]): abs(float(s["correlation"] or 0)) for s in stats}
        indexes = []
        for i in self.session.rows(
            "SELECT ic.relname, am.amname, i.indnkeyatts,"
            " pg_get_expr(i.indpred, i.indrelid) AS pred,"
            " array(SELECT pg_get_indexdef(i.indexrelid, k, true)"
            "  FROM generate_series(1, i.indnatts) k) AS cols"
            " FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid"
            " JOIN pg_am am ON am.oid = ic.relam WHERE i.indrelid = %s"
            " AND (i.indisvalid OR ic.relkind = 'I')",
            (r["oid"],),
        ):
            cols = [_bare(c) for c in i["cols"]]
            keys = int(i["indnkeyatts"])
            indexes.append(
                (
                    str(i["relname"]),
                    str(i["amname"]),
                    tuple(cols[:keys]),
                    tuple(cols[keys:]),
                    i["pred"],
                )
            )
        table = _Table(
            display_name(r["nspname"], r["relname"]),
            str(r["relname"]),
            int(r["oid"]),
            bool(r["partitioned"]),
            rows_n,
            int(r["written"]),
            int(r["read"]),
            int(r["changes"]),
            columns,
            distinct,
            correlation,
            indexes,
        )
        self.tables[name] = table
        return table

    def columns_of(self, name: str) -> set[str]:
        table = self.table(name)
        return set(table.columns) if table else set()

    # -- planning ----------------------------------------------------------------------

    def cost(self, sql: str) -> tuple[float, Any]:
        """(total cost, plan) of ``sql``'s generic plan, in a rolled-back transaction: one
        statement only, as ``hotpath explain`` sends it (``Session.plan``)."""
        with self.session.rolled_back() as conn:
            data = self.session.plan(conn, statement_safety(sql))
        return float(plan_root(data)["Total Cost"]), data

    def plan_all(
        self,
        statements: Iterable[_Statement],
        hypothetical: dict[int, Candidate],
        errors: dict[int, Exception] | None = None,
    ) -> dict[int, tuple[float, frozenset[Candidate]]]:
        """Each statement's cost and the hypothetical indexes its plan uses (by ``id`` of the
        statement), many to a transaction: a failing plan ends its transaction, is recorded in
        ``errors`` and the rest goes on in a new one (no savepoint round trips per plan)."""
        out: dict[int, tuple[float, frozenset[Candidate]]] = {}
        markers = {oid: f"<{oid}>" for oid in hypothetical}
        for st, found in _batched(
            list(statements), lambda conn, st: self.session.plan(conn, st.safety), self.session
        ):
            if isinstance(found, Exception):
                if errors is not None:
                    errors[id(st)] = found
                continue
            root = plan_root(found)
            names = " ".join(str(node.get("Index Name", "")) for _, node in walk(root))
            used = frozenset(hypothetical[oid] for oid, m in markers.items() if m in names)
            out[id(st)] = (float(root["Total Cost"]), used)
        return out

    def create(self, candidates: Iterable[Candidate]) -> dict[int, Candidate]:
        """Hypothetical indexes for ``candidates`` (oid -> candidate). One HypoPG cannot
        simulate (GIN) becomes an unvalidated suggestion with the reason."""
        made: dict[int, Candidate] = {}

        def one(conn: psycopg.Connection[dict[str, Any]], cand: Candidate) -> int:
            row = conn.execute(
                "SELECT indexrelid FROM hypopg_create_index(%s)",
                (cand.definition(concurrently=False),),
            ).fetchone()
            assert row is not None
            return int(row["indexrelid"])

        for cand, oid in _batched(list(candidates), one, self.session):
            if isinstance(oid, psycopg.Error):
                self._unsimulated(cand, oid)
            elif isinstance(oid, Exception):
                raise oid
            else:
                made[oid] = cand
        return made

    def _unsimulated(self, cand: Candidate, exc: psycopg.Error) -> None:
        if any(s.candidate == cand for s in self.advice.suggestions):
            return
        self.advice.suggestions.append(
            IndexSuggestion(
                cand,
                False,
                note=f"not validated: HypoPG: {_line(exc)}",
                script=self._script(cand),
            )
        )

    def drop(self, oids: Iterable[int]) -> None:
        for oid in oids:
            self.session.rows("SELECT hypopg_drop_index(%s)", (oid,))

    def reset(self) -> None:
        self.session.rows("SELECT hypopg_reset()")

    # -- the pipeline ------------------------------------------------------------------

    def run(self, workload: list[WorkloadQuery]) -> IndexAdvice:
        self.advice.queries = len(workload)
        if self.hypopg:
            self.reset()
        statements: list[_Statement] = []
        origins: dict[Candidate, list[_Statement]] = {}
        for query in workload:
            try:
                st = self._prepare(query)
            except _Unusable as exc:
                self.advice.unanalysed.append((query.sql, str(exc)))
                continue
            if st is None:
                continue
            statements.append(st)
            for cand in st.candidates:
                origins.setdefault(cand, []).append(st)
        statements = self._plan_bases(statements)
        for st in statements:
            if not st.candidates:
                self.advice.unserved.append((st.query.sql, self._why_no_candidate(st.uses)))
        origins = {c: o for c, o in origins.items() if any(c in st.candidates for st in o)}
        fresh = {c for c in origins if self._not_served(c)}
        for st in statements:
            st.candidates = [c for c in st.candidates if c in fresh]
        if self.hypopg:
            self.validate(statements)
        else:
            self.heuristic(statements)
        self.advice.suggestions.sort(key=lambda s: -(s.time_saved_ms or s.best_gain or 0))
        return self.advice

    def _plan_bases(self, statements: list[_Statement]) -> list[_Statement]:
        """Every statement's cost without new indexes, in batches; one that cannot be
        planned is listed as unanalysed with the server's reason."""
        errors: dict[int, Exception] = {}
        costs = self.plan_all(statements, {}, errors)
        planned = []
        for st in statements:
            if id(st) in costs:
                st.base = st.best = costs[id(st)][0]
                planned.append(st)
                continue
            exc = errors.get(id(st))
            why = f"EXPLAIN failed: {_line(exc) if exc else 'no plan'}"
            if isinstance(exc, psycopg.errors.InsufficientPrivilege):
                why += f": this role ({self.session.capabilities.user}) may not read it"
            self.advice.unanalysed.append((st.query.sql, why))
        return planned

    def _prepare(self, query: WorkloadQuery) -> _Statement | None:
        """Parse, count, plan once without new indexes and collect the candidates of one
        statement; None (with the reason recorded) when it cannot be analysed."""
        parsed = parse_query(query.sql, self.columns_of, self.view_of)
        self._count_calls(parsed.kind, list(parsed.relations), query.calls)
        if parsed.error or parsed.kind not in ("select", "update", "delete"):
            self.advice.unanalysed.append(
                (query.sql, parsed.error or f"{parsed.kind} statements do not read by index")
            )
            return None
        found = [t for u in parsed.uses if (t := self.table(u.name)) is not None]
        if not found:
            named = ", ".join(parsed.relations) or "none"
            self.advice.unanalysed.append(
                (query.sql, f"no table to index in it (relations named: {named})")
            )
            return None
        # --include/--exclude: candidates only on the wanted tables (doctor's missing_indexes
        # asks for the tables it flagged); a statement on none of them is not planned at all
        uses = [u for u in parsed.uses if (t := self.table(u.name)) and self._wanted(t)]
        if not uses:
            names = ", ".join(dict.fromkeys(t.name for t in found))
            self.advice.unanalysed.append(
                (query.sql, f"its tables ({names}) are outside --include/--exclude")
            )
            return None
        st = _Statement(query, parsed.kind, safety_of_tree(parsed.tree, query.sql), 0.0, uses)
        for use in uses:
            for cand in self.candidates(use):
                if _PARAM.search(cand.definition()):
                    # pg_stat_statements replaced a constant the index needs ('simple' in
                    # to_tsvector('simple', name)) by a placeholder: it cannot be guessed.
                    self._reject_once(
                        cand.definition(),
                        "its expression holds a placeholder pg_stat_statements put where a "
                        "constant was: give advise the statements with their constants "
                        "(--workload FILE.sql), or write this index with the constant",
                    )
                    continue
                if cand not in st.candidates:
                    st.candidates.append(cand)
        return st

    def _wanted(self, table: _Table) -> bool:
        return self.wanted.admits(table.name, table.relname)

    def _why_no_candidate(self, uses: list[TableUse]) -> str:
        small = [t for u in uses if (t := self.table(u.name)) and t.rows < MIN_TABLE_ROWS]
        if small and len(small) == len(uses):
            return (
                f"its tables have under {MIN_TABLE_ROWS:,} rows "
                f"({', '.join(t.name for t in small)}): a sequential scan is as fast"
            )
        return (
            "no candidate column: no WHERE, JOIN or ORDER BY an index could serve on its "
            "tables, or an existing index serves them"
        )

    def candidates(self, use: TableUse) -> list[Candidate]:
        table = self.table(use.name)
        assert table is not None
        if table.rows < MIN_TABLE_ROWS:
            self._reject_once(
                f"(any index on {table.name})",
                f"{table.name} has {table.rows:,.0f} rows (< {MIN_TABLE_ROWS:,}): "
                "a sequential scan of it is as fast as an index",
            )
            return []
        known = table.columns
        limit = self.max_keys
        eq = sorted(
            (c for c in use.equality if c in known), key=lambda c: -table.distinct.get(c, 0)
        )
        ranges = [c for c in use.range + use.prefix_like if c in known and c not in eq]
        order = [(c, d) for c, d in use.order_by if c in known]
        out: list[Candidate] = []
        name = table.name

        def add(columns: list[str], include: Iterable[str] = (), **kw: Any) -> None:
            cols = tuple(dict.fromkeys(columns))[:limit]  # the server's INDEX_MAX_KEYS
            extra = tuple(c for c in include if c not in cols)[: limit - len(cols)]
            if cols:
                out.append(Candidate(name, cols, include=extra, **kw))

        q = quote_ident
        keys = eq + ranges[:1]
        if keys:
            add(
                [q(c) for c in keys],
                kind="composite" if len(keys) > 1 else ("equality" if eq else "range"),
            )
        for column in eq + ranges[:2] + [c for c in use.join_columns if c in known]:
            add([q(column)], kind="equality")
        if order and not ranges:
            add(
                [q(c) for c in eq] + [f"{q(c)} DESC" if d else q(c) for c, d in order],
                kind="order",
            )
        if use.constant_predicates and (keys or order):
            where = " AND ".join(use.constant_predicates)
            add([q(c) for c in keys] or [q(order[0][0])], where=where, kind="partial")
        if keys and use.selected and 0 < len(set(use.selected) - set(keys)) <= 4:
            extra = [q(c) for c in use.selected if c not in keys and c in known]
            if extra:
                add([q(c) for c in keys], include=extra, kind="covering")
        for expression in use.expressions:
            add([expression], kind="expression")
        for column in use.containment:
            if column in known:
                out.append(Candidate(name, (q(column),), "gin", kind="gin"))
        for expression in use.fulltext:
            out.append(Candidate(name, (f"({expression})",), "gin", kind="gin"))
        for column in [] if eq else use.range:  # with an equality column a btree leads
            if (
                known.get(column) in _TIME_TYPES
                and table.rows >= BRIN_MIN_ROWS
                and table.correlation.get(column, 0) >= 0.9
                and table.changes <= 0.05 * table.rows
            ):
                out.append(Candidate(name, (q(column),), "brin", kind="brin"))
        return out

    def _not_served(self, cand: Candidate) -> bool:
        table = self._table_of(cand)
        wanted = tuple(_bare(w) for w in cand.columns)
        for name, am, keys, include, pred in table.indexes:
            if am != cand.method or ((pred or None) != (cand.where or None) and cand.where):
                continue
            if pred and not cand.where:
                continue
            if tuple(_bare(k) for k in keys[: len(wanted)]) == wanted and {
                _bare(i) for i in cand.include
            } <= {_bare(k) for k in keys + include}:
                self.advice.rejected.append(
                    Rejection(
                        cand.definition(),
                        f"already served by the existing index {name} ({am} on {', '.join(keys)})",
                    )
                )
                return False
        return True

    def _table_of(self, cand: Candidate) -> _Table:
        return self._table_of_name(cand.table)

    def _reject_once(self, ddl: str, reason: str) -> None:
        if ddl not in self.rejected_ddls:
            self.rejected_ddls.add(ddl)
            self.advice.rejected.append(Rejection(ddl, reason))

    # -- validation with HypoPG --------------------------------------------------------

    def validate(self, statements: list[_Statement]) -> None:
        for st in statements:
            for cand in st.candidates:
                if cand.method == "brin":  # weighed against the chosen btree, at the end
                    self.brins.setdefault((cand.table, cand.columns[0]), cand)
        groups: dict[frozenset[str], list[_Statement]] = {}
        for st in statements:
            if any(c.method != "brin" for c in st.candidates):
                groups.setdefault(frozenset(c.table for c in st.candidates), []).append(st)
        for members in groups.values():
            for chunk in _chunks(members):
                self._evaluate(chunk)
        benefiting: list[_Statement] = []
        for st in statements:
            if not st.chosen:
                continue
            need, note = self._need(st.chosen)
            if st.gain(st.best) >= need:
                benefiting.append(st)
                continue
            self.advice.unserved.append(
                (
                    st.query.sql,
                    f"best cost reduction {st.gain(st.best):.0%} < required {need:.0%}{note} "
                    f"(cost {st.base:,.0f} -> {st.best:,.0f} with {_names(st.chosen)})",
                )
            )
        pool = {c for st in benefiting for c in st.chosen}
        everything = {c for st in statements for c in st.candidates if c.method != "brin"}
        simulated_not = {s.candidate for s in self.advice.suggestions}
        owners: dict[Candidate, list[_Statement]] = {}
        for st in statements:
            for cand in st.candidates:
                owners.setdefault(cand, []).append(st)
        for cand in sorted(everything - pool - simulated_not, key=_order):
            self._reject_unchosen(cand, owners[cand])
        kept = self._consolidate(benefiting, pool)
        kept = self._prefer_brin(kept, benefiting)
        for cand in sorted(set(self.brins.values()) - kept, key=_order):
            self._reject_once(
                cand.definition(),
                "a btree index serves its statements better, or none needs it "
                f"({len([s for s in statements if cand in s.candidates])} statement(s))",
            )
        self._suggest(kept, benefiting)
        for st in statements:
            if st.candidates and not st.chosen:
                self.advice.unserved.append(
                    (
                        st.query.sql,
                        f"the planner used none of its {len(st.candidates)} candidate "
                        f"indexes, all present at once (cost stays {st.base:,.0f})",
                    )
                )

    def _evaluate(self, chunk: list[_Statement]) -> None:
        """Plan a chunk of statements on the same tables with all their single-column
        candidates at once, then with the wider ones too; each statement keeps the set its
        cheapest worthwhile plan uses."""
        narrow = list(
            dict.fromkeys(
                c for st in chunk for c in st.candidates if c.narrow and c.method != "brin"
            )
        )
        wide = list(
            dict.fromkeys(
                c for st in chunk for c in st.candidates if not c.narrow and c.method != "brin"
            )
        )
        try:
            hypothetical = self.create(narrow)
            first = self.plan_all(chunk, hypothetical) if hypothetical else {}
            for st in chunk:
                cost, chosen = first.get(id(st), (st.base, frozenset()))
                if chosen and cost < st.base:
                    st.best, st.chosen = cost, chosen
            # a plan already at one index probe cannot get cheaper by a wider index
            widened = [
                st
                for st in chunk
                if any(not c.narrow for c in st.candidates)
                and not (st.chosen and st.best < (1 + _RELATIVE_STEP) * _MIN_STEP + _MIN_STEP)
            ]
            if not widened:
                return
            hypothetical.update(self.create(wide))
            second = self.plan_all(widened, hypothetical)
            for st in widened:
                cost, chosen = second.get(id(st), (st.best, st.chosen))
                if not any(not c.narrow for c in chosen) or cost >= st.base:
                    continue
                # fewer indexes for the same cost (one composite instead of two combined
                # by a BitmapAnd) also wins: every index costs writes
                if _matters(st.best, cost) or (cost <= st.best and len(chosen) < len(st.chosen)):
                    st.best, st.chosen = cost, chosen
                    continue
                for cand in chosen - st.chosen:
                    self._reject_once(
                        cand.definition(),
                        f"adds too little over {_names(st.chosen) or 'no index'}: cost "
                        f"{st.best:,.0f} -> {cost:,.0f} (it must fall by more than "
                        f"{_RELATIVE_STEP / (1 + _RELATIVE_STEP):.0%} and by {_MIN_STEP:.0f}+ "
                        "for a wider index)",
                    )
        finally:
            self.reset()

    def _consolidate(self, benefiting: list[_Statement], pool: set[Candidate]) -> set[Candidate]:
        """All chosen indexes exist together; each is dropped, least used and narrowest
        first, when every statement using it stays as cheap without it (another chosen
        index serves it). What is left is the workload's set."""
        kept = set(pool)
        for component in _components(benefiting):
            members = [st for st in benefiting if st.chosen & component]
            local = sorted(pool & component, key=_order)
            if len(local) > MAX_HYPOTHETICAL:
                continue  # too many to plan together: each statement keeps its own set
            try:
                hypothetical = self.create(local)
                planned = self.plan_all(members, hypothetical)
                state = {id(st): planned.get(id(st), (st.best, st.chosen)) for st in members}

                counts = {c: len(_users(c, members, state)) for c in local}
                for cand in sorted(local, key=lambda c: (counts[c], _order(c))):
                    mine = _users(cand, members, state)
                    oid = next((o for o, c in hypothetical.items() if c == cand), None)
                    if oid is not None:
                        del hypothetical[oid]
                        self.drop([oid])
                    after = self.plan_all(mine, hypothetical) if mine else {}
                    if any(self._still_needed(st, state[id(st)], after.get(id(st))) for st in mine):
                        hypothetical.update(self.create([cand]))
                        continue
                    kept.discard(cand)
                    self._reject_once(cand.definition(), self._why_dropped(mine, state, after))
                    for st in mine:
                        state[id(st)] = after[id(st)]
                for st in members:
                    st.best, st.chosen = state[id(st)]
            finally:
                self.reset()
        return kept

    def _still_needed(
        self,
        st: _Statement,
        now: tuple[float, frozenset[Candidate]],
        without: tuple[float, frozenset[Candidate]] | None,
    ) -> bool:
        if without is None:  # its plan failed without it: keep it
            return True
        return _matters(without[0], now[0]) or st.gain(without[0]) < self._need(now[1])[0]

    @staticmethod
    def _why_dropped(
        mine: list[_Statement],
        state: dict[int, tuple[float, frozenset[Candidate]]],
        after: dict[int, tuple[float, frozenset[Candidate]]],
    ) -> str:
        if not mine:
            return (
                "not needed: with all chosen indexes present, 0 statements' plans use it "
                "(others serve them better)"
            )
        first = mine[0]
        served = frozenset(c for st in mine for c in after[id(st)][1])
        return (
            f"not needed with the other chosen indexes: its {len(mine)} statement(s) stay "
            f"as cheap without it"
            + (f", served by {_names(served)}" if served else "")
            + f" (cost {state[id(first)][0]:,.0f} -> {after[id(first)][0]:,.0f})"
        )

    def _prefer_brin(self, kept: set[Candidate], benefiting: list[_Statement]) -> set[Candidate]:
        """On a large append-only table, a BRIN index that still brings the required gain
        replaces a chosen btree on the same column: the planner often rates the btree a
        little cheaper to read, but the BRIN index is a tiny fraction of its size and nearly
        free to keep."""
        for (table, column), brin in sorted(self.brins.items()):
            btree = next(
                (
                    c
                    for c in kept
                    if c.table == table
                    and c.narrow
                    and c.method == "btree"
                    and c.columns == (column,)
                ),
                None,
            )
            if btree is None:
                continue
            mine = [st for st in benefiting if btree in st.chosen]
            try:
                hypothetical = self.create(
                    [c for c in sorted(kept, key=_order) if c != btree and c.table == table]
                    + [brin]
                )
                after = self.plan_all(mine, hypothetical)
            finally:
                self.reset()
            if not mine or any(
                id(st) not in after
                or brin not in after[id(st)][1]
                or st.gain(after[id(st)][0]) < self._need(after[id(st)][1])[0]
                for st in mine
            ):
                continue
            kept = (kept - {btree}) | {brin}
            brin_gain = min(st.gain(after[id(st)][0]) for st in mine)
            self.advice.rejected.append(
                Rejection(
                    btree.definition(),
                    f"a BRIN index on {column} serves the same queries (cost reduction "
                    f"{brin_gain:.0%} vs {min(st.gain(st.best) for st in mine):.0%} for this "
                    f"btree) at a fraction of its size and write cost on append-only {table}",
                )
            )
            for st in mine:
                st.best, st.chosen = after[id(st)]
        return kept

    def _suggest(self, kept: set[Candidate], benefiting: list[_Statement]) -> None:
        for cand in sorted(kept, key=_order):
            users = [st for st in benefiting if cand in st.chosen]
            if not users:
                continue
            effects = [QueryEffect(st.query.sql, st.base, st.best, True) for st in users]
            # a statement's saving is shared by the indexes its plan uses together
            benefit = sum(st.weight * st.gain(st.best) / len(st.chosen) for st in users)
            timed = all(st.query.weight is not None for st in users)
            together = tuple(
                dict.fromkeys(
                    c.definition()
                    for st in users
                    for c in sorted(st.chosen, key=_order)
                    if c != cand and c in kept
                )
            )
            notes = []
            if not timed:
                notes.append("ranked by planner cost (no timing statistics for the queries)")
            if together:
                notes.append(
                    f"the planner uses it together with {len(together)} other suggested "
                    "index(es) for the same statement(s): create them together"
                )
            need, why = self._need(frozenset({cand}))
            best = max(st.gain(st.best) for st in users)
            if why:
                notes.append(f"required {need:.0%} cost reduction{why}: it brings {best:.0%}")
            writers = sorted({st.kind.upper() for st in users if st.kind in ("update", "delete")})
            if writers:
                table = self._table_of(cand)
                notes.append(
                    f"serves {'/'.join(writers)} statements; every write to {cand.table} also "
                    f"updates it, weighed by its real write rate (pg_stat_user_tables: "
                    f"{table.rows_written:,} rows written vs {table.rows_read:,} read)"
                    + ("" if why else f": not write-heavy, so the usual {need:.0%} applies")
                )
            script = self._script(cand)
            if script:
                notes.append(PARTITIONED_NOTE.format(table=cand.table, body=cand.body))
            self.advice.suggestions.append(
                IndexSuggestion(
                    cand,
                    True,
                    round(max(st.gain(st.best) for st in users), 4),
                    round(benefit, 3) if timed else None,
                    effects,
                    "; ".join(notes),
                    script,
                    together,
                )
            )
            if not timed:
                self.advice.suggestions[-1].time_saved_ms = None

    def _reject_unchosen(self, cand: Candidate, statements: list[_Statement]) -> None:
        weak = [st for st in statements if cand in st.chosen]
        if weak:
            st = max(weak, key=lambda s: s.gain(s.best))
            need, note = self._need(st.chosen)
            self._reject_once(
                cand.definition(),
                f"best cost reduction {st.gain(st.best):.0%} < required {need:.0%}{note} "
                f"(cost {st.base:,.0f} -> {st.best:,.0f})",
            )
            return
        costs = ", ".join(f"{st.base:,.0f}" for st in statements[:3])
        self._reject_once(
            cand.definition(),
            f"the planner did not use it for any of its {len(statements)} queries, with every "
            f"candidate present (costs stay {costs})",
        )

    # -- partitioned tables ------------------------------------------------------------

    def _script(self, cand: Candidate) -> tuple[str, ...]:
        """The DDL that builds ``cand`` on a partitioned table without blocking writes (an
        index ON ONLY each partitioned level, each leaf's built concurrently, all attached),
        as doctor's fk_without_index and ``--create`` build it: :mod:`._ddl`."""
        table = self._table_of(cand)
        if not table.partitioned:
            return ()
        return tuple(index_statements(self.session.rows, table.oid, cand.body, cand.name_parts))

    # -- write costs -------------------------------------------------------------------

    def _count_calls(self, kind: str, tables: list[str], calls: int) -> None:
        """INSERT, UPDATE and DELETE write their table; SELECT, UPDATE and DELETE read it
        (an UPDATE or DELETE finds its rows first, and an index speeds that up)."""
        for name in tables:
            try:
                table = self.table(name)
            except _Unusable:
                continue
            if table is None:
                continue
            if kind in ("insert", "update", "delete"):
                self.write_calls[table.name] = self.write_calls.get(table.name, 0) + calls
            if kind in ("select", "update", "delete"):
                self.read_calls[table.name] = self.read_calls.get(table.name, 0) + calls

    def _need(self, chosen: Iterable[Candidate]) -> tuple[float, str]:
        """The cost reduction a statement must get from ``chosen``: the strictest of their
        tables' requirements, with the reason when raised."""
        worst = (self.min_gain, "")
        for table in {c.table for c in chosen}:
            found = self._required_gain(self._table_of_name(table))
            if found[0] > worst[0]:
                worst = found
        return worst

    def _table_of_name(self, name: str) -> _Table:
        return next(t for t in self.tables.values() if t is not None and t.name == name)

    def _required_gain(self, table: _Table) -> tuple[float, str]:
        """min_gain, raised for a table written more than it is read: every index slows each
        write (the raise grows with the square root of writes per read). Writes per read
        come from the workload's calls and from the table's real counters
        (pg_stat_user_tables, rows written vs rows read); the larger ratio counts."""
        writes = self.write_calls.get(table.name, 0)
        reads = self.read_calls.get(table.name, 0)
        ratio, why = 0.0, ""
        if writes > reads:
            ratio = writes / max(1, reads)
            why = f" on write-heavy {table.name} ({writes:,} write calls vs {reads:,} read calls)"
        if table.rows_read > 0 and table.rows_written > table.rows_read:
            real = table.rows_written / table.rows_read
            if real > ratio:
                ratio = real
                why = (
                    f" on write-heavy {table.name} (pg_stat_user_tables: "
                    f"{table.rows_written:,} rows written vs {table.rows_read:,} read)"
                )
        if not why:
            return self.min_gain, ""
        return float(min(0.9, self.min_gain * (1 + ratio) ** 0.5)), why

    # -- without HypoPG ----------------------------------------------------------------

    def heuristic(self, statements: list[_Statement]) -> None:
        """Per (statement, table) the one most specific btree, plus GIN/BRIN/expression;
        unselective equality-only keys are rejected from pg_stats (estimated rows per
        lookup)."""
        keep: dict[str, Candidate] = {}
        for st in statements:
            fresh = set(st.candidates)
            for use in st.uses:
                if self.table(use.name) is None:
                    continue
                options = [c for c in self.candidates(use) if c in fresh]
                btrees = [c for c in options if c.method == "btree" and c.kind != "expression"]
                pick = (
                    next((c for c in btrees if c.kind == "partial"), None)
                    or next((c for c in btrees if c.kind == "order"), None)
                    or next(iter(btrees), None)
                )
                chosen = [c for c in options if c.method != "btree" or c.kind == "expression"]
                brin = {c.columns for c in chosen if c.method == "brin"}
                if pick is not None and pick.columns in brin and not pick.where:
                    pick = None  # the BRIN index serves this range on an append-only table
                if pick is not None and self._selective(pick, use):
                    chosen.append(pick)
                for cand in chosen:
                    keep.setdefault(cand.definition(), cand)
        for cand in keep.values():
            wider = _covering_btree(cand, keep.values())
            if wider is not None:
                self.advice.rejected.append(
                    Rejection(
                        cand.definition(),
                        f"redundant: {wider.definition()} has the same leading columns",
                    )
                )
                continue
            self.advice.suggestions.append(
                IndexSuggestion(
                    cand,
                    False,
                    note="unvalidated (no HypoPG): " + (self.advice.hint or ""),
                    script=self._script(cand),
                )
            )

    def _selective(self, cand: Candidate, use: TableUse) -> bool:
        table = self._table_of(cand)
        if cand.where or use.order_by or any(quote_ident(c) in cand.key_names for c in use.range):
            return True
        matching = table.rows
        for column in cand.key_names:
            matching /= max(1.0, table.distinct.get(_bare(column), table.rows))
        if matching <= 0.05 * table.rows:
            return True
        self.advice.rejected.append(
            Rejection(
                cand.definition(),
                f"about {matching:,.0f} of {table.rows:,.0f} rows match "
                f"({matching / max(1.0, table.rows):.0%}, from pg_stats n_distinct): "
                "too unselective "
                "for an index",
            )
        )
        return False


_Item = Any
_Result = Any


def _batched(
    items: list[_Item],
    work: Callable[[psycopg.Connection[dict[str, Any]], _Item], _Result],
    session: Session,
) -> Iterator[tuple[_Item, _Result | Exception]]:
    """``work`` on each item, as many as possible in one rolled-back transaction. An error
    aborts the transaction: that item yields its exception and the next ones go on in a
    fresh transaction, so a batch costs one round trip per item, not three."""
    position = 0
    while position < len(items):
        failure: tuple[_Item, Exception] | None = None
        with session.rolled_back() as conn:
            while position < len(items):
                item = items[position]
                position += 1
                try:
                    result = work(conn, item)
                except (psycopg.Error, DoctorError) as exc:
                    failure = (item, exc)
                    break
                yield item, result
        if failure is not None:
            yield failure


def _users(
    cand: Candidate,
    members: list[_Statement],
    state: dict[int, tuple[float, frozenset[Candidate]]],
) -> list[_Statement]:
    return [st for st in members if cand in state[id(st)][1]]


def _chunks(members: list[_Statement]) -> Iterator[list[_Statement]]:
    """Statements in batches whose candidates, all at once, stay under MAX_HYPOTHETICAL."""
    chunk: list[_Statement] = []
    seen: set[Candidate] = set()
    for st in members:
        mine = set(st.candidates)
        if chunk and len(seen | mine) > MAX_HYPOTHETICAL:
            yield chunk
            chunk, seen = [], set()
        chunk.append(st)
        seen |= mine
    if chunk:
        yield chunk


def _components(statements: list[_Statement]) -> list[set[Candidate]]:
    """Chosen candidates in groups that interact: on one table, or chosen by one statement."""
    parent: dict[Any, Any] = {}

    def find(x: Any) -> Any:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for st in statements:
        tables = [("table", c.table) for c in st.chosen]
        for other in tables[1:]:
            parent[find(other)] = find(tables[0])
    groups: dict[Any, set[Candidate]] = {}
    for st in statements:
        for cand in st.chosen:
            groups.setdefault(find(("table", cand.table)), set()).add(cand)
    return list(groups.values())


def _order(cand: Candidate) -> tuple[int, int, str]:
    """Narrowest first, then by definition: a deterministic order for every choice."""
    return (len(cand.columns) + len(cand.include), int(cand.where is not None), cand.definition())


def _short(cand: Candidate) -> str:
    return cand.definition().removeprefix("CREATE INDEX CONCURRENTLY ON ").rstrip(";")


def _names(cands: Iterable[Candidate]) -> str:
    return ", ".join(_short(c) for c in sorted(cands, key=_order))


def _bare(sql_name: str) -> str:
    """``"CustomerId"`` -> ``CustomerId``: a quoted identifier compared by its name."""
    if len(sql_name) > 1 and sql_name[0] == sql_name[-1] == '"':
        return sql_name[1:-1].replace('""', '"')
    return sql_name


def _covering_btree(cand: Candidate, others: Iterable[Candidate]) -> Candidate | None:
    """A wider btree among ``others`` that serves every lookup ``cand`` would: same table and
    predicate, ``cand``'s key columns as its leading ones, ``cand``'s INCLUDE columns in it."""
    if cand.method != "btree":
        return None
    keys = cand.key_names
    for other in others:
        carried = set(other.key_names) | set(other.include)
        if (
            other is not cand
            and other.method == "btree"
            and other.table == cand.table
            and other.where == cand.where
            and len(other.key_names) > len(keys)
            and other.key_names[: len(keys)] == keys
            and set(cand.include) <= carried
        ):
            return other
    return None


def _uses_index(plan: Any, oid: int) -> bool:
    marker = f"<{oid}>"
    return any(marker in str(node.get("Index Name", "")) for _, node in walk(plan_root(plan)))


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
