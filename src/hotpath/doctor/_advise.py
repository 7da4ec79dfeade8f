"""``advise_indexes``: candidate indexes from the workload's parse trees, validated with HypoPG.

1. Each statement is parsed (pglast) into per-table predicates; candidates follow the rules
   of index design: equality columns first (most selective first), then one range column,
   or the ORDER BY columns; partial (constant predicates), covering (``INCLUDE``), GIN for
   JSONB containment and full text, BRIN for large append-only time columns.
2. Candidates an existing index already serves are dropped, with the index named.
3. With HypoPG every candidate is planned against every statement on its table: cost before
   and after, and whether the planner used it. A candidate is kept when it cuts some
   statement's cost by ``min_gain`` (more on write-heavy tables), ranked by time saved
   (calls x mean time x reduction), and chosen greedily so that one index serving several
   statements wins and no chosen pair is redundant. Every rejection says why, with numbers.
4. Without HypoPG: the heuristic candidates, marked unvalidated, and how to install HypoPG.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from ..plans import statement_safety
from ..plans._flags import plan_root, walk
from ._context import display_name
from ._errors import DoctorError
from ._session import Session
from ._sources import TableFilter
from ._sqlparse import TableUse, parse_query, tables_of
from ._workload import WorkloadQuery, from_file, from_list, from_statements

MIN_TABLE_ROWS = 1_000
BRIN_MIN_ROWS = 100_000
_PARAM = re.compile(r"\$\d+")
_TIME_TYPES = ("timestamp with time zone", "timestamp without time zone", "date")
HYPOPG_HINT = (
    "install HypoPG to validate these: apt-get install postgresql-{major}-hypopg (or "
    "your platform's package), then CREATE EXTENSION hypopg; in this database"
)


@dataclass(frozen=True)
class Candidate:
    """A possible index. ``columns`` are column names or, for expression indexes, ``(expr)``."""

    table: str
    columns: tuple[str, ...]
    method: str = "btree"
    include: tuple[str, ...] = ()
    where: str | None = None
    kind: str = "composite"

    def definition(self, concurrently: bool = True) -> str:
        using = "" if self.method == "btree" else f" USING {self.method}"
        sql = (
            f"CREATE INDEX{' CONCURRENTLY' if concurrently else ''} ON {self.table}{using} "
            f"({', '.join(self.columns)})"
        )
        if self.include:
            sql += f" INCLUDE ({', '.join(self.include)})"
        if self.where:
            sql += f" WHERE {self.where}"
        return sql + ";"

    @property
    def key_names(self) -> tuple[str, ...]:
        return tuple(c.split(" ")[0] for c in self.columns)


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
    """A suggested index: its statement, whether HypoPG validated it, and what it buys."""

    candidate: Candidate
    validated: bool
    best_gain: float | None = None
    time_saved_ms: float | None = None
    effects: list[QueryEffect] = field(default_factory=list)
    note: str = ""

    @property
    def ddl(self) -> str:
        return self.candidate.definition()

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
    """The advisor's answer: suggestions best first, every rejection, unanalysed queries."""

    suggestions: list[IndexSuggestion] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    unanalysed: list[tuple[str, str]] = field(default_factory=list)
    hypopg: bool = False
    hint: str | None = None
    queries: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": "hotpath.advise/1",
            "hypopg": self.hypopg,
            "hint": self.hint,
            "queries": self.queries,
            "suggestions": [s.to_dict() for s in self.suggestions],
            "rejected": [{"ddl": r.ddl, "reason": r.reason} for r in self.rejected],
            "unanalysed": [{"sql": q, "reason": why} for q, why in self.unanalysed],
        }


_Scored = tuple[float, "Candidate", list["QueryEffect"], dict[int, float]]


@dataclass
class _Table:
    name: str
    relname: str
    rows: float
    writes: int
    reads: int
    changes: int  # rows updated or deleted: an append-only table has (almost) none
    columns: dict[str, str]  # name -> type
    distinct: dict[str, float]
    correlation: dict[str, float]
    indexes: list[
        tuple[str, str, tuple[str, ...], tuple[str, ...], str | None]
    ]  # name, am, keys, include, pred


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
        if queries is None:
            workload = from_statements(session)
        elif isinstance(queries, Path) or (isinstance(queries, str) and queries.endswith(".sql")):
            workload = from_file(queries)
        elif isinstance(queries, str):
            workload = from_list([queries])
        elif all(isinstance(q, WorkloadQuery) for q in queries):
            workload = [q for q in queries if isinstance(q, WorkloadQuery)]
        else:
            workload = from_list([str(q) for q in queries])
        return _Advisor(session, min_gain, use_hypopg, tables or TableFilter()).run(workload)


class _Advisor:
    def __init__(
        self, session: Session, min_gain: float, use_hypopg: bool, tables: TableFilter
    ) -> None:
        self.session = session
        self.wanted = tables
        self.min_gain = min_gain
        caps = session.capabilities
        self.hypopg = use_hypopg and "hypopg" in caps.extensions
        self.tables: dict[str, _Table] = {}
        self.write_calls: dict[str, int] = {}
        self.read_calls: dict[str, int] = {}
        self.advice = IndexAdvice(hypopg=self.hypopg)
        if not self.hypopg:
            self.advice.hint = HYPOPG_HINT.format(major=caps.server_version // 10000)

    # -- catalog -----------------------------------------------------------------------

    def table(self, name: str) -> _Table | None:
        if name in self.tables:
            return self.tables[name]
        rows = self.session.rows(
            "SELECT c.oid, n.nspname, c.relname, c.reltuples::float8 AS rows,"
            " coalesce(s.n_tup_ins + s.n_tup_upd + s.n_tup_del, 0) AS writes,"
            " coalesce(s.n_tup_upd + s.n_tup_del, 0) AS changes,"
            " coalesce(s.seq_tup_read, 0) + coalesce(s.idx_tup_fetch, 0) AS reads"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid"
            " WHERE c.oid = to_regclass(%s) AND c.relkind IN ('r', 'p', 'm')",
            (name,),
        )
        if not rows:
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
            "SELECT attname, n_distinct, correlation FROM pg_stats"
            " WHERE schemaname = %s AND tablename = %s",
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
            " JOIN pg_am am ON am.oid = ic.relam WHERE i.indrelid = %s AND i.indisvalid",
            (r["oid"],),
        ):
            cols = [c.strip('"') for c in i["cols"]]
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
            rows_n,
            int(r["writes"]),
            int(r["reads"]),
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

    # -- the pipeline ------------------------------------------------------------------

    def run(self, workload: list[WorkloadQuery]) -> IndexAdvice:
        self.advice.queries = len(workload)
        if self.hypopg:
            self.session.rows("SELECT hypopg_reset()")
        planned: list[tuple[WorkloadQuery, float, list[TableUse]]] = []
        candidates: dict[str, Candidate] = {}
        origins: dict[str, list[str]] = {}
        for query in workload:
            parsed = parse_query(query.sql, self.columns_of)
            self._count_calls(parsed.kind, list(tables_of(query.sql)), query.calls)
            if parsed.error or parsed.kind not in ("select", "update", "delete"):
                self.advice.unanalysed.append(
                    (query.sql, parsed.error or f"{parsed.kind} statements do not read by index")
                )
                continue
            try:
                base, _ = self.cost(query.sql)
            except (psycopg.Error, DoctorError) as exc:
                self.advice.unanalysed.append((query.sql, f"EXPLAIN failed: {_line(exc)}"))
                continue
            uses = [u for u in parsed.uses if self.table(u.name) is not None]
            planned.append((query, base, uses))
            for use in uses:
                if not self.wanted.admits(
                    self.tables[use.name].name, self.tables[use.name].relname
                ):
                    continue
                for cand in self.candidates(use):
                    ddl = cand.definition()
                    if _PARAM.search(ddl):
                        # pg_stat_statements replaced a constant the index needs ('simple' in
                        # to_tsvector('simple', name)) by a placeholder: it cannot be guessed.
                        self._reject_once(
                            ddl,
                            "its expression holds a placeholder pg_stat_statements put where a "
                            "constant was: give advise the statements with their constants "
                            "(--workload FILE.sql), or write this index with the constant",
                        )
                        continue
                    candidates.setdefault(ddl, cand)
                    origins.setdefault(ddl, []).append(query.sql)
        fresh = [c for c in candidates.values() if self._not_served(c)]
        if self.hypopg:
            self.validate(fresh, planned)
        else:
            self.heuristic(set(fresh), planned)
        self.advice.suggestions.sort(key=lambda s: -(s.time_saved_ms or s.best_gain or 0))
        return self.advice

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
        eq = sorted(
            (c for c in use.equality if c in known), key=lambda c: -table.distinct.get(c, 0)
        )
        ranges = [c for c in use.range + use.prefix_like if c in known and c not in eq]
        order = [(c, d) for c, d in use.order_by if c in known]
        out: list[Candidate] = []
        name = table.name

        def add(columns: list[str], **kw: Any) -> None:
            cols = tuple(dict.fromkeys(columns))
            if cols:
                out.append(Candidate(name, cols, **kw))

        keys = eq + ranges[:1]
        if keys:
            add(keys, kind="composite" if len(keys) > 1 else ("equality" if eq else "range"))
        for column in eq[1:] + ranges[1:2] + [c for c in use.join_columns if c in known]:
            add([column], kind="equality")
        if eq and ranges:
            add([eq[0]], kind="equality")
        if order and not ranges:
            add(eq + [f"{c} DESC" if d else c for c, d in order], kind="order")
        if use.constant_predicates and (keys or order):
            where = " AND ".join(use.constant_predicates)
            add(keys or [order[0][0]], where=where, kind="partial")
        if keys and use.selected and 0 < len(set(use.selected) - set(keys)) <= 4:
            extra = tuple(c for c in use.selected if c not in keys and c in known)
            if extra:
                out.append(Candidate(name, tuple(keys), include=extra, kind="covering"))
        for column in use.containment:
            if column in known:
                out.append(Candidate(name, (column,), "gin", kind="gin"))
        for expression in use.fulltext:
            out.append(Candidate(name, (f"({expression})",), "gin", kind="gin"))
        for column in [] if eq else use.range:  # with an equality column a btree leads
            if (
                known.get(column) in _TIME_TYPES
                and table.rows >= BRIN_MIN_ROWS
                and table.correlation.get(column, 0) >= 0.9
                and table.changes <= 0.05 * table.rows
            ):
                out.append(Candidate(name, (column,), "brin", kind="brin"))
        return out

    def _not_served(self, cand: Candidate) -> bool:
        table = self.table(cand.table)
        assert table is not None
        for name, am, keys, include, pred in table.indexes:
            if am != cand.method or ((pred or None) != (cand.where or None) and cand.where):
                continue
            if pred and not cand.where:
                continue
            wanted = cand.columns
            if tuple(k.strip("()") for k in keys[: len(wanted)]) == tuple(
                w.strip("()") for w in wanted
            ) and set(cand.include) <= set(keys) | set(include):
                self.advice.rejected.append(
                    Rejection(
                        cand.definition(),
                        f"already served by the existing index {name} ({am} on {', '.join(keys)})",
                    )
                )
                return False
        return True

    def _reject_once(self, ddl: str, reason: str) -> None:
        if not any(r.ddl == ddl for r in self.advice.rejected):
            self.advice.rejected.append(Rejection(ddl, reason))

    # -- validation with HypoPG --------------------------------------------------------

    def validate(
        self,
        candidates: list[Candidate],
        planned: list[tuple[WorkloadQuery, float, list[TableUse]]],
    ) -> None:
        scored: list[_Scored] = []
        for cand in candidates:
            relevant = [
                (i, q, base)
                for i, (q, base, uses) in enumerate(planned)
                if any(self.table(u.name) is self.table(cand.table) for u in uses)
            ]
            try:
                oid = self.session.row(
                    "SELECT indexrelid FROM hypopg_create_index(%s)",
                    (cand.definition(concurrently=False),),
                )["indexrelid"]
            except psycopg.Error as exc:
                # HypoPG cannot simulate this kind (GIN, expressions): keep it, unvalidated
                self.advice.suggestions.append(
                    IndexSuggestion(cand, False, note=f"not validated: HypoPG: {_line(exc)}")
                )
                continue
            effects: list[QueryEffect] = []
            gains: dict[int, float] = {}
            try:
                for i, query, base in relevant:
                    after, plan = self.cost(query.sql)
                    used = _uses_index(plan, int(oid))
                    effect = QueryEffect(query.sql, base, after, used)
                    effects.append(effect)
                    gains[i] = effect.gain
            finally:
                self.session.rows("SELECT hypopg_drop_index(%s)", (oid,))
            best = max(gains.values(), default=0.0)
            table = self.table(cand.table)
            assert table is not None
            need = self._required_gain(table)
            if not any(e.used for e in effects):
                base_costs = ", ".join(f"{e.cost_before:,.0f}" for e in effects[:3])
                self.advice.rejected.append(
                    Rejection(
                        cand.definition(),
                        f"the planner did not use it for any of its "
                        f"{len(effects)} queries (costs stay {base_costs})",
                    )
                )
                continue
            if best < need:
                e = max(effects, key=lambda e: e.gain)
                self.advice.rejected.append(
                    Rejection(
                        cand.definition(),
                        f"best cost reduction {best:.0%} < required {need:.0%}"
                        f"{self._write_note(table, need)} (cost {e.cost_before:,.0f} -> "
                        f"{e.cost_after:,.0f})",
                    )
                )
                continue
            scored.append((self._benefit(planned, gains), cand, effects, gains))
        self._choose(self._prefer_brin(scored), planned)

    def _prefer_brin(self, scored: list[_Scored]) -> list[_Scored]:
        """On a large append-only table, a BRIN index that reaches the required gain replaces
        a plain btree on the same column: the planner often rates the btree a little cheaper
        to read, but the BRIN index is a tiny fraction of its size and nearly free to keep."""
        brins = {
            (c.table, c.columns): max(g.values(), default=0.0)
            for _, c, _, g in scored
            if c.method == "brin"
        }
        kept = []
        for entry in scored:
            cand, gains = entry[1], entry[3]
            brin_gain = brins.get((cand.table, cand.key_names))
            if (
                cand.method == "btree"
                and brin_gain is not None
                and not cand.where
                and not cand.include
            ):
                self.advice.rejected.append(
                    Rejection(
                        cand.definition(),
                        f"a BRIN index on {', '.join(cand.key_names)} serves the "
                        f"same queries (cost reduction {brin_gain:.0%} vs "
                        f"{max(gains.values(), default=0.0):.0%} for this btree) at a fraction of "
                        f"its size and write cost on append-only {cand.table}",
                    )
                )
                continue
            kept.append(entry)
        return kept

    def _count_calls(self, kind: str, tables: list[str], calls: int) -> None:
        for name in tables:
            table = self.table(name)
            if table is None:
                continue
            counter = (
                self.write_calls if kind in ("insert", "update", "delete") else self.read_calls
            )
            counter[table.name] = counter.get(table.name, 0) + calls

    def _required_gain(self, table: _Table) -> float:
        """min_gain, raised for tables the workload writes more than it reads: every index
        slows each write (the raise grows with the square root of writes per read)."""
        writes = self.write_calls.get(table.name, 0)
        reads = self.read_calls.get(table.name, 0)
        if writes <= reads:
            return self.min_gain
        return float(min(0.9, self.min_gain * (1 + writes / max(1, reads)) ** 0.5))

    def _write_note(self, table: _Table, need: float) -> str:
        if need <= self.min_gain:
            return ""
        return (
            f" on write-heavy {table.name} ({self.write_calls.get(table.name, 0):,} "
            f"write calls vs {self.read_calls.get(table.name, 0):,} read calls)"
        )

    @staticmethod
    def _benefit(
        planned: list[tuple[WorkloadQuery, float, list[TableUse]]], gains: dict[int, float]
    ) -> float:
        total = 0.0
        for i, gain in gains.items():
            query, base, _ = planned[i]
            total += (query.weight if query.weight is not None else base) * gain
        return total

    def _choose(
        self,
        scored: list[tuple[float, Candidate, list[QueryEffect], dict[int, float]]],
        planned: list[tuple[WorkloadQuery, float, list[TableUse]]],
    ) -> None:
        covered: dict[int, float] = {}
        chosen: list[Candidate] = []
        # biggest benefit first; on a tie the narrower index (fewer columns) wins
        scored.sort(key=lambda s: (-s[0], len(s[1].columns) + len(s[1].include)))
        for benefit, cand, effects, gains in scored:
            redundant = next(
                (
                    c
                    for c in chosen
                    if c.table == cand.table
                    and c.method == cand.method == "btree"
                    and c.where == cand.where
                    and c.key_names[: len(cand.key_names)] == cand.key_names
                ),
                None,
            )
            if redundant is not None:
                self.advice.rejected.append(
                    Rejection(
                        cand.definition(),
                        f"redundant: the chosen {redundant.definition()} "
                        "has the same leading columns (this one's best cost reduction "
                        f"{max(gains.values()):.0%})",
                    )
                )
                continue
            marginal = self._benefit(
                planned,
                {
                    i: g - covered.get(i, 0.0)
                    for i, g in gains.items()
                    if g > covered.get(i, 0.0) and g - covered.get(i, 0.0) >= self.min_gain * 0.5
                },
            )
            if marginal <= 0.1 * benefit:
                served = ", ".join(f"{covered.get(i, 0):.0%}" for i in gains)
                self.advice.rejected.append(
                    Rejection(
                        cand.definition(),
                        f"its queries are already served by a chosen index "
                        f"(their cost reductions already {served}; this one adds "
                        f"{marginal / max(benefit, 1e-9):.0%} of its own benefit)",
                    )
                )
                continue
            chosen.append(cand)
            for i, g in gains.items():
                covered[i] = max(covered.get(i, 0.0), g)
            weights = [planned[i][0].weight for i in gains if gains[i] > 0]
            timed = all(w is not None for w in weights)
            self.advice.suggestions.append(
                IndexSuggestion(
                    cand,
                    True,
                    round(max(gains.values()), 4),
                    round(benefit, 3) if timed else None,
                    effects,
                    ""
                    if timed
                    else "ranked by planner cost (no timing statistics for the queries)",
                )
            )

    # -- without HypoPG ----------------------------------------------------------------

    def heuristic(
        self, fresh: set[Candidate], planned: list[tuple[WorkloadQuery, float, list[TableUse]]]
    ) -> None:
        """Per (statement, table) the one most specific btree, plus GIN/BRIN; unselective
        equality-only keys are rejected from pg_stats (estimated rows per lookup)."""
        keep: dict[str, Candidate] = {}
        for _, _, uses in planned:
            for use in uses:
                options = [c for c in self.candidates(use) if c in fresh]
                btrees = [c for c in options if c.method == "btree"]
                pick = (
                    next((c for c in btrees if c.kind == "partial"), None)
                    or next((c for c in btrees if c.kind == "order"), None)
                    or next(iter(btrees), None)
                )
                chosen = [c for c in options if c.method != "btree"]
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
                    cand, False, note="unvalidated (no HypoPG): " + (self.advice.hint or "")
                )
            )

    def _selective(self, cand: Candidate, use: TableUse) -> bool:
        table = self.table(cand.table)
        assert table is not None
        if cand.where or use.order_by or any(c in use.range for c in cand.key_names):
            return True
        matching = table.rows
        for column in cand.key_names:
            matching /= max(1.0, table.distinct.get(column, table.rows))
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
