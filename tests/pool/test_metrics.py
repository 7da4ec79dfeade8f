"""Pool metrics under real concurrent load match what happened: checkouts, waits, holds,
timeouts, connects; sync and async engines, psycopg_pool, Prometheus."""

from __future__ import annotations

import asyncio
import random
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator

import psycopg_pool
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import create_engine, exc, text
from sqlalchemy.pool import PoolProxiedConnection, QueuePool

from hotpath.pool import (
    AsyncMeteredConnectionPool,
    ConnectionPoolExhaustedError,
    MeteredConnectionPool,
    MeteredQueuePool,
    PoolCollector,
    PoolConfigError,
    PoolExhaustedError,
    PoolInstrumentationWarning,
    PoolMetrics,
    PoolSnapshot,
    QueuePoolExhaustedError,
    _housekeeping,
    instrument_pool,
)
from hotpath.pool._metrics import PoolShape, _fold_samples, _histogram
from hotpath.testing import ModuleDatabase

from ._helpers import planned_async_engine, planned_engine, small_plan

HOLD_S = 0.1


def _busiest(metrics: PoolMetrics, pause: Callable[[], None], polls: int = 200) -> PoolSnapshot:
    """The snapshot with the most connections in use and callers waiting, over ~1 s of load
    (a single snapshot at a fixed delay would depend on how fast the machine starts threads)."""
    best = metrics.snapshot()
    for _ in range(polls):
        pause()
        seen = metrics.snapshot()
        if (seen.checked_out, seen.waiting or 0) > (best.checked_out, best.waiting or 0):
            best = seen
    return best


def test_sync_snapshot_matches_the_load(hotpath_db: ModuleDatabase) -> None:
    engine, metrics = planned_engine(hotpath_db.url, pool_size=3)
    workers, rounds = 6, 4
    start = threading.Barrier(workers + 1)
    errors: list[BaseException] = []

    def work() -> None:
        start.wait()
        try:
            for _ in range(rounds):
                with engine.connect() as conn:
                    conn.execute(text("SELECT pg_sleep(:s)"), {"s": HOLD_S})
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(workers)]
    try:
        for t in threads:
            t.start()
        start.wait()
        during = _busiest(metrics, lambda: time.sleep(0.005))
        for t in threads:
            t.join(30)
        after = metrics.snapshot()
    finally:
        engine.dispose()
    assert not errors
    # 6 workers on 3 connections: all 3 in use, the other 3 callers waiting
    assert (during.checked_out, during.waiting, during.size) == (3, 3, 3)
    assert len(during.holders) == 1
    assert "test_metrics.py" in during.holders[0].call_site
    assert during.holders[0].count == 3
    assert after.checkouts == after.hold.count == workers * rounds
    assert after.acquire_wait is not None
    assert after.acquire_wait.count == workers * rounds
    assert after.hold.p50 >= HOLD_S * 1000
    # half the acquires queue behind a full hold: the p99 wait is at least most of one
    assert after.acquire_wait.p99 >= HOLD_S * 1000 * 0.8
    assert after.acquire_wait.p50 < after.acquire_wait.p99
    assert (after.connects, after.connect.count) == (3, 3)
    assert after.connect.p50 > 0
    assert (after.checked_out, after.idle, after.waiting, after.timeouts) == (0, 3, 0, 0)
    assert after.oldest_connection_age_s is not None
    assert after.oldest_connection_age_s > HOLD_S


def test_timeouts_are_counted_and_explained(hotpath_db: ModuleDatabase) -> None:
    engine, metrics = planned_engine(hotpath_db.url, pool_size=1, timeout_s=0.2)
    try:
        with engine.connect():
            raised = 0
            for _ in range(3):
                with pytest.raises(QueuePoolExhaustedError) as info:
                    engine.connect()
                raised += 1
        assert isinstance(info.value, exc.TimeoutError)  # old handlers still catch it
        assert metrics.snapshot().timeouts == raised == 3
        with engine.connect() as conn:  # the pool is usable again
            assert conn.execute(text("SELECT 2")).scalar() == 2
    finally:
        engine.dispose()


async def test_async_snapshot_matches_the_load(hotpath_db: ModuleDatabase) -> None:
    engine, metrics = planned_async_engine(hotpath_db.async_url, pool_size=2)
    tasks, rounds = 5, 3

    async def work() -> None:
        for _ in range(rounds):
            async with engine.connect() as conn:
                await conn.execute(text("SELECT pg_sleep(:s)"), {"s": HOLD_S})

    try:
        running = asyncio.gather(*(work() for _ in range(tasks)))
        during = metrics.snapshot()
        for _ in range(200):  # the busiest moment seen while the tasks run
            await asyncio.sleep(0.005)
            seen = metrics.snapshot()
            if (seen.checked_out, seen.waiting or 0) > (during.checked_out, during.waiting or 0):
                during = seen
        await asyncio.wait_for(running, 30)
        after = metrics.snapshot()
    finally:
        await engine.dispose()
    assert (during.checked_out, during.waiting) == (2, 3)
    # the call site is found through the greenlet SQLAlchemy runs the checkout in
    assert "test_metrics.py" in during.holders[0].call_site
    assert "in work" in during.holders[0].call_site
    assert after.checkouts == after.hold.count == tasks * rounds
    assert after.acquire_wait is not None
    assert after.acquire_wait.p99 >= HOLD_S * 1000 * 0.8
    assert after.hold.p50 >= HOLD_S * 1000
    assert (after.connects, after.checked_out, after.waiting) == (2, 0, 0)


async def test_async_timeout_names_the_holder(hotpath_db: ModuleDatabase) -> None:
    engine, metrics = planned_async_engine(hotpath_db.async_url, pool_size=1, timeout_s=0.2)
    try:
        async with engine.connect():
            with pytest.raises(PoolExhaustedError, match=r"1x .*test_metrics.py:\d+ in test_async"):
                await engine.connect()
        assert metrics.snapshot().timeouts == 1
    finally:
        await engine.dispose()


def test_plain_engine_is_metered_in_place(hotpath_db: ModuleDatabase) -> None:
    engine = create_engine(hotpath_db.url, pool_size=1, max_overflow=0)
    metrics = instrument_pool(engine)
    try:
        assert isinstance(engine.pool, MeteredQueuePool)  # the engine's own pool object
        for _ in range(3):
            with engine.connect() as conn:
                conn.execute(text("SELECT 2"))
        snap = metrics.snapshot()
        assert (snap.checkouts, snap.hold.count, snap.connects) == (3, 3, 1)
        assert snap.acquire_wait is not None
        assert snap.acquire_wait.count == 3
        assert snap.timeouts == 0
        # Waiting callers come from the pool's queue: one blocked thread.
        assert snap.waiting == 0
        with engine.connect():
            blocked = threading.Thread(target=lambda: engine.connect().close())
            blocked.start()
            deadline = time.monotonic() + 5
            while metrics.snapshot().waiting != 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert metrics.snapshot().waiting == 1
        blocked.join(10)
        assert metrics.snapshot().waiting == 0
        engine.dispose()  # recreate(): the next pool is metered too
        with engine.connect() as conn:
            conn.execute(text("SELECT 2"))
        assert isinstance(engine.pool, MeteredQueuePool)
        assert metrics.snapshot().acquire_wait.count == 6  # type: ignore[union-attr]
        with pytest.raises(PoolConfigError, match="already instrumented"):
            instrument_pool(engine)
    finally:
        engine.dispose()


class _OwnConnectPool(QueuePool):
    def connect(self) -> PoolProxiedConnection:
        return super().connect()


def test_pool_with_its_own_connect_is_told_what_it_misses(hotpath_db: ModuleDatabase) -> None:
    engine = create_engine(hotpath_db.url, poolclass=_OwnConnectPool, pool_size=1)
    try:
        with pytest.warns(PoolInstrumentationWarning, match="without the holders"):
            metrics = instrument_pool(engine)
        assert type(engine.pool) is _OwnConnectPool
        for _ in range(3):
            with engine.connect() as conn:
                conn.execute(text("SELECT 2"))
        snap = metrics.snapshot()
        assert (snap.checkouts, snap.hold.count, snap.connects) == (3, 3, 1)
        assert (snap.acquire_wait, snap.timeouts) == (None, None)
        assert "not metered" in snap.describe()
    finally:
        engine.dispose()


def test_unsupported_target_is_a_clear_error(hotpath_db: ModuleDatabase) -> None:
    pool = psycopg_pool.ConnectionPool(hotpath_db.dsn, min_size=1, open=False)
    with pytest.raises(PoolConfigError, match="MeteredConnectionPool"):
        instrument_pool(pool)
    with pytest.raises(PoolConfigError, match="leak_threshold_s=-1"):
        instrument_pool(create_engine(hotpath_db.url), leak_threshold_s=-1)


def test_psycopg_pool_metrics_and_exhaustion(hotpath_db: ModuleDatabase) -> None:
    plan = small_plan(2, timeout_s=0.3)
    with MeteredConnectionPool(hotpath_db.dsn, open=True, **plan.psycopg_pool_kwargs()) as pool:
        metrics = plan.instrument(pool, name="pp")
        pool.wait(10)
        workers = 4
        start = threading.Barrier(workers)

        def work() -> None:
            start.wait()
            for _ in range(2):
                with pool.connection(timeout=10) as conn:
                    conn.execute("SELECT pg_sleep(%s)", [HOLD_S])

        threads = [threading.Thread(target=work) for _ in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        snap = metrics.snapshot()
        assert snap.checkouts == snap.hold.count == 8
        assert snap.acquire_wait is not None
        assert snap.acquire_wait.p99 >= HOLD_S * 1000 * 0.8
        assert (snap.size, snap.checked_out, snap.connects) == (2, 0, 2)
        with (
            pool.connection(),
            pool.connection(),
            pytest.raises(ConnectionPoolExhaustedError, match=r"2x .*test_metrics\.py"),
        ):
            pool.getconn()
        assert metrics.snapshot().timeouts == 1
    # the pool closed its connections: none is tracked as open any more
    assert metrics.snapshot(holders=False).oldest_connection_age_s is None


def test_prometheus_collector_exports_the_snapshot(hotpath_db: ModuleDatabase) -> None:
    engine, metrics = planned_engine(hotpath_db.url, pool_size=2)
    registry = CollectorRegistry()
    registry.register(PoolCollector(metrics))
    try:
        for _ in range(5):
            with engine.connect() as conn:
                conn.execute(text("SELECT 2"))
        with engine.connect():
            exposition = generate_latest(registry).decode()
    finally:
        engine.dispose()
    assert 'hotpath_pool_checkouts_total{pool="test"} 6.0' in exposition
    assert 'hotpath_pool_checked_out{pool="test"} 1.0' in exposition
    assert 'hotpath_pool_hold_seconds_count{pool="test"} 5.0' in exposition
    assert 'hotpath_pool_acquire_wait_seconds{pool="test",quantile="0.99"}' in exposition
    assert 'hotpath_pool_connects_total{pool="test"} 1.0' in exposition


async def test_async_psycopg_pool_metrics(hotpath_db: ModuleDatabase) -> None:
    plan = small_plan(2, timeout_s=0.3)
    pool = AsyncMeteredConnectionPool(hotpath_db.dsn, open=False, **plan.psycopg_pool_kwargs())
    metrics = plan.instrument(pool, name="app")
    async with pool:
        await pool.wait(10)

        async def work() -> None:
            for _ in range(2):
                async with pool.connection(timeout=10) as conn:
                    await conn.execute("SELECT pg_sleep(%s)", [HOLD_S])

        await asyncio.wait_for(asyncio.gather(*(work() for _ in range(4))), 30)
        snap = metrics.snapshot()
        assert snap.checkouts == snap.hold.count == 8
        assert snap.acquire_wait is not None
        assert snap.acquire_wait.p99 >= HOLD_S * 1000 * 0.8
        assert (snap.size, snap.checked_out, snap.waiting, snap.connects) == (2, 0, 0, 2)
        async with pool.connection(), pool.connection():
            with pytest.raises(ConnectionPoolExhaustedError, match=r"2x .*test_metrics\.py"):
                await pool.getconn()
        assert metrics.snapshot().timeouts == 1


def test_metered_pool_replaces_only_trampolines() -> None:
    """MeteredQueuePool replaces ``Pool.connect()`` and ``Pool._return_conn()`` instead of
    wrapping them (a Python frame per checkout is a third of its overhead budget): that is
    only right while SQLAlchemy's are the one-line trampolines they are in 2.x."""
    from sqlalchemy.pool import AsyncAdaptedQueuePool, Pool, QueuePool

    assert Pool.connect.__code__.co_names == ("_ConnectionFairy", "_checkout")
    assert Pool._return_conn.__code__.co_names == ("_do_return_conn",)
    for base in (QueuePool, AsyncAdaptedQueuePool):
        assert base.connect is Pool.connect
        assert base._return_conn is Pool._return_conn


def test_folded_samples_keep_the_histogram_precision() -> None:
    """Samples are packed as half floats before they are counted: the percentiles stay within
    the HdrHistogram's own 3 significant digits, none is lost, and a sample past the
    histogram's hour (past even a half float's 18 h) is clamped and counted, not dropped."""
    rng = random.Random(7)
    seconds = [rng.lognormvariate(-7, 2) for _ in range(50_000)]  # ~1 µs .. minutes
    raw = deque(seconds)
    hist = _histogram()
    _fold_samples(raw, hist)
    assert not raw
    assert hist.get_total_count() == len(seconds)
    exact = sorted(s * 1e6 for s in seconds)
    for percentile in (50, 90, 99, 99.9):
        expected = exact[int(len(exact) * percentile / 100) - 1]
        assert hist.get_value_at_percentile(percentile) == pytest.approx(expected, rel=2e-3)
    late = deque([0.5e-6, 20 * 3600.0, 2 * 3600.0])
    _fold_samples(late, hist)
    assert hist.get_total_count() == len(seconds) + 3
    assert hist.get_max_value() == pytest.approx(3600e6, rel=1e-3)


def test_housekeeping_lists_its_pools_while_another_thread_adds_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``watch()`` from another thread while the housekeeping thread lists the pools: the
    listing must not fail (a set that grows while iterated raises, and that ended the thread,
    leak checks and liveness sweeps with it, on a busy machine)."""

    def shape() -> PoolShape:
        return PoolShape(pool_size=1, max_overflow=0, timeout_s=1.0, kind="test")

    pools = [PoolMetrics(f"p{n}", shape) for n in range(3)]
    late = PoolMetrics("late", shape)
    adder = threading.Thread(target=_housekeeping.watch, args=(late,))
    lister = threading.get_ident()  # this test's listing, not the housekeeping thread's

    class AddedToWhileListed(weakref.WeakSet[PoolMetrics]):
        def __iter__(self) -> Iterator[PoolMetrics]:
            for n, metrics in enumerate(super().__iter__()):
                if n == 0 and threading.get_ident() == lister and late not in pools:
                    pools.append(late)
                    adder.start()
                    adder.join(0.5)  # at once, unless the listing holds the lock
                yield metrics

    monkeypatch.setattr(_housekeeping, "_watched", AddedToWhileListed(pools))
    _housekeeping._interval()  # lists the pools, as the thread does each round
    adder.join(5)
    assert late in _housekeeping._watched
