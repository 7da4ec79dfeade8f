"""hotpath.plans' verdict on running EXPLAIN (ANALYZE), shared by observe and doctor: what the
parse tree refuses, and the server query finding every volatile function a statement reaches
(by name, behind operators, aggregates, views and row-security policies), through each driver
observe and doctor use (psycopg, SQLAlchemy sync, SQLAlchemy + asyncpg)."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import create_async_engine

from hotpath.plans import (
    NotAnalyzed,
    analyze_refused_on_server,
    statement_safety,
    volatile_calls_sql,
)
from hotpath.testing import ModuleDatabase


@pytest.fixture(scope="module")
def db(hotpath_db: ModuleDatabase) -> ModuleDatabase:
    with psycopg.connect(hotpath_db.dsn, autocommit=True) as conn:
        conn.execute(
            """
            CREATE TABLE t (id int, owner text);
            CREATE FUNCTION bump() RETURNS int LANGUAGE sql VOLATILE AS 'SELECT 1';
            CREATE FUNCTION calm() RETURNS int LANGUAGE sql STABLE AS 'SELECT 1';
            CREATE SCHEMA app;
            CREATE VIEW app.inner_view AS SELECT bump() AS n;
            CREATE VIEW outer_view AS SELECT n FROM app.inner_view;
            CREATE VIEW calm_view AS SELECT calm() AS n, now() AS at;
            CREATE FUNCTION bump_eq(int, int) RETURNS bool LANGUAGE sql VOLATILE
                AS 'SELECT $1 = $2';
            CREATE OPERATOR =~= (LEFTARG = int, RIGHTARG = int, FUNCTION = bump_eq);
            CREATE FUNCTION bump_sum(int, int) RETURNS int LANGUAGE sql VOLATILE
                AS 'SELECT $1 + $2';
            CREATE AGGREGATE bumpy(int) (SFUNC = bump_sum, STYPE = int, INITCOND = '0');
            CREATE TABLE guarded (id int);
            ALTER TABLE guarded ENABLE ROW LEVEL SECURITY;
            CREATE POLICY p ON guarded USING (bump() = 1);
            """
        )
    return hotpath_db


CASES = [
    ("SELECT * FROM t WHERE id = 1", []),
    ("SELECT calm(), now(), count(*) FROM t", []),
    ("SELECT * FROM calm_view", []),
    ("SELECT bump()", ["bump"]),
    ("SELECT nextval('s')", ["nextval"]),
    ("SELECT * FROM outer_view", ["bump"]),  # a view on a view in another schema
    ("SELECT * FROM t WHERE id =~= 3", ["bump_eq"]),
    ("SELECT bumpy(id) FROM t", ["bump_sum"]),
    ("SELECT * FROM guarded", ["bump"]),  # its row-security policy calls it
    ("SELECT * FROM (SELECT * FROM outer_view) AS s", ["bump"]),
]


@pytest.mark.parametrize(("sql", "volatile"), CASES)
def test_volatile_functions_reached_psycopg(
    db: ModuleDatabase, sql: str, volatile: list[str]
) -> None:
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        row = conn.execute(
            volatile_calls_sql("pyformat"), statement_safety(sql).server_params()
        ).fetchone()
    assert row is not None
    assert sorted(row[0]) == volatile
    refused = analyze_refused_on_server("on", row[0])
    assert (refused is None) == (not volatile)


def test_the_same_query_through_sqlalchemy_sync_and_asyncpg(db: ModuleDatabase) -> None:
    query = text(volatile_calls_sql("named"))
    engine = create_engine(db.url)
    with engine.connect() as conn:
        sync = [
            sorted(conn.execute(query, statement_safety(sql).server_params()).scalar_one())
            for sql, _ in CASES
        ]
    engine.dispose()

    async def run() -> list[list[str]]:
        engine = create_async_engine(db.async_url)
        async with engine.connect() as conn:
            found = [
                sorted(
                    (await conn.execute(query, statement_safety(sql).server_params())).scalar_one()
                )
                for sql, _ in CASES
            ]
        await engine.dispose()
        return found

    expected = [volatile for _, volatile in CASES]
    assert sync == expected
    assert asyncio.run(run()) == expected


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("select 1; delete from t", NotAnalyzed.SEVERAL_STATEMENTS),
        ("do $$ begin end $$", NotAnalyzed.NOT_EXPLAINABLE),
        ("copy t to stdout", NotAnalyzed.NOT_EXPLAINABLE),
        ("selec 1", NotAnalyzed.UNPARSEABLE),
        ("update t set id = 1", NotAnalyzed.NOT_SELECT),
        ("select * from t for share", NotAnalyzed.ROW_LOCK),
        ("select * from (select * from t for update) s", NotAnalyzed.ROW_LOCK),
        ("with d as (delete from t returning *) select * from d", NotAnalyzed.MODIFYING_CTE),
        ("select * into t2 from t", NotAnalyzed.SELECT_INTO),
    ],
)
def test_the_parse_tree_refuses(sql: str, reason: NotAnalyzed) -> None:
    safety = statement_safety(sql)
    assert safety.not_analyzed is reason
    assert not safety.is_plain_select
    explainable = reason not in (
        NotAnalyzed.SEVERAL_STATEMENTS,
        NotAnalyzed.NOT_EXPLAINABLE,
        NotAnalyzed.UNPARSEABLE,
    )
    assert safety.explainable is explainable
    assert (safety.refusal is None) is explainable


def test_the_statement_alone_is_what_is_sent() -> None:
    safety = statement_safety("\n  select 'é' from t where id = $2 ;  ")
    assert safety.statement == "select 'é' from t where id = $2"
    assert safety.parameters == 2
    assert safety.is_plain_select


def test_a_server_answer_that_is_not_confirmed_refuses() -> None:
    assert analyze_refused_on_server("off", []) == NotAnalyzed.NOT_READ_ONLY.value
    assert analyze_refused_on_server("on", None) == NotAnalyzed.VOLATILE.value
    assert analyze_refused_on_server("on", []) is None
