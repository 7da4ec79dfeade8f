"""Index advice on cases written by others, scored against their expected answers and by the
real speedup of the indexes created.

- **Dexter** (ankane/dexter, ``test/statement_test.rb`` on ``test/support/schema.sql``): each
  case re-expressed as SQL with the index Dexter's suite expects (none for its traps).
- **supabase index_advisor** (``test/sql/*.sql`` with ``test/expected/*.out``): the same, with
  rows added to its empty tables so that an index can matter.
- **pagila-style**: the DVD-rental schema (customer, film, inventory, rental, and payment
  partitioned by month) with generated data and ten typical statements, against the indexes
  a DBA would write for them.
- **scale**: Dexter's batching case (a 100-column table, every pair of columns filtered
  together: 4,950 statements), advised in one run.

Each expected answer and each of hotpath's suggestions is created for real, one set at a
time, and the workload is timed with EXPLAIN ANALYZE (median of 3) before and after.
"""

from __future__ import annotations

import itertools
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg

from hotpath.doctor import IndexAdvice, advise_indexes
from hotpath.doctor._session import libpq_url
from hotpath.stack import LocalStack

from ._harness import console


@dataclass
class PublicCase:
    name: str
    sql: str  # what the advisor is given
    expected: list[str]  # "table (col, ...)" labels; empty: no index expected
    timed: str | None = None  # the statement with values, when ``sql`` has $n parameters


@dataclass
class Suite:
    name: str
    source: str
    setup: list[str]
    cases: list[PublicCase] = field(default_factory=list)


def _suites(rows: int) -> list[Suite]:
    dexter = Suite(
        "dexter",
        "ankane/dexter test/statement_test.rb",
        [
            "CREATE TABLE posts (id int, blog_id int, user_id int, json json, jsonb jsonb,"
            " indexed int, val text)",
            f"INSERT INTO posts (id, blog_id, user_id, indexed, val) SELECT n, n % 1000, n % 10,"
            f" n, md5(n::text) FROM generate_series(1, {rows}) n",
            "CREATE INDEX ON posts (indexed)",
            "CREATE VIEW posts_view AS SELECT id AS view_id FROM posts",
            "CREATE MATERIALIZED VIEW posts_materialized AS SELECT * FROM posts",
            'CREATE SCHEMA "Bar"',
            'CREATE TABLE "Bar"."Foo" ("Id" int)',
            f'INSERT INTO "Bar"."Foo" SELECT * FROM generate_series(1, {rows})',
        ],
        [
            PublicCase("basic_index", "SELECT * FROM posts WHERE id = 1", ["posts (id)"]),
            PublicCase("basic_no_index", "SELECT * FROM posts", []),
            PublicCase(
                "multicolumn_order",
                "SELECT * FROM posts WHERE user_id = 1 ORDER BY blog_id LIMIT 1000",
                ["posts (user_id, blog_id)"],
            ),
            PublicCase(
                "update", "UPDATE posts SET user_id = 2 WHERE user_id = 1", ["posts (user_id)"]
            ),
            PublicCase("delete", "DELETE FROM posts WHERE user_id = 1", ["posts (user_id)"]),
            PublicCase("view", "SELECT * FROM posts_view WHERE view_id = 1", ["posts (id)"]),
            PublicCase(
                "materialized_view",
                "SELECT * FROM posts_materialized WHERE id = 1",
                ["posts_materialized (id)"],
            ),
            PublicCase(
                "cte",
                "WITH cte AS (SELECT * FROM posts WHERE id = 1) SELECT * FROM cte",
                ["posts (id)"],
            ),
            PublicCase(
                "cte_fence",
                "WITH cte AS (SELECT * FROM posts) SELECT * FROM cte WHERE id = 1",
                ["posts (id)"],
            ),
            PublicCase(
                "materialized_cte",
                "WITH cte AS MATERIALIZED (SELECT * FROM posts) SELECT * FROM cte WHERE id = 1",
                [],
            ),
            PublicCase(
                "not_materialized_cte",
                "WITH cte AS NOT MATERIALIZED (SELECT * FROM posts) SELECT * FROM cte WHERE id = 1",
                ["posts (id)"],
            ),
            PublicCase(
                "order", "SELECT * FROM posts ORDER BY user_id DESC LIMIT 10", ["posts (user_id)"]
            ),
            PublicCase(
                "order_multiple",
                "SELECT * FROM posts ORDER BY user_id, blog_id LIMIT 10",
                ["posts (user_id, blog_id)"],
            ),
            PublicCase(
                "schema", 'SELECT * FROM "Bar"."Foo" WHERE "Id" = 10000', ['"Bar"."Foo" ("Id")']
            ),
            PublicCase(
                "normalized",
                "SELECT * FROM posts WHERE id = $1",
                ["posts (id)"],
                "SELECT * FROM posts WHERE id = 1",
            ),
            PublicCase("indexed", "SELECT * FROM posts WHERE indexed = 1", []),
            PublicCase(
                "expression (issue 19)",
                "SELECT * FROM posts WHERE md5(val) = md5('42')",
                ["posts ((md5(val)))"],
            ),
        ],
    )
    supabase = Suite(
        "index_advisor",
        "supabase/index_advisor test/sql + test/expected",
        [
            "CREATE TABLE book_plain (id int, name text)",
            f"INSERT INTO book_plain SELECT g, 'b' || g FROM generate_series(1, {rows}) g",
            "CREATE TABLE book_json (id int, meta json)",
            f"INSERT INTO book_json SELECT g, '{{}}' FROM generate_series(1, {rows}) g",
            "CREATE TABLE author (id serial PRIMARY KEY, name text NOT NULL)",
            "CREATE TABLE publisher (id serial PRIMARY KEY, name text NOT NULL,"
            " corporate_address text)",
            "CREATE TABLE book (id serial PRIMARY KEY, author_id int NOT NULL REFERENCES"
            " author (id), publisher_id int NOT NULL REFERENCES publisher (id), title text)",
            "CREATE TABLE review (id serial PRIMARY KEY, book_id int REFERENCES book (id),"
            " body text NOT NULL)",
            f"INSERT INTO author (name) SELECT 'a' || g FROM generate_series(1, {rows // 10}) g",
            f"INSERT INTO publisher (name) SELECT 'p' || g FROM generate_series(1, {rows // 100})"
            " g",
            f"INSERT INTO book (author_id, publisher_id, title) SELECT 1 + g % {rows // 10},"
            f" 1 + g % {rows // 100}, 't' || g FROM generate_series(1, {rows}) g",
            f"INSERT INTO review (book_id, body) SELECT 1 + g % {rows}, 'r' || g"
            f" FROM generate_series(1, {rows * 2}) g",
        ],
        [
            PublicCase(
                "integration",
                "select * from book_plain where id = $1",
                ["book_plain (id)"],
                "select * from book_plain where id = 7",
            ),
            PublicCase(
                "issue_1 (json column)",
                "select * from book_json where id = $1",
                ["book_json (id)"],
                "select * from book_json where id = 7",
            ),
            PublicCase(
                "multi_index",
                "select book.id, book.title, publisher.name as publisher_name, author.name as"
                " author_name, review.body review_body from book join publisher on"
                " book.publisher_id = publisher.id join author on book.author_id = author.id"
                " join review on book.id = review.book_id where author.id = $1 and"
                " publisher.id = $2",
                ["book (author_id)", "book (publisher_id)", "review (book_id)"],
                "select book.id, book.title, publisher.name as publisher_name, author.name as"
                " author_name, review.body review_body from book join publisher on"
                " book.publisher_id = publisher.id join author on book.author_id = author.id"
                " join review on book.id = review.book_id where author.id = 11 and"
                " publisher.id = 11",
            ),
            PublicCase(
                "postgrest_query",
                "SELECT $6::bigint AS total_result_set, pg_catalog.count(_postgrest_t) AS"
                " page_total FROM (SELECT 1 AS x LIMIT $2 OFFSET $3) _postgrest_t",
                [],
            ),
        ],
    )
    months = [f"2024-{m:02d}-01" for m in range(1, 8)]
    pagila = Suite(
        "pagila-style",
        "the pagila DVD-rental schema, generated data",
        [
            "CREATE TABLE customer (customer_id serial PRIMARY KEY, store_id int NOT NULL,"
            " first_name text, last_name text NOT NULL, email text, address_id int,"
            " active bool DEFAULT true)",
            "CREATE TABLE film (film_id serial PRIMARY KEY, title text NOT NULL,"
            " release_year int, rating text, length int)",
            "CREATE TABLE inventory (inventory_id serial PRIMARY KEY, film_id int NOT NULL"
            " REFERENCES film, store_id int NOT NULL)",
            "CREATE TABLE rental (rental_id serial PRIMARY KEY, rental_date timestamptz NOT NULL,"
            " inventory_id int NOT NULL REFERENCES inventory, customer_id int NOT NULL"
            " REFERENCES customer, return_date timestamptz, staff_id int NOT NULL)",
            "CREATE TABLE payment (payment_id serial, customer_id int NOT NULL, rental_id int,"
            " amount numeric(5, 2) NOT NULL, payment_date timestamptz NOT NULL)"
            " PARTITION BY RANGE (payment_date)",
            *(
                f"CREATE TABLE payment_p{start[:7].replace('-', '_')} PARTITION OF payment"
                f" FOR VALUES FROM ('{start}') TO ('{end}')"
                for start, end in itertools.pairwise(months)
            ),
            f"INSERT INTO customer (store_id, first_name, last_name, email, address_id)"
            f" SELECT 1 + g % 2, 'F' || g, 'SMITH' || (g % {rows // 10}), 'c' || g || '@x.io',"
            f" g FROM generate_series(1, {rows // 5}) g",
            f"INSERT INTO film (title, release_year, rating, length) SELECT 'Film ' || g,"
            f" 2000 + g % 20, (ARRAY['G','PG','R'])[1 + g % 3], 60 + g % 120"
            f" FROM generate_series(1, {rows // 20}) g",
            f"INSERT INTO inventory (film_id, store_id) SELECT 1 + g % {rows // 20}, 1 + g % 2"
            f" FROM generate_series(1, {rows // 2}) g",
            f"INSERT INTO rental (rental_date, inventory_id, customer_id, return_date, staff_id)"
            f" SELECT timestamptz '2024-01-01' + g * interval '50 s', 1 + g % {rows // 2},"
            f" 1 + (g * 7) % {rows // 5}, CASE WHEN g % 50 = 0 THEN NULL ELSE"
            f" timestamptz '2024-01-02' + g * interval '50 s' END, 1 + g % 2"
            f" FROM generate_series(1, {rows * 3}) g",
            f"INSERT INTO payment (customer_id, rental_id, amount, payment_date) SELECT"
            f" 1 + (g * 7) % {rows // 5}, g, (g % 10) + 0.99, timestamptz '2024-01-01'"
            f" + g * interval '50 s' FROM generate_series(1, {rows * 3}) g",
        ],
        [
            PublicCase(
                "customer by last name",
                "SELECT * FROM customer WHERE last_name = 'SMITH42'",
                ["customer (last_name)"],
            ),
            PublicCase(
                "a customer's latest rentals",
                "SELECT * FROM rental WHERE customer_id = 42 ORDER BY rental_date DESC LIMIT 10",
                ["rental (customer_id, rental_date)"],
            ),
            PublicCase(
                "titles a customer rented",
                "SELECT f.title FROM rental r JOIN inventory i ON i.inventory_id = r.inventory_id"
                " JOIN film f ON f.film_id = i.film_id WHERE r.customer_id = 7",
                ["rental (customer_id)"],
            ),
            PublicCase(
                "a customer's payments",
                "SELECT sum(amount) FROM payment WHERE customer_id = 42",
                ["payment (customer_id)"],
            ),
            PublicCase(
                "open rentals of a customer",
                "SELECT * FROM rental WHERE return_date IS NULL AND customer_id = 9",
                ["rental (customer_id)"],
            ),
            PublicCase(
                "copies of a film in a store",
                "SELECT count(*) FROM inventory WHERE film_id = 100 AND store_id = 1",
                ["inventory (film_id, store_id)"],
            ),
            PublicCase(
                "film by title, any case",
                "SELECT * FROM film WHERE lower(title) = 'film 77'",
                ["film ((lower(title)))"],
            ),
            PublicCase(
                "payments in a month (partition key as a parameter)",
                "SELECT * FROM payment WHERE payment_date >= $1 AND payment_date < $2"
                " AND customer_id = $3",
                ["payment (customer_id, payment_date)"],
                "SELECT * FROM payment WHERE payment_date >= '2024-03-01'"
                " AND payment_date < '2024-04-01' AND customer_id = 3",
            ),
            PublicCase(
                "customers who rented today",
                "SELECT c.email FROM customer c WHERE c.customer_id IN (SELECT customer_id FROM"
                " rental WHERE rental_date > timestamptz '2024-06-10' - interval '1 day')",
                ["rental (rental_date)"],
            ),
            PublicCase(
                "delete a rental's payments",
                "DELETE FROM payment WHERE rental_id = 5",
                ["payment (rental_id)"],
            ),
        ],
    )
    return [dexter, supabase, pagila]


def _label(advice: IndexAdvice) -> list[str]:
    out = []
    for s in advice.suggestions:
        c = s.candidate
        out.append(f"{c.table} ({', '.join(k.removesuffix(' DESC') for k in c.key_names)})")
    return out


def _timed(conn: psycopg.Connection[Any], sql: str) -> float:
    times = []
    for _ in range(3):
        with conn.transaction(force_rollback=True):  # DELETE/UPDATE run, then rolled back
            row = conn.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}").fetchone()
        assert row is not None
        times.append(float(row[0][0]["Execution Time"]))
    return statistics.median(times)


def _workload_ms(conn: psycopg.Connection[Any], cases: list[PublicCase]) -> dict[str, float]:
    return {c.name: _timed(conn, c.timed or c.sql) for c in cases if c.timed or "$" not in c.sql}


def _with_indexes(
    conn: psycopg.Connection[Any], ddls: list[str], cases: list[PublicCase]
) -> dict[str, float]:
    made = []
    for ddl in ddls:
        before = {r[0] for r in conn.execute("SELECT indexrelid FROM pg_index").fetchall()}
        conn.execute(ddl)
        after = {r[0] for r in conn.execute("SELECT indexrelid FROM pg_index").fetchall()}
        made += list(after - before)
    conn.execute("ANALYZE")
    try:
        return _workload_ms(conn, cases)
    finally:
        names = conn.execute(
            "SELECT indexrelid::regclass::text FROM pg_index WHERE indexrelid = ANY(%s)"
            " AND NOT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = indexrelid)",
            (made,),
        ).fetchall()
        for (index,) in names:
            conn.execute(f"DROP INDEX IF EXISTS {index}")


def _expected_ddl(label: str) -> str:
    table, columns = label.split(" (", 1)
    return f"CREATE INDEX ON {table} ({columns}"


def public_cases(stack: LocalStack, quick: bool) -> str:
    rows = 20_000 if quick else 100_000
    lines = [
        "| suite | case | expected | hotpath | match | before ms | expected's ms | hotpath's ms |",
        "|---|---|---|---|---|---:|---:|---:|",
    ]
    totals: dict[str, list[float]] = {}
    agree = 0
    count = 0
    for number, suite in enumerate(_suites(rows)):
        name = f"public{number}"
        with stack.primary.connect() as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        url = stack.primary.url_for(name)
        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION hypopg")
            for sql in suite.setup:
                conn.execute(sql)
            conn.execute("ANALYZE")
            answers = {c.name: advise_indexes(url, [c.sql]) for c in suite.cases}
            before = _workload_ms(conn, suite.cases)
            for case in suite.cases:
                found = _label(answers[case.name])
                match = sorted(found) == sorted(case.expected)
                agree += match
                count += 1
                ddls = [
                    s.candidate.definition(concurrently=False)
                    for s in answers[case.name].suggestions
                ]
                mine = _with_indexes(conn, ddls, [case]) if ddls else before
                theirs = (
                    _with_indexes(conn, [_expected_ddl(e) for e in case.expected], [case])
                    if case.expected
                    else before
                )
                b = before.get(case.name)
                cells = [
                    f"{b:,.2f}" if b is not None else "—",
                    f"{theirs.get(case.name, 0):,.2f}" if b is not None else "—",
                    f"{mine.get(case.name, 0):,.2f}" if b is not None else "—",
                ]
                if b is not None:
                    acc = totals.setdefault(suite.name, [0.0, 0.0, 0.0])
                    acc[0] += b
                    acc[1] += theirs.get(case.name, 0)
                    acc[2] += mine.get(case.name, 0)
                lines.append(
                    f"| {suite.name} | {case.name} | {'; '.join(case.expected) or 'none'} | "
                    f"{'; '.join(found) or 'none'} | {'yes' if match else 'no'} | "
                    + " | ".join(cells)
                    + " |"
                )
        with stack.primary.connect() as admin:
            admin.execute(f'DROP DATABASE "{name}"')
    summary = [
        "| suite | workload before ms | with expected indexes | with hotpath's |",
        "|---|---:|---:|---:|",
    ]
    for suite_name, (b, t, m) in totals.items():
        summary.append(
            f"| {suite_name} | {b:,.1f} | {t:,.1f} ({b / max(t, 1e-3):,.0f}x) |"
            f" {m:,.1f} ({b / max(m, 1e-3):,.0f}x) |"
        )
    console.print(f"public cases: hotpath agrees with the expected answer in {agree}/{count}")
    return (
        f"### index advice on public cases ({rows:,} rows per main table)\n\n"
        f"hotpath's answer equals the expected one in **{agree} of {count}** cases.\n\n"
        + "\n".join(summary)
        + "\n\n"
        + "\n".join(lines)
        + "\n"
    )


def scale(stack: LocalStack, quick: bool) -> str:
    """Dexter's batching case: every pair of 100 columns filtered together."""
    columns = 100
    with stack.primary.connect() as admin:
        admin.execute('CREATE DATABASE "scale"')
    url = stack.primary.url_for("scale")
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION hypopg")
        conn.execute("CREATE TABLE t (" + ", ".join(f"c{i:02d} int" for i in range(columns)) + ")")
        conn.execute(
            "INSERT INTO t SELECT "
            + ", ".join(["n"] * columns)
            + " FROM generate_series(1, 2000) n"
        )
        conn.execute("ANALYZE t")
    statements = [
        f"SELECT * FROM t WHERE c{i:02d} = 0 AND c{j:02d} = 1"
        for i in range(columns)
        for j in range(i + 1, columns)
    ]
    began = time.perf_counter()
    advice = advise_indexes(url, statements)
    seconds = time.perf_counter() - began
    served = len(statements) - len(advice.unserved) - len(advice.unanalysed)
    console.print(f"scale: {len(statements):,} statements in {seconds:.1f} s")
    return (
        "### advise at scale (Dexter's batching case)\n\n"
        "| statements | seconds | indexes suggested | statements served | unanalysed |\n"
        "|---:|---:|---:|---:|---:|\n"
        f"| {len(statements):,} | {seconds:,.1f} | {len(advice.suggestions)} | {served:,} |"
        f" {len(advice.unanalysed)} |\n"
    )
