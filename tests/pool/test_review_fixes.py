"""Regressions found in review: each test fails without its fix."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import deque
from typing import Any

import greenlet
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool, ConnectionPool
from sqlalchemy import Engine
from sqlalchemy.engine import Connection

from hotpath.pool import (
    AsyncMeteredConnectionPool,
    MeteredConnectionPool,
    PoolMetrics,
    instrument_pool,
)
from hotpath.pool._metrics import _fold_samples, _histogram
from hotpath.testing import ModuleDatabase

from ._helpers import planned_engine


async def test_a_ping_cancelled_midway_does_not_lose_the_connection(
    hotpath_db: ModuleDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = AsyncMeteredConnectionPool(
        hotpath_db.dsn, min_size=1, max_size=1, timeout=2.0, validate_idle_s=0.05, open=False
    )
    await pool.open(wait=True)
    try:
        conn = await pool.getconn()
        await pool.putconn(conn)
        await asyncio.sleep(0.1)  # idle past validate_idle_s: the next getconn pings

        async def slow_ping(conn: Any) -> None:
            await asyncio.sleep(5)

        monkeypatch.setattr(AsyncConnectionPool, "check_connection", staticmethod(slow_ping))
        task = asyncio.create_task(pool.getconn())
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        monkeypatch.undo()
        async with pool.connection(timeout=2.0) as conn:  # the only connection came back
            assert (await (await conn.execute("SELECT 2")).fetchone()) == (2,)
    finally:
        await pool.close()


def test_a_failed_ping_never_returns_the_connection_twice(
    hotpath_db: ModuleDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    if "close_returns" not in ConnectionPool.__init__.__code__.co_varnames:
        pytest.skip("psycopg_pool < 3.3 has no close_returns")
    with MeteredConnectionPool(
        hotpath_db.dsn,
        min_size=1,
        max_size=1,
        timeout=1.0,
        validate_idle_s=0.05,
        close_returns=True,  # close() returns to the pool, as psycopg advises for SQLAlchemy
        open=True,
    ) as pool:
        pool.wait(10)
        pool.putconn(pool.getconn())
        time.sleep(0.1)
        original = ConnectionPool.check_connection
        failures: list[int] = []

        def cancelled_once(conn: Any) -> None:  # the ping hit by pg_cancel_backend()
            if not failures:
                failures.append(1)
                raise psycopg.errors.QueryCanceled("canceling statement due to user request")
            original(conn)

        monkeypatch.setattr(ConnectionPool, "check_connection", staticmethod(cancelled_once))
        first = pool.getconn()
        try:
            with pytest.raises(psycopg_pool_timeout()):  # max_size=1: nothing else to give
                pool.getconn(timeout=0.5)
        finally:
            pool.putconn(first)


def psycopg_pool_timeout() -> type[Exception]:
    from psycopg_pool import PoolTimeout

    return PoolTimeout


def test_callers_that_timed_out_are_not_counted_as_waiting(hotpath_db: ModuleDatabase) -> None:
    """psycopg_pool keeps a timed-out caller in its queue until a connection is next handed
    out: its own requests_waiting says 5 here."""
    with MeteredConnectionPool(
        hotpath_db.dsn, min_size=1, max_size=1, timeout=0.2, open=True
    ) as pool:
        pool.wait(10)
        metrics = instrument_pool(pool, name="pp-waiting")
        held = pool.getconn()

        def give_up() -> None:
            with pytest.raises(psycopg_pool_timeout()):
                pool.getconn()

        threads = [threading.Thread(target=give_up) for _ in range(5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert pool.get_stats()["requests_waiting"] == 5  # psycopg_pool's own view
        assert metrics.snapshot().waiting == 0
        pool.putconn(held)


class _AppFactory:
    """Application code standing in for an Engine: its connect() is the innermost
    application frame of the checkout."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def connect(self) -> Connection:
        return Connection(self.engine)  # the call site to name


def _open(factory: Any) -> Connection:
    return factory.connect()  # the same line reaches Engine.connect or _AppFactory.connect


def test_a_learnt_jump_does_not_skip_an_application_frame(hotpath_db: ModuleDatabase) -> None:
    engine, metrics = planned_engine(hotpath_db.url, pool_size=3)
    try:
        first = _open(engine)  # learnt: _open's line, three frames above raw_connection
        second = _open(_AppFactory(engine))  # same line, same depth, an application frame
        sites = sorted(h.call_site for h in metrics.snapshot().holders)
        assert len(sites) == 2
        assert "in connect" in sites[0]  # _AppFactory.connect, not _open again
        assert "in _open" in sites[1]
        first.close()
        second.close()
    finally:
        engine.dispose()


def test_instrumenting_keeps_the_users_check_the_only_one(hotpath_db: ModuleDatabase) -> None:
    checked: list[object] = []
    with MeteredConnectionPool(
        hotpath_db.dsn, min_size=1, max_size=1, open=True, check=checked.append
    ) as pool:
        instrument_pool(pool, name="pp-check")  # its default validate_idle_s is 0.5
        assert pool.validate_idle_s is None


def test_a_checkout_with_no_caller_frame_is_kept_without_a_call_site(
    hotpath_db: ModuleDatabase,
) -> None:
    engine, metrics = planned_engine(hotpath_db.url, pool_size=1)
    try:
        # A greenlet (or gevent.spawn) whose entry point is the checkout itself.
        connection = greenlet.greenlet(engine.pool.connect).switch()
        assert [h.call_site for h in metrics.snapshot().holders] == ["<no caller frame>"]
        connection.close()
        assert metrics.snapshot().checked_out == 0
    finally:
        engine.dispose()


def test_whole_microseconds_are_not_rounded_down() -> None:
    hist = _histogram()
    _fold_samples(deque([3e-6] * 10 + [40e-6] * 10), hist)
    assert hist.get_value_at_percentile(25) == 3  # a half float reads 3 µs back as 2.9998
    assert hist.get_value_at_percentile(75) == 40


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX fork")
def test_a_forked_child_gets_its_own_housekeeping(hotpath_db: ModuleDatabase) -> None:
    engine, metrics = planned_engine(hotpath_db.url, pool_size=2, leak_threshold_s=0.2)
    held = engine.connect()  # the parent's: the child can never return it
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        code = 1
        try:
            engine.dispose(close=False)  # SQLAlchemy's recipe for a pre-forked worker
            for _ in range(2000):
                engine.pool.connect().close()
            snap: PoolMetrics = metrics
            # the child's housekeeping thread folds the samples (and checks leaks)
            deadline = time.monotonic() + 30
            while (snap._acquire_raw or snap._hold_raw) and time.monotonic() < deadline:
                time.sleep(0.02)
            folded = not snap._acquire_raw and not snap._hold_raw
            code = 0 if folded and snap.snapshot().leaks == 0 else 2
        finally:
            os.write(write, bytes([code]))
            os._exit(0)
    os.close(write)
    result = os.read(read, 1)
    os.waitpid(pid, 0)
    held.close()
    engine.dispose()
    assert result == bytes([0])  # samples folded, and the parent's checkout not a "leak"
