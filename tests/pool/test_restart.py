"""Self-healing: the primary restarts under load and while idle; the pool recovers without an
app restart, no thread or task hangs, and errors stay with the statements that were in
flight. On the pool tests' own stack (restarting the shared one would disturb others)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from sqlalchemy import create_engine, exc, make_url, text

from hotpath.pool import MeteredConnectionPool
from hotpath.stack import LocalStack

from ..helpers import eventually
from ._helpers import planned_async_engine, planned_engine, small_plan

WORKERS = 3


def test_pool_heals_after_a_restart_under_load(own_stack: LocalStack) -> None:
    engine, metrics = planned_engine(own_stack.primary.url, pool_size=WORKERS)
    stop = threading.Event()
    successes: list[tuple[int, float]] = []
    failures: list[tuple[int, float, BaseException]] = []

    def work(worker: int) -> None:
        while not stop.is_set():
            try:
                with engine.connect() as conn:
                    conn.execute(text("SELECT pg_sleep(0.01)"))
                successes.append((worker, time.monotonic()))
            except exc.SQLAlchemyError as e:  # the restart window; counted below
                failures.append((worker, time.monotonic(), e))
                time.sleep(0.05)

    # One worker per pooled connection: QueuePool does not queue waiters fairly (a thread
    # that just gave a connection back takes it again), so more workers than connections
    # can starve one for good, restart or not.
    threads = [threading.Thread(target=work, args=(i,)) for i in range(WORKERS)]
    try:
        for t in threads:
            t.start()
        eventually(lambda: len(successes) >= 20, 30, "20 statements before the restart")
        down = time.monotonic()
        own_stack.primary.restart()
        up = time.monotonic()
        eventually(
            lambda: all(
                sum(1 for w, at in successes if w == worker and at > up) >= 5
                for worker in range(WORKERS)
            ),
            30,
            "every worker running statements again after the restart",
        )
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        snap = metrics.snapshot()
        engine.dispose()
    assert not [t for t in threads if t.is_alive()], "a worker hung"
    assert all(down - 1.0 <= at for _, at, _ in failures)
    # After the server is back, only statements that had a dead connection already in hand
    # may fail: at most one per pooled connection; then every worker runs normally.
    late = [f for f in failures if f[1] > up]
    assert len(late) <= WORKERS, late
    assert (snap.checked_out, snap.waiting) == (0, 0)
    assert snap.invalidations >= 1
    assert snap.connects > 3  # the dead connections were replaced


def test_idle_pool_survives_a_restart_where_an_unvalidated_pool_fails(
    own_stack: LocalStack,
) -> None:
    engine, metrics = planned_engine(own_stack.primary.url, pool_size=2)
    plain = create_engine(own_stack.primary.url, pool_size=2)  # no pre-ping: the default
    try:
        for target in (engine, plain):
            with target.connect() as a, target.connect() as b:
                a.execute(text("SELECT 2"))
                b.execute(text("SELECT 2"))
        own_stack.primary.restart()
        time.sleep(0.6)  # longer than validate_idle_s
        with engine.connect() as a, engine.connect() as b:  # validated, found dead, replaced
            assert a.execute(text("SELECT 2")).scalar() == b.execute(text("SELECT 2")).scalar()
        with pytest.raises(exc.OperationalError), plain.connect() as conn:
            conn.execute(text("SELECT 2"))  # the unprotected pool hands out a dead connection
        snap = metrics.snapshot()
        assert snap.pings_failed == 2
        assert snap.invalidations == 2
        # the dead connections were closed and are no longer counted as open
        assert (snap.size, snap.connects, snap.checked_out) == (2, 4, 0)
    finally:
        engine.dispose()
        plain.dispose()


async def test_async_pool_heals_after_a_restart(own_stack: LocalStack) -> None:
    url = own_stack.primary.url_for("postgres", driver="asyncpg")
    engine, metrics = planned_async_engine(url, pool_size=2)

    async def query() -> int:
        async with engine.connect() as conn:
            return int((await conn.execute(text("SELECT 2"))).scalar_one())

    try:
        assert await asyncio.gather(query(), query()) == [2, 2]
        await asyncio.to_thread(own_stack.primary.restart)
        await asyncio.sleep(0.6)
        results = await asyncio.wait_for(asyncio.gather(query(), query(), query()), 30)
        assert results == [2, 2, 2]
        snap = metrics.snapshot()
        assert snap.pings_failed >= 1
        assert (snap.checked_out, snap.waiting) == (0, 0)
    finally:
        await engine.dispose()


def test_psycopg_pool_discards_dead_idle_connections_after_a_restart(
    own_stack: LocalStack,
) -> None:
    plan = small_plan(2)
    with MeteredConnectionPool(
        own_stack.primary.dsn, open=True, **plan.psycopg_pool_kwargs()
    ) as pool:
        metrics = plan.instrument(pool, name="pp-restart")
        pool.wait(10)
        with pool.connection() as a, pool.connection() as b:
            a.execute("SELECT 2")
            b.execute("SELECT 2")
        own_stack.primary.restart()
        time.sleep(0.6)  # longer than validate_idle_s
        for _ in range(3):
            with pool.connection(timeout=10) as conn:
                assert conn.execute("SELECT 2").fetchone() == (2,)
        snap = metrics.snapshot()
    assert snap.pings_failed >= 1  # the dead ones were found by the idle check, not the app
    assert snap.connects >= 3


def test_pool_follows_a_failover_to_the_promoted_replica() -> None:
    """Primary killed, replica promoted; a multi-host URL with target_session_attrs lets the
    pool find the new primary once the dead connections are weeded out."""
    with LocalStack(replicas=1, redis=False) as stack:
        old, new = stack.primary, stack.replicas[0]
        base = make_url(old.url)
        url = base.set(
            host=None,
            port=None,
            query={
                "host": [f"127.0.0.1:{old.port}", f"127.0.0.1:{new.port}"],
                "target_session_attrs": "read-write",
            },
        ).render_as_string(hide_password=False)
        engine, metrics = planned_engine(url, pool_size=2)
        plain = create_engine(url, pool_size=2)
        try:
            with engine.begin() as conn:
                conn.execute(text("CREATE TABLE events (id int)"))
            for target in (engine, plain):
                with target.connect() as a, target.connect() as b:
                    a.execute(text("SELECT 2"))
                    b.execute(text("SELECT 2"))
            stack.wait_replicas_caught_up(timeout=30)
            old.kill()
            new.promote()
            time.sleep(0.6)
            with engine.begin() as conn:  # dead ones discarded; reconnects reach the new primary
                conn.execute(text("INSERT INTO events VALUES (1)"))
                port = conn.execute(text("SELECT inet_server_port()")).scalar()
            assert port == new.port
            with pytest.raises(exc.OperationalError), plain.begin() as conn:
                conn.execute(text("INSERT INTO events VALUES (2)"))
            assert metrics.snapshot().pings_failed >= 1
        finally:
            engine.dispose()
            plain.dispose()
