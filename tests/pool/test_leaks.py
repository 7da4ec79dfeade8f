"""Leak detection names the line that checked the connection out; an exhausted pool names
its holders. Plain SQLAlchemy says neither."""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import threading
import time
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, create_engine, exc, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from hotpath.pool import PoolExhaustedError, PoolMetrics, QueuePoolExhaustedError, instrument_pool
from hotpath.testing import ModuleDatabase

from ._helpers import planned_async_engine, planned_engine


def _leak_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "possible connection leak" in r.getMessage()]


def test_leak_is_reported_once_with_the_checkout_line(
    hotpath_db: ModuleDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hotpath.pool")
    engine, metrics = planned_engine(hotpath_db.url, pool_size=2, leak_threshold_s=0.2)
    try:
        with engine.connect() as quick:  # returned in time: never reported
            quick.execute(text("SELECT 2"))
        leaked = engine.connect()
        line = sys._getframe().f_lineno - 1  # the line above checked it out
        time.sleep(0.8)  # several watch periods: still one report
        leaks = _leak_records(caplog)
        assert len(leaks) == 1
        message = leaks[0].getMessage()
        assert f"test_leaks.py:{line} in test_leak_is_reported_once" in message
        assert "leaked = engine.connect()" in message  # the source line of the stack trace
        assert metrics.snapshot().leaks == 1
        leaked.close()
        assert any("was returned after" in r.getMessage() for r in caplog.records)
    finally:
        engine.dispose()


def test_plain_pool_says_nothing_about_the_same_leak(
    hotpath_db: ModuleDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    engine = create_engine(hotpath_db.url, pool_size=2)
    try:
        leaked = engine.connect()
        time.sleep(0.5)
        assert not _leak_records(caplog)
        leaked.close()
    finally:
        engine.dispose()


async def test_async_leak_is_attributed_through_the_greenlet(
    hotpath_db: ModuleDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="hotpath.pool")
    engine, metrics = planned_async_engine(hotpath_db.async_url, pool_size=1, leak_threshold_s=0.2)
    try:
        leaked = await engine.connect()
        line = sys._getframe().f_lineno - 1  # the line above checked it out
        await _sleep(0.6)
        leaks = _leak_records(caplog)
        assert len(leaks) == 1
        assert f"test_leaks.py:{line} in test_async_leak" in leaks[0].getMessage()
        assert metrics.snapshot().leaks == 1
        await leaked.close()
    finally:
        await engine.dispose()


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


def _hold_for_report(engine: Engine) -> Connection:
    return engine.connect()


def _hold_for_export(engine: Engine) -> Connection:
    return engine.connect()


def test_exhaustion_error_names_the_holders(hotpath_db: ModuleDatabase) -> None:
    engine, _ = planned_engine(hotpath_db.url, pool_size=3, timeout_s=0.3)
    plain = create_engine(hotpath_db.url, pool_size=3, max_overflow=0, pool_timeout=0.3)
    try:
        for target in (engine, plain):
            held = [_hold_for_report(target), _hold_for_report(target), _hold_for_export(target)]
            with pytest.raises(exc.TimeoutError) as info:
                target.connect()
            for conn in held:
                conn.close()
            message = str(info.value)
            if target is engine:
                assert isinstance(info.value, PoolExhaustedError)
                assert "3 of 3+0 checked out, 0 idle" in message
                assert "2x tests/pool/test_leaks.py" in message
                assert "in _hold_for_report (held up to" in message
                assert "1x tests/pool/test_leaks.py" in message
                assert "in _hold_for_export" in message
                assert "QueuePool limit of size 3 overflow 0 reached" in message  # kept
            else:
                # the unprotected path: the bare error says nothing about who holds what
                assert "QueuePool limit of size 3 overflow 0 reached" in message
                assert "_hold_for_report" not in message
                assert "test_leaks.py" not in message
    finally:
        engine.dispose()
        plain.dispose()


def _hold_in_thread(engine: Engine, ready: threading.Barrier, release: threading.Event) -> None:
    with engine.connect():
        ready.wait(10)
        release.wait(10)


def test_a_plain_engine_exhausted_names_the_holders(hotpath_db: ModuleDatabase) -> None:
    """The usual way to build an engine (the issue's seeds): no PoolPlan, no poolclass."""
    engine = create_engine(hotpath_db.url, pool_size=2, max_overflow=0, pool_timeout=0.5)
    metrics = instrument_pool(engine)
    ready, release = threading.Barrier(3), threading.Event()
    holders = [
        threading.Thread(target=_hold_in_thread, args=(engine, ready, release)) for _ in range(2)
    ]
    try:
        for thread in holders:
            thread.start()
        ready.wait(10)  # both threads hold a connection
        with pytest.raises(QueuePoolExhaustedError) as info:
            engine.connect()
        message = str(info.value)
        assert "2 of 2+0 checked out, 0 idle" in message
        assert re.search(
            r"2x tests/pool/test_leaks\.py:\d+ in _hold_in_thread \(held up to", message
        )
        assert "QueuePool limit of size 2 overflow 0 reached" in message  # kept
        assert isinstance(info.value, exc.TimeoutError)  # existing handlers still catch it
        assert metrics.snapshot().timeouts == 1
    finally:
        release.set()
        for thread in holders:
            thread.join(10)
        engine.dispose()


async def _hold_in_task(engine: AsyncEngine, ready: asyncio.Event, release: asyncio.Event) -> None:
    async with engine.connect():
        ready.set()
        await release.wait()


async def test_a_plain_async_engine_exhausted_names_the_holders(
    hotpath_db: ModuleDatabase,
) -> None:
    engine = create_async_engine(
        hotpath_db.async_url, pool_size=2, max_overflow=0, pool_timeout=0.5
    )
    metrics = instrument_pool(engine)
    release = asyncio.Event()
    readies = [asyncio.Event(), asyncio.Event()]
    tasks = [asyncio.create_task(_hold_in_task(engine, ready, release)) for ready in readies]
    try:
        for ready in readies:
            await asyncio.wait_for(ready.wait(), 10)
        with pytest.raises(QueuePoolExhaustedError) as info:
            await engine.connect()
        message = str(info.value)
        assert "2 of 2+0 checked out" in message
        holders = r"2x tests/pool/test_leaks\.py:\d+ in _hold_in_task \(held up to"
        assert re.search(holders, message)
        assert metrics.snapshot().timeouts == 1
    finally:
        release.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        await engine.dispose()


def _holder_sites(metrics: PoolMetrics) -> list[str]:
    return [h.call_site for h in metrics.snapshot().holders]


def _raw_connection_from_a_helper(engine: Engine) -> Any:
    return engine.raw_connection()  # the call site a holder must name


def _two_frames_further_out(engine: Engine) -> Any:
    # Application frames where the distance learnt through Engine.connect() (three frames
    # above raw_connection) lands: the jump must notice and walk instead.
    def one_more_frame() -> Any:
        return _raw_connection_from_a_helper(engine)

    return one_more_frame()


def test_call_sites_stay_exact_once_the_distance_is_learnt(hotpath_db: ModuleDatabase) -> None:
    """After the first walk through ``Engine.connect()``, checkouts jump straight to the
    application frame; another path into the same SQLAlchemy function (``raw_connection()``
    called from the application, one frame closer) is still named exactly, not the frame
    the learnt distance would land on."""
    engine, metrics = planned_engine(hotpath_db.url, pool_size=3)
    try:
        for _ in range(3):  # learn, then jump
            with engine.connect():
                line = sys._getframe().f_lineno - 1
                sites = _holder_sites(metrics)
                assert len(sites) == 1
                assert f"test_leaks.py:{line} in test_call_sites_stay_exact" in sites[0]
        raw = _two_frames_further_out(engine)
        sites = _holder_sites(metrics)
        assert len(sites) == 1
        assert "in _raw_connection_from_a_helper" in sites[0]
        raw.close()
        with engine.connect():  # and the learnt jump is still right afterwards
            line = sys._getframe().f_lineno - 1
            sites = _holder_sites(metrics)
            assert len(sites) == 1
            assert f"test_leaks.py:{line} in test_call_sites_stay_exact" in sites[0]
    finally:
        engine.dispose()
