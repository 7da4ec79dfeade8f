"""Cheap liveness: ping only connections idle longer than validate_idle_s (pings counted on
the server), against SQLAlchemy's ping on every checkout; jittered max lifetime."""

from __future__ import annotations

import time
from typing import Any

import pytest
from psycopg_pool import ConnectionPool
from sqlalchemy import Engine, create_engine, event, text

from hotpath.pool import MeteredConnectionPool, instrument_pool
from hotpath.pool._sqlalchemy import _EXPIRES
from hotpath.testing import ModuleDatabase

from ._helpers import planned_engine


def _count_pings(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the pings the dialect really sends (psycopg's is an empty query, ``;``, which
    pg_stat_statements does not record, so the count is taken at the dialect)."""
    calls = [0]
    original = engine.dialect.do_ping

    def counting(dbapi_connection: Any) -> bool:
        calls[0] += 1
        return original(dbapi_connection)

    monkeypatch.setattr(engine.dialect, "do_ping", counting)
    return calls


def _checkouts(engine: Engine, times: int) -> None:
    for _ in range(times):
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_backend_pid()"))  # not normalized like a ping


def test_recent_connections_skip_the_ping_idle_ones_get_it(
    hotpath_db: ModuleDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, metrics = planned_engine(hotpath_db.url, pool_size=2, validate_idle_s=0.5)
    pre_ping = create_engine(hotpath_db.url, pool_size=2, pool_pre_ping=True)
    pings, pre_pings = _count_pings(engine, monkeypatch), _count_pings(pre_ping, monkeypatch)
    try:
        _checkouts(engine, 20)  # back to back: each connection used < 0.5 s ago
        assert pings == [0]
        assert metrics.snapshot().pings == 0

        time.sleep(0.7)
        _checkouts(engine, 1)  # idle 0.7 s: validated once
        assert pings == [1]
        assert metrics.snapshot().pings == 1

        _checkouts(pre_ping, 21)  # SQLAlchemy's pre-ping: every checkout of a pooled one
        assert pre_pings == [20]  # (the first checkout opened the connection)
    finally:
        engine.dispose()
        pre_ping.dispose()


def test_max_lifetime_replaces_connections_with_jitter(hotpath_db: ModuleDatabase) -> None:
    lifetime, jitter = 0.6, 0.3
    engine, metrics = planned_engine(
        hotpath_db.url, pool_size=4, max_lifetime_s=lifetime, lifetime_jitter=jitter
    )
    expiries: list[float] = []

    @event.listens_for(engine, "connect")
    def remember(dbapi_connection: Any, record: Any) -> None:  # runs after hotpath's listener
        expiries.append(record.info[_EXPIRES] - record.info["hotpath.opened"])

    try:
        held = [engine.connect() for _ in range(4)]
        first = {c.execute(text("SELECT pg_backend_pid()")).scalar() for c in held}
        for conn in held:
            conn.close()
        time.sleep(lifetime + 0.1)
        held = [engine.connect() for _ in range(4)]
        second = {c.execute(text("SELECT pg_backend_pid()")).scalar() for c in held}
        for conn in held:
            conn.close()
        snap = metrics.snapshot()
    finally:
        engine.dispose()
    assert first.isdisjoint(second)  # every connection was replaced, none reused past its life
    assert (snap.expired, snap.invalidations, snap.connects) == (4, 0, 8)
    assert all(lifetime * (1 - jitter) <= e <= lifetime for e in expiries)
    assert len(set(expiries)) == len(expiries)  # spread, not one mass reconnection


def test_max_lifetime_ends_under_continuous_use(hotpath_db: ModuleDatabase) -> None:
    """A connection never idle is still replaced after its lifetime (by the housekeeping
    sweep, within about a second), not kept for as long as it stays busy."""
    engine, metrics = planned_engine(
        hotpath_db.url, pool_size=1, max_lifetime_s=0.3, lifetime_jitter=0.0, validate_idle_s=60
    )
    try:
        # kept busy until the sweep replaced the connection (a loaded machine delays the
        # sweep's thread: the bound is generous, the assertions are about what happened)
        deadline = time.monotonic() + 30
        pids = set()
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                pids.add(conn.execute(text("SELECT pg_backend_pid()")).scalar())
            if metrics.snapshot().expired >= 1 and len(pids) >= 2:
                break
            time.sleep(0.01)
        snap = metrics.snapshot()
    finally:
        engine.dispose()
    assert snap.expired >= 1
    assert len(pids) >= 2
    assert snap.invalidations == 0


def _counting_check_connection(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the pings psycopg_pool's ``check_connection`` really sends."""
    calls = [0]
    original = ConnectionPool.check_connection

    def counting(conn: Any) -> None:
        calls[0] += 1
        original(conn)

    monkeypatch.setattr(ConnectionPool, "check_connection", staticmethod(counting))
    return calls


def test_psycopg_pool_pings_only_idle_connections(
    hotpath_db: ModuleDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    pings = _counting_check_connection(monkeypatch)
    with MeteredConnectionPool(
        hotpath_db.dsn, min_size=1, max_size=1, open=True, validate_idle_s=0.3
    ) as pool:
        metrics = instrument_pool(pool, name="pp-idle", validate_idle_s=0.3)
        pool.wait(10)
        for _ in range(20):  # back to back: the connection was used a moment ago
            with pool.connection() as conn:
                conn.execute("SELECT 2")
        assert pings == [0]
        time.sleep(0.4)
        with pool.connection() as conn:  # idle 0.4 s: pinged once, then used
            conn.execute("SELECT 2")
        assert pings == [1]
        snap = metrics.snapshot()
        assert (snap.pings, snap.pings_failed, snap.checkouts) == (1, 0, 21)


def test_psycopg_pool_runs_a_check_you_pass_instead(
    hotpath_db: ModuleDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    pings = _counting_check_connection(monkeypatch)
    checked: list[object] = []
    with MeteredConnectionPool(
        hotpath_db.dsn, min_size=1, max_size=1, open=True, check=checked.append
    ) as pool:
        pool.wait(10)
        assert pool.validate_idle_s is None  # hotpath's own validation is off
        for _ in range(3):
            with pool.connection() as conn:
                conn.execute("SELECT 2")
    assert len(checked) == 3  # psycopg_pool ran it at every checkout
    assert pings == [0]
