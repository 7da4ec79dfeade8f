"""EXPLAIN never changes anything: the statements review found slipping through (volatile
functions, session locks, AUTOCOMMIT engines, multi-statement text), parameters kept out of
the log, and no EXPLAIN when the slow-query detector is off. Each test also shows the
danger for real where it can, so a check that cannot fail would be noticed."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, text

from hotpath.observe import Profiler
from hotpath.testing import ModuleDatabase


@pytest.fixture(scope="module")
def db(hotpath_db: ModuleDatabase) -> Iterator[Engine]:
    engine = create_engine(hotpath_db.url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            """
            CREATE TABLE audit (id serial PRIMARY KEY, note text);
            CREATE SEQUENCE ticket;
            CREATE FUNCTION slow_write(note text) RETURNS int LANGUAGE plpgsql AS $$
            BEGIN PERFORM pg_sleep(0.12); INSERT INTO audit (note) VALUES (note); RETURN 1; END
            $$;
            """
        )
    yield engine
    engine.dispose()


# Slow (~0.1-0.3 s) and calling no volatile function: what EXPLAIN ANALYZE may run.
SLOW_PURE = "SELECT count(*) FROM generate_series(1, 1500000) AS g WHERE g::text <> :value"


def _profile(engine: Engine, explain: str = "analyze", **options: object) -> Profiler:
    return Profiler(engine, slow_query_ms=50, explain=explain, **options)  # type: ignore[arg-type]


def _audit(engine: Engine) -> list[str]:
    with engine.begin() as conn:
        notes = [row[0] for row in conn.exec_driver_sql("SELECT note FROM audit ORDER BY id")]
        conn.exec_driver_sql("TRUNCATE audit")
    return notes


def test_volatile_functions_are_not_run_again(db: Engine) -> None:
    profiler = _profile(db)
    try:
        with profiler.scope("job"), db.connect() as conn:
            assert conn.execute(text("SELECT nextval('ticket'), pg_sleep(0.12)")).one()[0] == 1
        with db.connect() as conn:
            assert conn.execute(text("SELECT last_value FROM ticket")).scalar_one() == 1
        [(_, _, analyzed)] = [profiler.plan_for(fp) for fp in profiler._recorder.plans.explained()]  # type: ignore[misc]
        assert analyzed is False  # a plain plan instead
    finally:
        profiler.uninstrument()


def test_no_session_lock_outlives_the_explain(db: Engine) -> None:
    profiler = _profile(db)
    try:
        with profiler.scope("job"), db.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(42), pg_sleep(0.12)"))
            conn.execute(text("SELECT pg_advisory_unlock(42)"))
        with db.connect() as conn:
            held = conn.exec_driver_sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
            assert held.scalar_one() == 0
    finally:
        profiler.uninstrument()


def test_an_autocommit_engine_gets_a_real_read_only_transaction(
    db: Engine, hotpath_db: ModuleDatabase
) -> None:
    autocommit = create_engine(hotpath_db.url, isolation_level="AUTOCOMMIT")
    # EXPLAIN ANALYZE runs the slow SELECT again: on a machine busy enough to make its 0.3 s
    # take more than the default 2 s timeout, no plan would be kept (seen once at load 10)
    profiler = _profile(autocommit, explain_timeout_ms=30_000)
    try:
        _audit(db)
        with profiler.scope("job"), autocommit.connect() as conn:
            conn.execute(text("SELECT slow_write('app')"))
            conn.execute(text(SLOW_PURE), {"value": "x"}).all()
        assert _audit(db) == ["app"]  # written once, by the application
        analyzed = sorted(
            plan[2]
            for fp in profiler._recorder.plans.explained()
            if (plan := profiler.plan_for(fp))
        )
        assert analyzed == [False, True]  # the plain SELECT still analyzed, read-only
        # the danger: an AUTOCOMMIT connection has no transaction for a rollback to undo
        with autocommit.connect() as conn:
            conn.exec_driver_sql("BEGIN; EXPLAIN ANALYZE SELECT slow_write('explain'); ROLLBACK")
            conn.exec_driver_sql("EXPLAIN ANALYZE SELECT slow_write('autocommit')")
        assert _audit(db) == ["autocommit"]
    finally:
        profiler.uninstrument()
        autocommit.dispose()


def test_multi_statement_text_is_never_sent_to_explain(db: Engine) -> None:
    profiler = _profile(db, explain="plan")
    try:
        _audit(db)
        with profiler.scope("job"), db.connect() as conn:
            conn.exec_driver_sql("SELECT pg_sleep(0.12); INSERT INTO audit (note) VALUES ('once')")
            conn.commit()
        assert _audit(db) == ["once"]
        assert not profiler._recorder.plans.explained()
    finally:
        profiler.uninstrument()


def test_a_failed_explain_logs_no_parameter(db: Engine, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="hotpath.observe")
    profiler = _profile(db, explain_timeout_ms=20)  # the EXPLAIN ANALYZE times out
    try:
        with profiler.scope("job"), db.connect() as conn:
            conn.execute(text(SLOW_PURE), {"value": "hunter2"}).all()
        failures = [r.getMessage() for r in caplog.records if "EXPLAIN" in r.getMessage()]
        assert failures
        assert all("hunter2" not in message for message in failures)
        assert "QueryCanceled" in failures[0]
    finally:
        profiler.uninstrument()


def test_slow_query_off_means_no_explain(db: Engine) -> None:
    profiler = _profile(db, modes={"slow_query": "off"})
    try:
        with profiler.scope("job"), db.connect() as conn:
            conn.execute(text("SELECT pg_sleep(0.12)"))
        with profiler.assert_max_queries(10), db.connect() as conn:  # every detector off
            conn.execute(text("SELECT pg_sleep(0.11)"))
        assert not profiler._recorder.plans.explained()
    finally:
        profiler.uninstrument()


def test_an_inner_scopes_explain_is_not_charged_to_the_outer_one(db: Engine) -> None:
    profiler = _profile(db)
    try:
        with (
            profiler.scope("job") as outer,
            profiler.scope("item") as inner,
            db.connect() as conn,
        ):
            conn.execute(text(SLOW_PURE), {"value": "x"}).all()
        assert profiler._recorder.plans.explained()  # the inner scope's EXPLAIN ran...
        assert (inner.query_count, outer.query_count) == (1, 1)  # ...and counts nowhere
        assert not any("EXPLAIN" in finding.sql for finding in outer.findings)
    finally:
        profiler.uninstrument()
