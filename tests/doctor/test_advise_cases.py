"""The advisor on statements written by others: Dexter's and supabase index_advisor's test
cases (re-expressed here), views, CTEs, quoted names, typed parameters, partitions, joins
that need several indexes at once, write-heavy tables, and the role's limits. PostgreSQL 15
with HypoPG validates; the embedded PostgreSQL 18 (no HypoPG) gives the heuristic answer."""

from __future__ import annotations

import secrets
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from hotpath.doctor import IndexAdvice, advise_indexes
from hotpath.doctor._cli import app
from hotpath.testing import ModuleDatabase

from .conftest import connect, flush_stats

runner = CliRunner()

# Dexter's test schema (test/support/schema.sql), re-expressed: posts of 100,000 rows, a view
# renaming a column, a quoted mixed-case schema/table/column; plus a text column for md5()
SCHEMA = [
    "CREATE TABLE posts (id int, blog_id int, user_id int, val text, indexed int)",
    "INSERT INTO posts SELECT n, n % 1000, n % 10, md5(n::text), n"
    " FROM generate_series(1, 100000) n",
    "CREATE INDEX ON posts (indexed)",
    "CREATE VIEW posts_view AS SELECT id AS view_id, user_id FROM posts",
    'CREATE SCHEMA "Bar"',
    'CREATE TABLE "Bar"."Foo" ("Id" int, "order" int)',
    'INSERT INTO "Bar"."Foo" SELECT n, n FROM generate_series(1, 100000) n',
    # supabase index_advisor's multi_index case, with rows in it
    "CREATE TABLE author (id serial PRIMARY KEY, name text NOT NULL)",
    "CREATE TABLE publisher (id serial PRIMARY KEY, name text NOT NULL)",
    "CREATE TABLE book (id serial PRIMARY KEY, author_id int NOT NULL REFERENCES author (id),"
    " publisher_id int NOT NULL REFERENCES publisher (id), title text)",
    "CREATE TABLE review (id serial PRIMARY KEY, book_id int REFERENCES book (id),"
    " body text NOT NULL)",
    "INSERT INTO author (name) SELECT 'a' || g FROM generate_series(1, 20000) g",
    "INSERT INTO publisher (name) SELECT 'p' || g FROM generate_series(1, 2000) g",
    "INSERT INTO book (author_id, publisher_id, title) SELECT 1 + g % 20000, 1 + g % 2000,"
    " 't' || g FROM generate_series(1, 200000) g",
    "INSERT INTO review (book_id, body) SELECT 1 + g % 200000, 'r' || g"
    " FROM generate_series(1, 400000) g",
    # a table partitioned by its time column, queried by it as a parameter
    "CREATE TABLE events (id int, tenant int, at date) PARTITION BY RANGE (at)",
    "CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')",
    "CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')",
    "INSERT INTO events SELECT g, g % 1000, date '2024-01-01' + (g % 700)"
    " FROM generate_series(1, 200000) g",
    "CREATE TABLE wide AS SELECT g AS id, "
    + ", ".join(f"g % {i + 7} AS c{i:02d}" for i in range(40))
    + " FROM generate_series(1, 5000) g",
    "ANALYZE",
]
JOIN = (
    "SELECT book.id, book.title, publisher.name AS publisher_name, author.name AS author_name,"
    " review.body AS review_body FROM book JOIN publisher ON book.publisher_id = publisher.id"
    " JOIN author ON book.author_id = author.id JOIN review ON book.id = review.book_id"
    " WHERE author.id = $1 AND publisher.id = $2"
)


def _database(url: str) -> str:
    name = f"cases_{secrets.token_hex(3)}"
    with connect(url) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = url.rsplit("/", 1)[0] + "/" + name
    with connect(url) as conn:
        for sql in SCHEMA:
            conn.execute(sql)
    return url


@pytest.fixture(scope="module")
def pg15(pg15_url: str) -> str:
    url = _database(pg15_url)
    with connect(url) as conn:
        conn.execute("CREATE EXTENSION hypopg")
    return url


@pytest.fixture(scope="module")
def pg18(hotpath_db: ModuleDatabase) -> str:
    return _database(hotpath_db.url)


def ddls(advice: IndexAdvice) -> list[str]:
    return [s.ddl for s in advice.suggestions]


def one(advice: IndexAdvice) -> str:
    [ddl] = ddls(advice)
    return ddl


def test_dexter_statement_cases(pg15: str) -> None:
    """Dexter's test/statement_test.rb, one case at a time, with its expected index."""
    posts_id = "CREATE INDEX CONCURRENTLY ON posts (id);"
    for sql in (
        "SELECT * FROM posts WHERE id = 1",
        "SELECT * FROM posts WHERE id = $1",
        "SELECT * FROM posts_view WHERE view_id = 1",
        "WITH cte AS (SELECT * FROM posts WHERE id = 1) SELECT * FROM cte",
        "WITH cte AS (SELECT * FROM posts) SELECT * FROM cte WHERE id = 1",
        "WITH cte AS NOT MATERIALIZED (SELECT * FROM posts) SELECT * FROM cte WHERE id = 1",
    ):
        assert one(advise_indexes(pg15, [sql])) == posts_id, sql
    assert one(
        advise_indexes(pg15, ["SELECT * FROM posts WHERE user_id = 1 ORDER BY blog_id LIMIT 1000"])
    ) == ("CREATE INDEX CONCURRENTLY ON posts (user_id, blog_id);")
    assert one(advise_indexes(pg15, ["SELECT * FROM posts ORDER BY user_id DESC LIMIT 10"])) == (
        "CREATE INDEX CONCURRENTLY ON posts (user_id DESC);"
    )
    assert one(
        advise_indexes(pg15, ["SELECT * FROM posts ORDER BY user_id, blog_id LIMIT 10"])
    ) == ("CREATE INDEX CONCURRENTLY ON posts (user_id, blog_id);")
    # the CTE the planner does not inline: no index helps, and that is said
    fenced = advise_indexes(
        pg15, ["WITH cte AS MATERIALIZED (SELECT * FROM posts) SELECT * FROM cte WHERE id = 1"]
    )
    assert fenced.suggestions == []
    assert len(fenced.unserved) + len(fenced.unanalysed) == 1
    # an existing index serves it: rejected with the index named
    indexed = advise_indexes(pg15, ["SELECT * FROM posts WHERE indexed = 1"])
    assert indexed.suggestions == []
    assert any("posts_indexed_idx" in r.reason for r in indexed.rejected)
    for sql, why in (("SELECT 1", "no table"), ("SELECT +", "not parseable")):
        advice = advise_indexes(pg15, [sql])
        assert advice.suggestions == []
        assert [w for _, w in advice.unanalysed if why in w], advice.unanalysed


def test_order_by_position_and_alias(pg15: str, pg18: str) -> None:
    for url in (pg15, pg18):
        for sql in (
            "SELECT user_id AS u, blog_id FROM posts WHERE user_id = 3 ORDER BY 2 LIMIT 5",
            "SELECT user_id AS u, blog_id AS b FROM posts WHERE user_id = 3 ORDER BY b LIMIT 5",
        ):
            advice = advise_indexes(url, [sql])
            assert "CREATE INDEX CONCURRENTLY ON posts (user_id, blog_id);" in ddls(advice), (
                url,
                sql,
                advice.rejected,
            )


def test_views_and_ctes_without_hypopg(pg18: str) -> None:
    for sql in (
        "SELECT * FROM posts_view WHERE view_id = 1",
        "WITH cte AS NOT MATERIALIZED (SELECT * FROM posts) SELECT * FROM cte WHERE id = 1",
        "SELECT * FROM (SELECT id AS x FROM posts) s WHERE s.x = 1",
    ):
        assert "CREATE INDEX CONCURRENTLY ON posts (id);" in ddls(advise_indexes(pg18, [sql]))


def test_quoted_mixed_case_names_give_ddl_that_runs(pg15: str, pg18: str) -> None:
    sql = 'SELECT * FROM "Bar"."Foo" WHERE "Id" = 10000 ORDER BY "order" LIMIT 3'
    for url in (pg15, pg18):
        advice = advise_indexes(url, [sql])
        assert advice.unanalysed == []
        [ddl] = [d for d in ddls(advice) if '"Id"' in d]
        assert ddl.startswith('CREATE INDEX CONCURRENTLY ON "Bar"."Foo" ("Id"')
        with connect(url) as conn:
            conn.execute(ddl)  # it runs
            conn.execute('DROP INDEX "Bar"."Foo_Id_idx"' if "order" not in ddl else "SELECT 1")
            found = conn.execute(
                "SELECT indexrelid::regclass::text FROM pg_index"
                ' WHERE indrelid = \'"Bar"."Foo"\'::regclass'
            ).fetchall()
            for (name,) in found:
                conn.execute(f"DROP INDEX {name}")


def test_expression_index(pg15: str, pg18: str) -> None:
    sql = "SELECT * FROM posts WHERE md5(val) = md5('a7')"
    for url in (pg15, pg18):
        advice = advise_indexes(url, [sql])
        assert ddls(advice) == ["CREATE INDEX CONCURRENTLY ON posts ((md5(val)));"]
    validated = advise_indexes(pg15, [sql]).suggestions[0]
    assert validated.validated
    assert (validated.best_gain or 0) >= 0.3


def test_typed_literals_from_pg_stat_statements_are_planned(pg15: str) -> None:
    with connect(pg15) as conn:
        conn.execute("SELECT pg_stat_statements_reset()")
        for _ in range(2):
            conn.execute(
                "SELECT count(*) FROM events WHERE at > date '2025-06-01' - interval '1 day'"
                " AND tenant = 7"
            )
    advice = advise_indexes(pg15)
    events = [q for q, _ in advice.unanalysed if "events" in q]
    assert events == []
    stored = [s for s in advice.suggestions if s.candidate.table == "events"]
    assert stored, advice.unserved
    assert any("::interval" in e.sql for s in stored for e in s.effects)


def test_partition_key_as_parameter_and_ddl_that_runs_on_a_partitioned_table(pg15: str) -> None:
    advice = advise_indexes(pg15, ["SELECT * FROM events WHERE at = $1 AND tenant = $2"])
    [suggestion] = advice.suggestions
    assert suggestion.validated
    assert suggestion.candidate.table == "events"
    script = suggestion.script
    assert script[0].startswith("CREATE INDEX events_")
    assert " ON ONLY events " in script[0]
    assert sum("CREATE INDEX CONCURRENTLY" in line for line in script) == 2
    assert sum("ATTACH PARTITION" in line for line in script) == 2
    assert "SHARE lock" in suggestion.note
    with connect(pg15) as conn:
        for line in script:
            conn.execute(line)  # CONCURRENTLY outside a transaction block, as psql would
        valid = conn.execute(
            "SELECT bool_and(i.indisvalid), count(*) FROM pg_index i"
            " JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname LIKE 'events%%idx'"
        ).fetchone()
        assert valid == (True, 3)
        for (name,) in conn.execute(
            "SELECT relname FROM pg_class WHERE relname LIKE 'events%%idx' AND relkind = 'I'"
        ).fetchall():
            conn.execute(f"DROP INDEX {name}")


def test_join_needing_three_indexes_together(pg15: str) -> None:
    """supabase index_advisor's multi_index case: all three, or the plan barely moves."""
    advice = advise_indexes(pg15, [JOIN])
    assert sorted(ddls(advice)) == [
        "CREATE INDEX CONCURRENTLY ON book (author_id);",
        "CREATE INDEX CONCURRENTLY ON book (publisher_id);",
        "CREATE INDEX CONCURRENTLY ON review (book_id);",
    ]
    gains = {s.best_gain for s in advice.suggestions}
    assert len(gains) == 1
    assert (gains.pop() or 0) > 0.99
    assert all(len(s.together) == 2 for s in advice.suggestions)


def test_never_more_key_columns_than_the_server_allows(pg15: str, pg18: str) -> None:
    sql = "SELECT * FROM wide WHERE " + " AND ".join(f"c{i:02d} = 1" for i in range(40))
    for url in (pg15, pg18):
        advice = advise_indexes(url, [sql])
        widths = [len(s.candidate.columns) for s in advice.suggestions]
        assert widths, advice.unserved
        assert max(widths) <= 32
        assert advice.unanalysed == []


@pytest.mark.faults
def test_delete_index_weighed_by_the_real_write_rate(pg15: str) -> None:
    """Dexter's UPDATE/DELETE cases: the statement's own writes do not disqualify the index
    that finds its rows; the reason gives the table's real write rate."""
    with connect(pg15) as conn:
        conn.execute("CREATE TABLE doomed AS SELECT * FROM posts")
        conn.execute("ANALYZE doomed")
        for _ in range(3):
            conn.execute("DELETE FROM doomed WHERE user_id = 100")  # matches nothing: a scan
        flush_stats(conn)
    for sql in (
        "DELETE FROM doomed WHERE user_id = 1",
        "UPDATE doomed SET blog_id = 2 WHERE user_id = 1",
    ):
        advice = advise_indexes(pg15, [sql] * 3)
        [suggestion] = advice.suggestions
        assert suggestion.ddl == "CREATE INDEX CONCURRENTLY ON doomed (user_id);"
        assert "pg_stat_user_tables" in suggestion.note
        assert "every write to doomed also updates it" in suggestion.note
    # a table written far more than it is read, by its real counters: the bar rises
    with connect(pg15) as conn:
        conn.execute("CREATE TABLE churn AS SELECT * FROM posts LIMIT 2000")
        conn.execute("SELECT count(*) FROM churn")
        for _ in range(20):
            conn.execute("INSERT INTO churn SELECT * FROM posts LIMIT 2000")
        conn.execute("ANALYZE churn")
        flush_stats(conn)
    heavy = advise_indexes(pg15, ["SELECT * FROM churn WHERE id = 5"])
    reasons = (
        [r.reason for r in heavy.rejected]
        + [w for _, w in heavy.unserved]
        + [s.note for s in heavy.suggestions]
    )
    assert any(
        "required 90%" in r and "write-heavy churn (pg_stat_user_tables: 42,000 rows written" in r
        for r in reasons
    ), reasons


@pytest.mark.faults
def test_a_schema_the_role_cannot_use_is_skipped_with_its_reason(pg15: str) -> None:
    role = f"advise_limited_{secrets.token_hex(2)}"
    with connect(pg15) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS secret")
        conn.execute("CREATE TABLE IF NOT EXISTS secret.t AS SELECT 1 AS id")
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'pw'")
        conn.execute(f"GRANT SELECT ON posts TO {role}")
    host = pg15.split("@", 1)[1]
    url = f"postgresql://{role}:pw@{host}"
    advice = advise_indexes(
        url, ["SELECT * FROM secret.t WHERE id = 1", "SELECT * FROM posts WHERE id = 1"]
    )
    assert [s.ddl for s in advice.suggestions] == ["CREATE INDEX CONCURRENTLY ON posts (id);"]
    [(sql, why)] = advice.unanalysed
    assert sql == "SELECT * FROM secret.t WHERE id = 1"
    assert "permission denied for schema secret" in why
    assert f"GRANT USAGE ON SCHEMA secret TO {role};" in why
    # and the pg_stat_statements workload of a role without pg_read_all_stats says so
    none = advise_indexes(url)
    assert none.queries == 0
    assert any(f"GRANT pg_read_all_stats TO {role};" in n for n in none.notices)
    # so does `hotpath advise` (its workload is loaded before the advisor runs)
    cli = runner.invoke(app, ["advise", url, "--format", "json"])
    assert cli.exit_code == 0, cli.output
    notices = orjson.loads(cli.output)["notices"]
    assert any(f"GRANT pg_read_all_stats TO {role};" in n for n in notices), notices


@pytest.mark.faults
def test_one_unparseable_statement_in_a_workload_file_is_listed_and_the_rest_goes_on(
    pg15: str, tmp_path: Path
) -> None:
    workload = tmp_path / "workload.sql"
    workload.write_text(
        "SELECT * FROM posts WHERE id = 1;\nSELECT FROM WHERE +;\n"
        "SELECT * FROM posts WHERE md5(val) = md5('x');\n"
    )
    result = runner.invoke(app, ["advise", pg15, "--workload", str(workload), "--format", "json"])
    assert result.exit_code == 0, result.output
    data = orjson.loads(result.output)
    assert data["queries"] == 3
    assert [u["sql"] for u in data["unanalysed"]] == ["SELECT FROM WHERE +"]
    assert "not parseable" in data["unanalysed"][0]["reason"]
    assert {s["ddl"] for s in data["suggestions"]} == {
        "CREATE INDEX CONCURRENTLY ON posts (id);",
        "CREATE INDEX CONCURRENTLY ON posts ((md5(val)));",
    }
    text = runner.invoke(app, ["advise", pg15, "--workload", str(workload)])
    assert text.exit_code == 0
    assert "not analysed: SELECT FROM WHERE +" in " ".join(text.output.split())


def test_a_partitioned_table_in_its_own_schema_gets_a_script_that_runs(pg15: str) -> None:
    """The script is fk_without_index's (one builder, ``_ddl.index_statements``): indexes
    attached by schema-qualified name, and a name already taken in the schema not reused."""
    with connect(pg15) as conn:
        conn.execute('CREATE SCHEMA "Sales"')
        conn.execute(
            'CREATE TABLE "Sales"."Ledger" (id int, account int, at date) PARTITION BY RANGE (at)'
        )
        for year in (2024, 2025):
            conn.execute(
                f'CREATE TABLE "Sales"."Ledger_{year}" PARTITION OF "Sales"."Ledger"'
                f" FOR VALUES FROM ('{year}-01-01') TO ('{year + 1}-01-01')"
            )
        conn.execute(
            'INSERT INTO "Sales"."Ledger" SELECT g, g % 5000, date \'2024-01-01\' + (g % 700)'
            " FROM generate_series(1, 200000) g"
        )
        # a relation that already has the name the parent's index would get
        conn.execute('CREATE TABLE "Sales"."Ledger_account_idx" (x int)')
        conn.execute('ANALYZE "Sales"."Ledger"')
    try:
        advice = advise_indexes(pg15, ['SELECT * FROM "Sales"."Ledger" WHERE account = 42'])
        [suggestion] = advice.suggestions
        script = suggestion.script
        assert script[0] == 'CREATE INDEX "Ledger_account_idx1" ON ONLY "Sales"."Ledger" (account);'
        assert (
            'ALTER INDEX "Sales"."Ledger_account_idx1"'
            ' ATTACH PARTITION "Sales"."Ledger_2024_account_idx";'
        ) in script
        with connect(pg15) as conn:
            for line in script:
                conn.execute(line)  # as printed, outside a transaction block
            valid = conn.execute(
                "SELECT bool_and(i.indisvalid), count(*) FROM pg_index i"
                " JOIN pg_class c ON c.oid = i.indexrelid"
                " WHERE c.relnamespace = '\"Sales\"'::regnamespace"
            ).fetchone()
        assert valid == (True, 3)
    finally:
        with connect(pg15) as conn:
            conn.execute('DROP SCHEMA "Sales" CASCADE')
