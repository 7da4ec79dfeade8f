"""Transaction-pooler mode: driver settings that work through PgBouncer where the defaults
break, and warnings for session state (real PgBouncer when this machine has one)."""

from __future__ import annotations

import asyncio
import threading
import warnings

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from hotpath.pool import PoolPlan, SessionStateWarning, session_state_use
from hotpath.stack import LocalStack
from hotpath.stack._binaries import find_pgbouncer
from hotpath.testing import ModuleDatabase

from ._helpers import small_plan

QUERY = text("SELECT count(*) FROM pg_class WHERE relpages > :n")

needs_pgbouncer = pytest.mark.skipif(
    find_pgbouncer() is None,
    reason="no pgbouncer binary (make system-deps, or apt-get install pgbouncer)",
)


@pytest.mark.parametrize(
    ("statement", "flagged"),
    [
        ("SET search_path TO app", True),
        ("set session statement_timeout = 5", True),
        ("SET LOCAL statement_timeout = 5", False),
        ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", False),
        ("RESET ALL", True),
        ("LISTEN orders", True),
        ("SELECT pg_advisory_lock(1)", True),
        ("SELECT pg_try_advisory_lock(1)", True),
        ("SELECT pg_advisory_xact_lock(1)", False),
        ("SELECT set_config('app.user', '7', false)", True),
        ("SELECT set_config('app.user', '7', true)", False),
        ("CREATE TEMP TABLE t (id int)", True),
        ("PREPARE q AS SELECT 1", True),
        ("SELECT * FROM settings WHERE name = 'SET x'", False),
    ],
)
def test_session_state_statements_are_recognised(statement: str, flagged: bool) -> None:
    assert (session_state_use(statement) is not None) is flagged


def test_session_state_warns_once_per_call_site_in_pooler_mode(hotpath_db: ModuleDatabase) -> None:
    pooled = small_plan(1, pgbouncer="transaction")
    direct = small_plan(1)
    engines = {}
    for name, plan in (("pooled", pooled), ("direct", direct)):
        engine = create_engine(hotpath_db.url, **plan.engine_kwargs())
        plan.instrument(engine)
        engines[name] = engine
    try:
        for name, engine in engines.items():
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                for _ in range(3):
                    with engine.begin() as conn:
                        conn.execute(text("SET statement_timeout = 5000"))
                        conn.execute(text("SET LOCAL lock_timeout = 1000"))
            found = [w for w in caught if issubclass(w.category, SessionStateWarning)]
            if name == "pooled":
                assert len(found) == 1
                message = str(found[0].message)
                assert message.startswith("SET (session-level; use SET LOCAL")
                assert "test_pooler.py" in message
            else:
                assert not found
    finally:
        for engine in engines.values():
            engine.dispose()


def _alternate(engine: Engine, rounds: int = 8) -> BaseException | None:
    """Two clients take turns, one transaction each. PgBouncer hands both the server
    connection released last, so statements one client prepared are seen by the other."""
    with engine.connect() as first, engine.connect() as second:
        for _ in range(rounds):
            for conn in (first, second):
                try:
                    conn.execute(QUERY, {"n": 1})
                    conn.commit()
                except Exception as e:  # the unprotected run is expected to fail here
                    conn.rollback()
                    return e
    return None


def _concurrently(engine: Engine, workers: int = 4, rounds: int = 20) -> list[BaseException]:
    errors: list[BaseException] = []

    def work() -> None:
        for _ in range(rounds):
            try:
                with engine.begin() as conn:
                    conn.execute(QUERY, {"n": 1})
            except Exception as e:  # reported by the caller
                errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return errors


@needs_pgbouncer
def test_psycopg_through_pgbouncer_needs_the_pooler_settings(own_stack: LocalStack) -> None:
    url = own_stack.pgbouncer_url
    plan = PoolPlan.for_app(processes=1, concurrency_per_process=4, server_url=url)
    assert plan.pgbouncer == "transaction"
    assert plan.pgbouncer_detected
    assert "detected" in plan.explain()
    planned = create_engine(url, **plan.engine_kwargs())
    plan.instrument(planned)
    naive = create_engine(url, pool_size=4)  # psycopg prepares a statement after 5 runs
    try:
        assert _alternate(planned) is None
        assert _concurrently(planned) == []
        failure = _alternate(naive)
    finally:
        planned.dispose()
        naive.dispose()
    assert failure is not None, "default psycopg settings unexpectedly survived PgBouncer"
    assert "prepared statement" in str(failure)


@needs_pgbouncer
async def test_asyncpg_through_pgbouncer_needs_the_pooler_settings(own_stack: LocalStack) -> None:
    url = own_stack.pgbouncer.url_for("postgres", driver="asyncpg")
    plan = PoolPlan.for_app(processes=1, concurrency_per_process=4, server_url=url)
    planned = create_async_engine(url, **plan.async_engine_kwargs())
    plan.instrument(planned)
    naive = create_async_engine(url, pool_size=4)

    async def moved(engine: AsyncEngine) -> BaseException | None:
        """A client's second transaction lands on another server connection than its first
        (a third client holds the first): statements cached by the driver are not there."""
        async with engine.connect() as client, engine.connect() as holder:
            await client.execute(QUERY, {"n": 1})
            await client.commit()  # PgBouncer takes the server connection back
            await holder.execute(text("SELECT 2"))  # ... gives it to holder, which keeps it
            try:
                await client.execute(QUERY, {"n": 1})  # so this runs on another one
            except Exception as e:  # the unprotected run is expected to fail here
                await client.rollback()
                return e
            await client.commit()
        return None

    async def concurrently(engine: AsyncEngine) -> list[BaseException]:
        async def once() -> None:
            async with engine.begin() as conn:
                await conn.execute(QUERY, {"n": 1})

        results = await asyncio.gather(*(once() for _ in range(40)), return_exceptions=True)
        return [r for r in results if isinstance(r, BaseException)]

    try:
        assert await moved(planned) is None
        assert await concurrently(planned) == []
        failed = await moved(naive)
    finally:
        await planned.dispose()
        await naive.dispose()
    assert failed is not None, "default asyncpg settings unexpectedly survived PgBouncer"
    assert "prepared statement" in str(failed)
