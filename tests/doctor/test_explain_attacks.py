"""`hotpath explain` under attack (issue 18, items 4 and 5), on a real server.

Each attack is one someone typed at `hotpath explain URL SQL [--analyze]` or passed to
`hotpath.doctor.explain`: several statements in one text (escaping the read-only transaction
with `commit; begin read write`), and volatile functions run by EXPLAIN ANALYZE. The victims are
real: a `victim` table that must stay empty, three idle sessions that must survive
`pg_terminate_backend`, a sequence, advisory locks, a table that must not be created.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

from hotpath.doctor import DoctorError, explain
from hotpath.doctor._cli import app
from hotpath.doctor._session import Session, libpq_url
from hotpath.plans import StatementSafety, statement_safety
from hotpath.testing import ModuleDatabase

from .conftest import connect

pytestmark = pytest.mark.faults
runner = CliRunner()

ESCAPE = (
    "select 1; commit; begin read write; insert into victim values ('x'); commit; "
    "insert into victim values ('y')"
)
KILL = (
    "select pg_terminate_backend(pid) from pg_stat_activity"
    " where application_name = 'explain_victim'"
)


@pytest.fixture(scope="module")
def db(hotpath_db: ModuleDatabase) -> str:
    with connect(hotpath_db.url) as conn:
        conn.execute(
            """
            CREATE TABLE victim (note text);
            CREATE TABLE keep AS SELECT g AS id FROM generate_series(1, 10) g;
            CREATE SEQUENCE tickets;
            CREATE FUNCTION evil() RETURNS int LANGUAGE plpgsql VOLATILE AS $$
            BEGIN INSERT INTO victim VALUES ('evil'); RETURN 1; END $$;
            CREATE VIEW evil_view AS SELECT evil() AS n;
            CREATE FUNCTION evil_eq(int, int) RETURNS bool LANGUAGE plpgsql VOLATILE AS $$
            BEGIN INSERT INTO victim VALUES ('operator'); RETURN $1 = $2; END $$;
            CREATE OPERATOR === (LEFTARG = int, RIGHTARG = int, FUNCTION = evil_eq);
            """
        )
    return hotpath_db.url


@pytest.fixture(autouse=True)
def victim_stays_empty(db: str) -> Iterator[None]:
    """After each test: nothing written, created or locked (reset first, so one test's damage
    never fails the next)."""
    yield
    with connect(db) as conn:
        found = conn.execute(
            "SELECT (SELECT count(*) FROM victim) AS victim, (SELECT count(*) FROM keep) AS keep,"
            " to_regclass('stolen') IS NOT NULL AS stolen,"
            " (SELECT is_called FROM tickets) AS ticket_taken,"
            " (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory') AS advisory_locks"
        ).fetchone()
        conn.execute("TRUNCATE victim")
        conn.execute("DROP TABLE IF EXISTS stolen")
        conn.execute("SELECT setval('tickets', 1, false)")
        conn.execute("DELETE FROM keep")
        conn.execute("INSERT INTO keep SELECT generate_series(1, 10)")
    assert found == (0, 10, False, False, 0)


@pytest.fixture
def idle_sessions(db: str) -> Iterator[list[psycopg.Connection[Any]]]:
    sessions = [
        psycopg.connect(libpq_url(db), autocommit=True, application_name="explain_victim")
        for _ in range(3)
    ]
    yield sessions
    for session in sessions:
        session.close()


def _alive(sessions: list[psycopg.Connection[Any]]) -> int:
    alive = 0
    for session in sessions:
        try:
            session.execute("SELECT 1")
            alive += 1
        except psycopg.OperationalError:
            pass
    return alive


# -- item 4: one statement, never more -------------------------------------------------------


def test_cli_refuses_several_statements_in_one_line_exit_2(db: str) -> None:
    for analyze in ([], ["--analyze"]):
        done = subprocess.run(
            [sys.executable, "-m", "hotpath", "explain", db, ESCAPE, *analyze],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 2, done.stdout + done.stderr
        assert done.stdout == ""
        assert done.stderr.strip().count("\n") == 0
        assert "several statements" in done.stderr


@pytest.mark.parametrize(
    "sql",
    [
        ESCAPE,
        "select 1;;insert into victim values ('x')",
        "insert into victim values ('x'); select 1",
        "select 1; do $$ begin insert into victim values ('x'); end $$",
    ],
)
def test_api_refuses_several_statements(db: str, sql: str) -> None:
    with pytest.raises(DoctorError, match="several statements"):
        explain(db, sql)
    with pytest.raises(DoctorError, match="several statements"):
        explain(db, sql, analyze=True)


@pytest.mark.parametrize(
    ("sql", "kind"),
    [
        ("do $$ begin insert into victim values ('x'); end $$", "DO"),
        ("copy victim from program 'echo x'", "COPY"),
        ("copy (select 1) to stdout", "COPY"),
        ("create table stolen (x int)", "CREATE"),
        ("commit", "TRANSACTION"),
    ],
)
def test_statements_explain_cannot_plan_are_refused_before_the_server(
    db: str, sql: str, kind: str
) -> None:
    with pytest.raises(DoctorError, match=f"this is {kind}"):
        explain(db, sql, analyze=True)
    result = runner.invoke(app, ["explain", db, sql])
    assert isinstance(result.exception, DoctorError)
    assert "\n" not in str(result.exception)


def test_the_server_refuses_several_statements_even_past_the_parser(db: str) -> None:
    """The belt under the parser: were pglast ever to read one statement where the server
    reads several, the extended protocol makes the server refuse them all."""
    forged = StatementSafety(True, None, "SelectStmt", ESCAPE)
    with (
        Session(db) as session,
        pytest.raises(psycopg.errors.SyntaxError, match="multiple"),
        session.rolled_back() as conn,
    ):
        session.plan(conn, forged)


def test_one_statement_with_semicolons_and_comments_still_plans(db: str) -> None:
    explained = explain(db, "  select * from keep where id = 3 ; -- the row\n")
    assert explained.sql.startswith("select * from keep where id = 3")
    assert not explained.analyzed


# -- item 5: EXPLAIN ANALYZE runs nothing with side effects --------------------------------


def test_analyze_does_not_terminate_sessions(
    db: str, idle_sessions: list[psycopg.Connection[Any]]
) -> None:
    explained = explain(db, KILL, analyze=True)
    assert not explained.analyzed
    assert explained.not_analyzed is not None
    assert "pg_terminate_backend()" in explained.not_analyzed
    assert "Actual Rows" not in str(explained.plan)
    assert _alive(idle_sessions) == 3


def test_cli_analyze_does_not_terminate_sessions_and_says_why(
    db: str, idle_sessions: list[psycopg.Connection[Any]]
) -> None:
    result = runner.invoke(app, ["explain", db, KILL, "--analyze"])
    assert result.exit_code == 0, result.output
    why = [line for line in result.output.splitlines() if line.startswith("ANALYZE not run")]
    assert len(why) == 1
    assert "pg_terminate_backend()" in why[0]
    assert _alive(idle_sessions) == 3


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("select nextval('tickets')", "volatile functions: nextval()"),
        ("select pg_advisory_lock(42)", "volatile functions: pg_advisory_lock()"),
        ("select evil()", "volatile functions: evil()"),
        ("select * from keep where evil() = 1", "volatile functions: evil()"),
        ("select * from evil_view", "volatile functions: evil()"),  # behind a view
        ("select * from keep where id === 3", "volatile functions: evil_eq()"),  # an operator
        ("select * from keep for update", "locks rows"),
        ("with x as (delete from keep returning *) select * from x", "modifies data"),
        ("select * into stolen from keep", "SELECT INTO"),
        ("insert into victim values ('x')", "not a SELECT"),
        ("delete from keep", "not a SELECT"),
        ("select * from keep where id = $1", "$n parameters"),
    ],
)
def test_analyze_refused_gives_the_plain_plan_and_the_reason(
    db: str, sql: str, reason: str
) -> None:
    explained = explain(db, sql, analyze=True)
    assert not explained.analyzed
    assert explained.not_analyzed is not None
    assert reason in explained.not_analyzed
    assert "Actual Rows" not in str(explained.plan)


def test_analyze_still_runs_a_plain_select(db: str) -> None:
    explained = explain(db, "select count(*) from keep where id > 3", analyze=True)
    assert explained.analyzed
    assert explained.not_analyzed is None
    assert "Actual Rows" in str(explained.plan)


# -- timeouts: the documented ones, SET LOCAL in a read-only transaction ----------------------


def test_every_doctor_query_is_read_only_with_its_timeouts_even_if_startup_options_are_lost(
    db: str,
) -> None:
    with Session(db) as session:
        # what a pooler that drops startup options (pgbouncer) would leave
        session.conn.execute("SET default_transaction_read_only = off")
        session.conn.execute("SET statement_timeout = 0")
        session.conn.execute("SET lock_timeout = 0")
        settings = session.row(
            "SELECT current_setting('transaction_read_only') AS read_only,"
            " current_setting('statement_timeout') AS statement,"
            " current_setting('lock_timeout') AS lock"
        )
        assert settings == {"read_only": "on", "statement": "5s", "lock": "1s"}
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            session.rows("INSERT INTO victim VALUES ('x')")


def test_explain_gives_up_on_a_lock_after_the_lock_timeout(db: str) -> None:
    with connect(db) as holder:
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE keep IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(DoctorError, match="lock timeout"):
            explain(db, "select * from keep", lock_timeout_ms=200)
        holder.execute("ROLLBACK")


def test_analyze_stops_at_the_statement_timeout(db: str) -> None:
    with pytest.raises(DoctorError, match="ran past the 100 ms statement_timeout"):
        explain(
            db,
            "select count(*) from generate_series(1, 200000000)",
            analyze=True,
            statement_timeout_ms=100,
        )


def test_plans_share_observes_verdicts() -> None:
    from hotpath.observe._fingerprint import shape_of

    for sql in (KILL, "select * from keep for update", ESCAPE, "select 1"):
        assert shape_of(sql).safety == statement_safety(sql)
