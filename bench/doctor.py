"""Index advice accuracy and real speedup, against a Dexter-style baseline; doctor's run time.

A labelled suite of workloads is generated here: each case is a schema with data, a few
statements, and the indexes a DBA would create for them (single, composite, partial,
covering, GIN, BRIN), plus traps where no index helps. Contenders:

- ``hotpath``: ``advise_indexes`` with HypoPG (PostgreSQL 15 + postgresql-15-hypopg when
  installed; otherwise this contender is skipped and the reason printed).
- ``hotpath heuristic``: ``advise_indexes(use_hypopg=False)`` (what users without HypoPG get).
- ``dexter-style``: Dexter's algorithm re-implemented here: every referenced column, all
  single-column and ordered two-column btree candidates as hypothetical indexes, a
  single-column index kept if it halves the query's cost, a pair only if it halves the cost
  again (the fixed 50% rule).

A suggestion is a true positive when its table, access method and key columns (as a set)
match an expected index, and it carries the expected predicate/INCLUDE where the case needs
one. Speedup: hotpath's suggestions are created for real and each statement is run with
``EXPLAIN ANALYZE`` before and after (median of 5 runs). Finally ``diagnose`` is timed on a
database with 1,000 tables.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from pglast import ast, parser

from hotpath.doctor import IndexSuggestion, advise_indexes, diagnose
from hotpath.doctor._session import libpq_url
from hotpath.stack import LocalStack

from ._harness import Series, console, report
from .doctor_public import public_cases, scale

PG15_BIN = "/usr/lib/postgresql/15/bin"
HYPOPG = Path("/usr/share/postgresql/15/extension/hypopg.control")


@dataclass(frozen=True)
class Expected:
    table: str
    columns: frozenset[str]
    method: str = "btree"
    partial: bool = False
    include: bool = False


@dataclass
class Case:
    name: str
    setup: list[str]
    queries: list[str]
    expected: list[Expected] = field(default_factory=list)  # empty: a trap


def _cases(rows: int) -> list[Case]:
    big = rows * 5  # BRIN pays off on tables far larger than the rest
    return [
        Case(
            "single",
            [
                f"CREATE TABLE users AS SELECT g AS id, 'u' || g || '@x.io' AS email, g % 3 AS plan"
                f" FROM generate_series(1, {rows}) g",
            ],
            ["SELECT * FROM users WHERE email = 'u77@x.io'"],
            [Expected("users", frozenset({"email"}))],
        ),
        Case(
            "composite",
            [
                f"CREATE TABLE orders AS SELECT g AS id, g % 2000 AS customer_id,"
                f" now() - g * interval '1 min' AS created_at, g % 100 AS total"
                f" FROM generate_series(1, {rows}) g",
            ],
            [
                "SELECT * FROM orders WHERE customer_id = 42"
                " AND created_at > now() - interval '30 days'"
            ],
            [Expected("orders", frozenset({"customer_id", "created_at"}))],
        ),
        Case(
            "partial",
            [
                f"CREATE TABLE jobs AS SELECT g AS id, CASE WHEN g % 100 = 0 THEN NULL ELSE now()"
                f" END AS processed_at, md5(g::text) AS payload FROM generate_series(1, {rows}) g",
            ],
            ["SELECT * FROM jobs WHERE processed_at IS NULL ORDER BY id LIMIT 10"],
            [Expected("jobs", frozenset({"id"}), partial=True)],
        ),
        Case(
            "covering",
            [
                f"CREATE TABLE invoices AS SELECT g AS id, g % 3000 AS account_id,"
                f" g % 997 AS amount,"
                f" md5(g::text) AS memo FROM generate_series(1, {rows}) g",
                "VACUUM invoices",
            ],
            ["SELECT account_id, amount FROM invoices WHERE account_id = 7"],
            [Expected("invoices", frozenset({"account_id"}), include=True)],
        ),
        Case(
            "gin",
            [
                f"CREATE TABLE docs AS SELECT g AS id, jsonb_build_object('tag', g % 500) AS attrs"
                f" FROM generate_series(1, {rows}) g",
            ],
            ["SELECT id FROM docs WHERE attrs @> '{\"tag\": 5}'"],
            [Expected("docs", frozenset({"attrs"}), "gin")],
        ),
        Case(
            "brin",
            [
                f"CREATE TABLE readings AS SELECT g AS id,"
                f" timestamp '2026-01-01' + g * interval '1 s'"
                f" AS at, g % 10 AS sensor FROM generate_series(1, {big}) g",
            ],
            [
                "SELECT count(*) FROM readings WHERE at >= timestamp '2026-01-01 10:00'"
                " AND at < timestamp '2026-01-01 14:00'"
            ],
            [Expected("readings", frozenset({"at"}), "brin")],
        ),
        Case(
            "trap: unselective",
            [
                f"CREATE TABLE flags AS SELECT g AS id, g % 2 = 0 AS active, g % 3 AS kind"
                f" FROM generate_series(1, {rows}) g",
            ],
            ["SELECT count(*) FROM flags WHERE kind = 1", "SELECT * FROM flags WHERE active"],
        ),
        Case(
            "trap: tiny table",
            [
                "CREATE TABLE countries AS SELECT g AS id, 'c' || g AS code"
                " FROM generate_series(1, 200) g",
            ],
            ["SELECT * FROM countries WHERE code = 'c7'"],
        ),
        Case(
            "trap: infix LIKE",
            [
                f"CREATE TABLE notes AS SELECT g AS id, md5(g::text) AS body"
                f" FROM generate_series(1, {rows}) g",
            ],
            ["SELECT * FROM notes WHERE body LIKE '%abc%'"],
        ),
        Case(
            "trap: full aggregate",
            [
                f"CREATE TABLE sales AS SELECT g AS id, g % 50 AS region, g % 1000 AS amount"
                f" FROM generate_series(1, {rows}) g",
            ],
            ["SELECT region, sum(amount) FROM sales GROUP BY region"],
        ),
    ]


# -- the Dexter-style baseline ----------------------------------------------------------------


def _dexter(conn: psycopg.Connection[Any], queries: list[str]) -> list[tuple[str, tuple[str, ...]]]:
    """Dexter's decision rule (lib/dexter/indexer.rb), on the same HypoPG."""
    found: list[tuple[str, tuple[str, ...]]] = []
    for sql in queries:
        tree = parser.parse_sql(sql)
        tables = {str(n.relname) for n in _nodes(tree) if isinstance(n, ast.RangeVar)}
        refs = {
            str(f.sval)
            for n in _nodes(tree)
            if isinstance(n, ast.ColumnRef)
            for f in n.fields or ()
            if isinstance(f, ast.String)
        }
        for table in tables:
            cols = [
                str(r[0])
                for r in conn.execute(
                    "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s)"
                    " AND attnum > 0 AND NOT attisdropped"
                    " AND format_type(atttypid, NULL) NOT IN ('json', 'jsonb')",
                    (table,),
                )
                if r[0] in refs
            ]
            conn.execute("SELECT hypopg_reset()")
            initial = _cost(conn, sql)
            if initial < 100:
                continue  # Dexter's min_cost
            singles = {_hypo(conn, table, (c,)): (c,) for c in cols}
            cost1, used1 = _cost(conn, sql), _used(conn, sql, singles)
            pairs = {_hypo(conn, table, (a, b)): (a, b) for a in cols for b in cols if a != b}
            cost2, used2 = _cost(conn, sql), _used(conn, sql, pairs)
            conn.execute("SELECT hypopg_reset()")
            if cost1 > 100 and cost2 < cost1 * 0.5 and len(used2) == 1:
                found.append((table, used2[0]))
            elif cost1 < initial * 0.5 and used1:
                found.append((table, used1[0]))
    return list(dict.fromkeys(found))


def _nodes(root: object) -> list[Any]:
    out: list[Any] = []
    stack = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Node):
            out.append(node)
            stack.extend(getattr(node, name) for name in node)
        elif isinstance(node, (tuple, list)):
            stack.extend(node)
    return out


def _hypo(conn: psycopg.Connection[Any], table: str, cols: tuple[str, ...]) -> int:
    row = conn.execute(
        "SELECT indexrelid FROM hypopg_create_index(%s)",
        (f"CREATE INDEX ON {table} ({', '.join(cols)})",),
    ).fetchone()
    assert row is not None
    return int(row[0])


def _plan(conn: psycopg.Connection[Any], sql: str) -> Any:
    row = conn.execute(f"EXPLAIN (FORMAT JSON) {sql}").fetchone()
    assert row is not None
    return row[0][0]["Plan"]


def _cost(conn: psycopg.Connection[Any], sql: str) -> float:
    return float(_plan(conn, sql)["Total Cost"])


def _used(
    conn: psycopg.Connection[Any], sql: str, hypo: Mapping[int, tuple[str, ...]]
) -> list[tuple[str, ...]]:
    text = str(_plan(conn, sql))
    return [cols for oid, cols in hypo.items() if f"<{oid}>" in text]


# -- scoring ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Found:
    """One contender's suggestion, reduced to what is compared with the labels."""

    table: str
    method: str
    keys: frozenset[str]
    partial: bool
    include: bool
    label: str


def _found(s: IndexSuggestion) -> Found:
    c = s.candidate
    keys = frozenset(k.split(" ")[0].strip("()") for k in c.columns)
    label = s.ddl.removeprefix("CREATE INDEX CONCURRENTLY ON ").rstrip(";")
    return Found(c.table, c.method, keys, c.where is not None, bool(c.include), label)


def _matches(f: Found, e: Expected) -> bool:
    return (
        f.table == e.table
        and f.method == e.method
        and f.keys == e.columns
        and (f.partial or not e.partial)
        and (f.include or not e.include)
    )


def _score(found: list[Found], expected: list[Expected]) -> tuple[int, int, int]:
    tp = sum(1 for e in expected if any(_matches(f, e) for f in found))
    fp = sum(1 for f in found if not any(_matches(f, e) for e in expected))
    return tp, fp, len(expected) - tp


def _pr(tp: int, fp: int, fn: int) -> tuple[str, str]:
    precision = f"{tp / (tp + fp):.2f}" if tp + fp else "n/a"
    recall = f"{tp / (tp + fn):.2f}" if tp + fn else "n/a"
    return precision, recall


def _timed(conn: psycopg.Connection[Any], sql: str, runs: int) -> float:
    times = []
    for _ in range(runs):
        row = conn.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}").fetchone()
        assert row is not None
        times.append(float(row[0][0]["Execution Time"]))
    return statistics.median(times)


# -- the run ----------------------------------------------------------------------------------


def _with_stack(hypopg: bool, body: Callable[[LocalStack], str]) -> str:
    previous = os.environ.get("HOTPATH_PG_BIN")
    if hypopg:
        os.environ["HOTPATH_PG_BIN"] = PG15_BIN
    try:
        stack = LocalStack(replicas=0, redis=False).start()
    finally:
        if hypopg:
            if previous is None:
                os.environ.pop("HOTPATH_PG_BIN", None)
            else:
                os.environ["HOTPATH_PG_BIN"] = previous
    try:
        return body(stack)
    finally:
        stack.stop()


def _accuracy(stack: LocalStack, quick: bool, hypopg: bool) -> str:
    rows = 20_000 if quick else 100_000
    runs = 3 if quick else 5
    totals: dict[str, list[int]] = {}
    per_case: list[str] = []
    speed: list[str] = []
    for number, case in enumerate(_cases(rows)):
        name = f"case{number}"
        with stack.primary.connect() as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        url = stack.primary.url_for(name)
        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            for sql in case.setup:
                conn.execute(sql)
            conn.execute("ANALYZE")
            if hypopg:
                conn.execute("CREATE EXTENSION hypopg")
            suggested: dict[str, list[IndexSuggestion]] = {}
            if hypopg:
                suggested["hotpath"] = advise_indexes(url, case.queries).suggestions
            suggested["hotpath heuristic"] = advise_indexes(
                url, case.queries, use_hypopg=False
            ).suggestions
            results = {name: [_found(s) for s in found] for name, found in suggested.items()}
            if hypopg:
                results["dexter-style"] = [
                    Found(t, "btree", frozenset(c), False, False, f"{t} ({', '.join(c)})")
                    for t, c in _dexter(conn, case.queries)
                ]
            cells = []
            for contender, found in results.items():
                tp, fp, fn = _score(found, case.expected)
                shown = "; ".join(f.label for f in found)
                acc = totals.setdefault(contender, [0, 0, 0])
                acc[0] += tp
                acc[1] += fp
                acc[2] += fn
                cells.append(f"{shown or '—'} ({tp}/{fp}/{fn})")
            expected = (
                ", ".join(
                    f"{e.table} {e.method}({', '.join(sorted(e.columns))})"
                    f"{' partial' if e.partial else ''}"
                    f"{' include' if e.include else ''}"
                    for e in case.expected
                )
                or "none (trap)"
            )
            per_case.append(f"| {case.name} | {expected} | " + " | ".join(cells) + " |")
            best = suggested.get("hotpath") or suggested["hotpath heuristic"]
            if best:
                before = [_timed(conn, q, runs) for q in case.queries]
                for s in best:
                    conn.execute(s.candidate.definition(concurrently=False))
                conn.execute("ANALYZE")
                after = [_timed(conn, q, runs) for q in case.queries]
                for q, b, a in zip(case.queries, before, after, strict=True):
                    speed.append(
                        f"| {case.name} | `{' '.join(q.split())[:70]}` | {b:,.2f} | "
                        f"{a:,.2f} | {b / max(a, 1e-3):,.1f}x |"
                    )
        with stack.primary.connect() as admin:
            admin.execute(f'DROP DATABASE "{name}"')
    head = " | ".join(totals)
    lines = [f"| case | expected | {head} |", "|---|---|" + "---|" * len(totals), *per_case]
    summary = [
        "| contender | TP | FP | FN | precision | recall |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for contender, (tp, fp, fn) in totals.items():
        p, r = _pr(tp, fp, fn)
        summary.append(f"| {contender} | {tp} | {fp} | {fn} | {p} | {r} |")
    console.print("\n".join(summary))
    return (
        f"### index advice: precision and recall ({rows:,} rows per table)\n\n"
        + "\n".join(summary)
        + "\n\nPer case (suggestions, then TP/FP/FN):\n\n"
        + "\n".join(lines)
        + "\n\n### real speedup of hotpath's suggestions (EXPLAIN ANALYZE, median ms)\n\n"
        + "| case | statement | before | after | speedup |\n|---|---|---:|---:|---:|\n"
        + "\n".join(speed)
        + "\n"
    )


def _doctor_time(stack: LocalStack, quick: bool) -> str:
    with stack.primary.connect() as admin:
        admin.execute('CREATE DATABASE "thousand"')
    url = stack.primary.url_for("thousand")
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute("CREATE TABLE t0 (id int PRIMARY KEY)")
        conn.execute(
            "DO $$ BEGIN FOR i IN 1..999 LOOP EXECUTE format("
            "'CREATE TABLE t%s (id int PRIMARY KEY, parent_id int REFERENCES t0, v text,"
            " created_at timestamptz DEFAULT now()); CREATE INDEX ON t%s (v)', i, i);"
            " END LOOP; END $$"
        )
        conn.execute("INSERT INTO t0 SELECT generate_series(1, 100)")
        conn.execute("ANALYZE")
    series = Series("doctor, 1,000 tables", note="all checks; 1,999 indexes, 999 FKs")
    findings = 0
    for _ in range(2 if quick else 5):
        began = time.perf_counter()
        found = diagnose(url)
        series.samples.append(time.perf_counter() - began)
        findings = len(found.findings)
    series.note += f"; {findings} findings"
    return "### doctor on a database with 1,000 tables\n\n" + report(
        "doctor run time", [series], baseline=series.name, unit="s"
    )


def run(quick: bool) -> str:
    hypopg = HYPOPG.exists() and Path(PG15_BIN).is_dir()
    note = (
        "PostgreSQL 15 + HypoPG (Debian)"
        if hypopg
        else "no HypoPG on this machine (apt-get install postgresql-15-hypopg): only the "
        "heuristic contender runs"
    )
    console.print(f"[bold]doctor[/]: {note}")
    accuracy = _with_stack(hypopg, lambda stack: _accuracy(stack, quick, hypopg))
    if hypopg:
        accuracy += "\n" + _with_stack(
            True, lambda stack: public_cases(stack, quick) + "\n" + scale(stack, quick)
        )
    timing = _with_stack(False, lambda stack: _doctor_time(stack, quick))
    return f"Server for the advice: {note}.\n\n{accuracy}\n{timing}\n"
